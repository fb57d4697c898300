//! Float modules (`torch.nn`): they run in f32 on float values, and those that PyTorch runs
//! directly on quantized tensors (ReLU, pooling, flatten, ...) also run on quantized values.

/// `Module::training` and `Module::set_training` for a layer that keeps its mode in a
/// `training: bool` field (defined before the submodules so that they can use it).
macro_rules! training_field {
    () => {
        fn training(&self) -> bool {
            self.training
        }

        fn set_training(&mut self, training: bool) {
            self.training = training;
        }
    };
}

/// The `Module` methods a weighted float layer (`Conv`, `Linear`) has alike: `weight` and, if
/// any, `bias` as its parameters, its training mode, and its `options` as its configuration.
macro_rules! weight_bias_layer {
    () => {
        fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
            weight_bias_params(&self.weight, self.bias.as_ref())
        }

        fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
            weight_bias_params_mut(&mut self.weight, self.bias.as_mut())
        }

        training_field!();

        fn config(&self) -> serde_json::Value {
            serde_json::to_value(&self.options).expect("plain data")
        }
    };
}

mod args;
mod batchnorm;
mod conv;
mod embedding;
mod fused;
mod init;
mod linear;
pub(crate) mod misc;
mod pool;
mod reshape;
mod rnn;
mod shape;
pub(crate) mod unary;

pub use args::MAX_SIZE;
pub(crate) use args::check_sizes;
pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormOptions};
pub(crate) use conv::check_weight_bias;
pub use conv::{Conv, Conv1d, Conv2d, Conv3d, ConvBuilder, ConvOptions};
pub use embedding::{Bags, Embedding, EmbeddingBag, EmbeddingBagMode, EmbeddingBagOptions, EmbeddingOptions};
pub use fused::{Fused, FusedKind};
pub use init::manual_seed;
pub use linear::{Linear, LinearOptions};
pub use misc::{Dropout, Softmax, Upsample, UpsampleMode};
pub use pool::{AvgPool2d, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d, Size};
pub use reshape::{Permute, Squeeze};
pub use rnn::{
    CellOptions, CellParams, FloatProjection, GRU, GRUCell, GateProjection, LSTM, LSTMCell, Nonlinearity,
    RNN, RNNCell, RnnMode, RnnOptions, gru_pointwise, lstm_cell_state, lstm_gates, lstm_hidden,
};
pub(crate) use rnn::{forward_cell, forward_rnn};
pub use shape::{AdaptiveAvgPool2d, Flatten, Identity};
pub use unary::{ELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh, Threshold};
