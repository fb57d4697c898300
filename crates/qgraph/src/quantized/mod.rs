//! Quantized modules (`torch.ao.nn.quantized`): what `convert` swaps in for observed float modules.

/// `Module::type_name` and `Module::forward` for a layer with a `type_name` field and a
/// `run(&self, QuantTensor) -> GraphResult<QuantTensor>` method: quantized input only (defined
/// before the submodules so that they can use it).
macro_rules! quantized_forward {
    () => {
        fn type_name(&self) -> &str {
            &self.type_name
        }

        fn forward(&self, input: Value) -> GraphResult<Value> {
            let x = input.into_quant(&self.type_name)?;
            Ok(Value::Quant(self.run(x)?))
        }
    };
}

pub mod activation;
mod batchnorm;
mod conv;
mod dynamic_linear;
mod dynamic_rnn;
mod embedding;
mod linear;
mod weighted;

pub use batchnorm::QuantizedBatchNorm;
pub use conv::QuantizedConv;
pub use dynamic_linear::DynamicQuantizedLinear;
pub use dynamic_rnn::{
    DynamicProjection, DynamicQuantizedGRU, DynamicQuantizedGRUCell, DynamicQuantizedLSTM,
    DynamicQuantizedLSTMCell, DynamicQuantizedRNNCell,
};
pub use embedding::{EmbeddingWeight, QuantizedEmbedding, QuantizedEmbeddingBag};
pub use linear::QuantizedLinear;
pub use weighted::{QuantizedAct, QuantizedWeight};
