//! The numeric core of training: forward and backward of the float layers a QAT model runs,
//! plain functions over `ndarray::ArrayD<f32>` in NCHW, with PyTorch 2.15's CPU semantics
//! (argument order and boundary rules as ATen's). `docs/NUMERICS.md` ("Training gradients")
//! says which results are PyTorch's bits and which agree to float rounding.
//!
//! | file | functions |
//! |---|---|
//! | `conv.rs` | [`conv_forward`], [`conv_backward`] |
//! | `linear.rs` | [`linear_backward`] |
//! | `batch_norm.rs` | [`batch_norm_train`], [`batch_norm_backward`], [`batch_norm_eval_backward`] |
//! | `activation.rs` | [`Activation`] (`forward`, `backward`) |
//! | `pool.rs` | [`max_pool_with_indices`], [`max_pool_backward`], [`avg_pool_backward`], [`adaptive_avg_pool_backward`], [`adaptive_max_pool`] |
//! | `loss.rs` | [`cross_entropy`], [`mse_loss`] |
//! | `dropout.rs` | [`dropout_train`], [`dropout_backward`] |

mod activation;
mod batch_norm;
mod check;
mod conv;
mod dropout;
mod linear;
mod loss;
mod pool;

pub use activation::Activation;
pub use batch_norm::{
    BatchNormGrads, BatchNormNeeds, BatchNormSaved, batch_norm_backward, batch_norm_eval_backward,
    batch_norm_train, cumulative_momentum,
};
pub use conv::{ConvGrads, ConvNeeds, conv_backward, conv_forward};
pub use dropout::{DropoutRng, dropout_backward, dropout_train};
pub use linear::{LinearGrads, linear_backward};
pub use loss::{CrossEntropyOptions, Reduction, cross_entropy, mse_loss};
pub use pool::{
    AvgPoolOptions, MaxPoolOptions, adaptive_avg_pool_backward, adaptive_max_pool, avg_pool_backward,
    max_pool_backward, max_pool_with_indices,
};
