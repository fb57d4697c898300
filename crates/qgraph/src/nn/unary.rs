//! Elementwise activations.

use qkernels::elementwise::{self, Unary};
use qkernels::{Isa, float};
use serde::{Deserialize, Serialize};

use crate::value::QuantTensor;
use crate::{GraphResult, Module, Value};

/// Runs `act` in f32 on a float value, or PyTorch's quantized kernel `op` on a quantized one with
/// the output parameters PyTorch picks ([`Unary::output_qparams`]).
pub(crate) fn apply_unary(act: float::Activation, op: Unary, input: Value) -> GraphResult<Value> {
    let isa = Isa::active();
    match input {
        Value::Float(x) => {
            let mut x = x.as_standard_layout().into_owned();
            let data = x.as_slice_mut().expect("standard layout");
            let src = data.to_vec();
            float::activation(act, &src, data, isa)?;
            Ok(Value::Float(x))
        }
        Value::Quant(q) => {
            let out_q = op.output_qparams(q.qparams(), qcore::QDType::QUInt8);
            let mut out = vec![0u8; q.data().len()];
            elementwise::unary(op, q.data(), q.qparams(), &mut out, out_q, isa)?;
            Ok(Value::Quant(QuantTensor::new(out, q.shape().to_vec(), out_q)?))
        }
    }
}

/// `nn.ReLU`: `max(x, 0)`; on quantized values `max(q, zero_point)` with the input's parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReLU;

impl ReLU {
    /// `nn.ReLU()`.
    pub fn new() -> Self {
        ReLU
    }
}

impl Module for ReLU {
    fn type_name(&self) -> &str {
        "ReLU"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        apply_unary(float::Activation::Relu, Unary::Relu, input)
    }
}
