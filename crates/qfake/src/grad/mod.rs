//! Gradients of the float layers, as plain functions over `[N, C, ...]` arrays: what each
//! layer's training forward and backward in [`crate::train`] call.

mod conv;
mod loss;
mod norm;
mod pool;

pub use conv::{ConvGrads, ConvNeeds, LinearGrads, conv_backward, conv_forward, linear_backward};
pub use loss::cross_entropy;
pub use norm::{
    BatchNormGrads, BatchNormSaved, batch_norm_backward, batch_norm_eval_backward, batch_norm_train,
};
pub use pool::{adaptive_avg_pool2d_backward, max_pool2d_backward, max_pool2d_with_indices};
