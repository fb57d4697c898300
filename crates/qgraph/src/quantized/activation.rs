//! Quantized activations (`torch.ao.nn.quantized`: `ReLU6`, `Hardswish`, `ELU`, `LeakyReLU`,
//! `Dropout`): what `convert` puts in place of the float modules that PyTorch's static mapping
//! swaps. The other activations (ReLU, Sigmoid, Tanh, Hardtanh, pooling, ...) are not swapped and
//! run as the float modules on quantized values.

use qkernels::elementwise::{PerTensor, Unary};
use serde::{Deserialize, Serialize};

use crate::nn::misc::dropout_repr;
use crate::nn::unary::{LutCache, py_float, unit_activation};
use crate::outq::OutQ;
use crate::record::Record;
use crate::{GraphResult, Module, Value, nn};

/// PyTorch's fixed output parameters for the modules of `DEFAULT_MODULE_TO_ACT_POST_PROCESS`
/// (quint8): `Sigmoid`, `Hardsigmoid` and `Softmax` get scale 1/256 and zero point 0, `Tanh`
/// scale 2/256 and zero point 128, whatever the qconfig says. `None` for every other type.
pub fn is_fixed_qparams(type_name: &str) -> Option<PerTensor> {
    match type_name {
        "Sigmoid" | "Hardsigmoid" | "Softmax" => Some(PerTensor::new(1.0 / 256.0, 0)),
        "Tanh" => Some(PerTensor::new(2.0 / 256.0, 128)),
        _ => None,
    }
}

/// Runs `op` on a quantized input (an error naming `module` for a float one) with output
/// parameters `out_q`, or the input's when `None`.
fn run(
    module: &str,
    op: Unary,
    cache: &LutCache,
    out_q: Option<PerTensor>,
    input: Value,
) -> GraphResult<Value> {
    let q = input.into_quant(module)?;
    let out_q = out_q.unwrap_or(q.qparams());
    Ok(Value::Quant(cache.apply(op, &q, out_q)?))
}

unit_activation!(
    /// `nnq.ReLU6` (`QuantizedReLU6`): `min(max(q, zero_point), quantize(6))`, output parameters the
    /// input's.
    ReLU6,
    "`nnq.ReLU6()`."
);

impl Module for ReLU6 {
    fn type_name(&self) -> &str {
        "QuantizedReLU6"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        run(self.type_name(), Unary::Relu6, &self.cache, None, input)
    }

    serde_config!();
}

/// A quantized activation with observed output parameters `out` and `f64` arguments `$param`:
/// the struct, `new`, `out_qparams`, `from_record` and its `Module` impl running `$op(&self)`
/// through the lookup-table cache. `$round` is `new` or `new_f32` ([`OutQ`]'s constructors).
macro_rules! quantized_activation {
    (
        $(#[$doc:meta])* $ty:ident, $name:literal, $round:ident, [$($param:ident),*],
        new: $new_doc:literal, op: $op:expr, repr: $repr:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $ty {
            out: OutQ,
            $($param: f64,)*
            #[serde(skip)]
            cache: LutCache,
        }

        impl $ty {
            #[doc = $new_doc]
            pub fn new(out_q: PerTensor, $($param: f64),*) -> GraphResult<Self> {
                Ok(Self { out: OutQ::$round(out_q)?, $($param,)* cache: LutCache::default() })
            }

            /// The output parameters.
            pub fn out_qparams(&self) -> PerTensor {
                self.out.get()
            }

            /// Rebuilds a saved module (its parameters checked again).
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                let c: Self = record.config()?;
                Self::new(c.out.get(), $(c.$param),*)
            }
        }

        impl Module for $ty {
            fn type_name(&self) -> &str {
                $name
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                let op: fn(&$ty) -> Unary = $op;
                run($name, op(self), &self.cache, Some(self.out.get()), input)
            }

            fn extra_repr(&self) -> String {
                let repr: fn(&$ty) -> String = $repr;
                repr(self)
            }

            serde_config!();
        }
    };
}

quantized_activation!(
    /// `nnq.Hardswish` (`QuantizedHardswish`): `quantized::hardswish` with the observed output
    /// parameters.
    Hardswish, "QuantizedHardswish", new_f32, [],
    new: "`nnq.Hardswish(scale, zero_point)` (the scale rounded to f32, as PyTorch's output has it).",
    op: |_| Unary::Hardswish,
    repr: |_| String::new()
);

quantized_activation!(
    /// `nnq.ELU` (`QuantizedELU`): `quantized::elu` with the observed output parameters.
    ELU, "QuantizedELU", new, [alpha],
    new: "`nnq.ELU(scale, zero_point, alpha)`.",
    // `torch.ao.nn.quantized.functional.elu`: `quantized::elu` with scale and input scale 1.
    op: |m| Unary::Elu { alpha: m.alpha as f32, scale: 1.0, input_scale: 1.0 },
    repr: |m| format!("alpha={}", py_float(m.alpha))
);

quantized_activation!(
    /// `nnq.LeakyReLU` (`QuantizedLeakyReLU`): `quantized::leaky_relu` with the observed output
    /// parameters.
    LeakyReLU, "QuantizedLeakyReLU", new_f32, [negative_slope],
    new: "`nnq.LeakyReLU(scale, zero_point, negative_slope)` (the scale rounded to f32: PyTorch keeps it in a float32 buffer).",
    op: |m| Unary::LeakyRelu { negative_slope: m.negative_slope as f32 },
    repr: |m| format!("negative_slope={}", py_float(m.negative_slope))
);

/// `nnq.Dropout` (`QuantizedDropout`): returns its input, as PyTorch's placeholder does in both
/// training and evaluation mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    p: f64,
    /// PyTorch's `inplace` flag, printed only; saved only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inplace: bool,
}

impl Dropout {
    /// `nnq.Dropout(p)`; `p` must be within `[0, 1]`, as for `nn.Dropout`.
    pub fn new(p: f64) -> GraphResult<Self> {
        Ok(Self { p: nn::Dropout::new(p)?.p(), inplace: false })
    }

    /// `nnq.Dropout(p, inplace)`: the same module, printed with PyTorch's `inplace` flag.
    pub fn with_inplace(self, inplace: bool) -> Self {
        Self { inplace, ..self }
    }
}

impl Module for Dropout {
    fn type_name(&self) -> &str {
        "QuantizedDropout"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        Ok(input)
    }

    fn extra_repr(&self) -> String {
        dropout_repr(self.p, self.inplace)
    }

    serde_config!();
}
