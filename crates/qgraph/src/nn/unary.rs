//! Elementwise activations: `ReLU`, `ReLU6`, `Hardtanh`, `Hardswish`, `Hardsigmoid`, `Sigmoid`,
//! `Tanh`, `LeakyReLU`, `ELU`, `Threshold`. Each runs in f32 on a float value and, on a quantized value, PyTorch's
//! quantized kernel with the output parameters PyTorch picks for the un-swapped float module.

use std::sync::Mutex;

use qkernels::elementwise::{self, Lut, PerTensor, Unary};
use qkernels::{Isa, MemoryFormat, float};
use serde::{Deserialize, Serialize};

use crate::value::{QuantTensor, for_each_scalar_loop_element, standard_layout};
use crate::{GraphError, GraphResult, Module, Value};

/// Python's `repr` of a float: shortest round-trip digits, `1.0` for integers, exponent form
/// (`1e-05`, `1e+16`) outside `1e-4 <= |x| < 1e16`.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: `-1.25e-5`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if (point as usize) >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// The tables of one op for one pair of input and output parameters: `body` for the elements
/// PyTorch's vector loop handles, `tail` (if the op's scalar loop rounds differently) for the
/// rest.
#[derive(Debug)]
struct Tables {
    in_q: PerTensor,
    out_q: PerTensor,
    body: Lut<u8>,
    tail: Option<Lut<u8>>,
}

/// Lookup tables built for one pair of input and output parameters, kept for the next call (a
/// model sees the same input parameters on every inference).
#[derive(Debug, Default)]
pub(crate) struct LutCache(Mutex<Option<Tables>>);

impl Clone for LutCache {
    /// A fresh, empty cache: tables are rebuilt on demand.
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The table of PyTorch's scalar loop for `op`, where it differs from the vector body: the input
/// dequantized as `f32(s) * (q - zp)`, the op in f32, and `quantize_val` (inverse `1.0f / f32(s)`).
fn scalar_tail(op: Unary, in_q: PerTensor, out_q: PerTensor) -> Option<Lut<u8>> {
    let f: Box<dyn Fn(f32) -> f32> = match op {
        Unary::Hardswish => Box::new(|x: f32| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
        Unary::Hardsigmoid => Box::new(|x: f32| (x + 3.0).clamp(0.0, 6.0) / 6.0),
        Unary::Threshold { threshold, value } => {
            Box::new(move |x: f32| if x > threshold { x } else { value })
        }
        Unary::LeakyRelu { negative_slope } => {
            Box::new(move |x: f32| if x >= 0.0 { x } else { x * negative_slope })
        }
        Unary::Elu { alpha, scale, input_scale } => {
            Box::new(
                move |x: f32| {
                    if x >= 0.0 { x * scale } else { (x * input_scale).exp_m1() * alpha * scale }
                },
            )
        }
        _ => return None,
    };
    Some(Lut::from_fn(|q: u8| {
        let x = qcore::dequantize_val(in_q.scale, in_q.zero_point, i32::from(q));
        qcore::quantize_val(out_q.scale, out_q.zero_point, f(x), qcore::QDType::QUInt8) as u8
    }))
}

impl LutCache {
    /// `op` on `q` with output parameters `out_q` (which must be what PyTorch allows for `op`).
    /// The integer clamps run directly; the other ops reuse the tables of the previous call when
    /// the parameters are the same.
    ///
    /// The output's memory format is the input's, except for ELU, whose output PyTorch allocates
    /// contiguous (`quantized_elu`); reading a channels-last input in that order, PyTorch's loop
    /// is not contiguous and rounds every element with its scalar rule.
    pub(crate) fn apply(&self, op: Unary, q: &QuantTensor, out_q: PerTensor) -> GraphResult<QuantTensor> {
        let isa = Isa::active();
        let format =
            if matches!(op, Unary::Elu { .. }) { MemoryFormat::Contiguous } else { q.memory_format() };
        let in_q = q.qparams();
        let mut out = vec![0u8; q.data().len()];
        if matches!(op, Unary::Relu | Unary::Relu6 | Unary::Hardtanh { .. }) {
            elementwise::unary(op, q.data(), in_q, &mut out, out_q, isa)?;
        } else {
            // A poisoned lock only means another thread panicked mid-build; the slot is
            // overwritten below, so its content does not matter.
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(&*slot, Some(t) if t.in_q == in_q && t.out_q == out_q) {
                let body = Lut::unary(op, in_q, out_q)?;
                *slot = Some(Tables { in_q, out_q, body, tail: scalar_tail(op, in_q, out_q) });
            }
            let t = slot.as_ref().expect("filled just above");
            // Copies of the tables (512 bytes), so that concurrent calls do not wait on the lock.
            let (body, tail) = (t.body.clone(), t.tail.clone());
            drop(slot);
            body.apply(q.data(), &mut out, isa)?;
            if let Some(tail) = tail {
                for_each_scalar_loop_element(q.shape(), format, &[q], |o, at| {
                    out[o] = tail.get(q.data()[at[0]]);
                });
            }
        }
        Ok(QuantTensor::new(out, q.shape().to_vec(), out_q)?.with_memory_format(format))
    }
}

/// Runs `act` in f32 on a float value, or PyTorch's quantized kernel `op` on a quantized one with
/// the output parameters PyTorch picks ([`Unary::output_qparams`]), through `cache`. Without a
/// quantized op (PyTorch has no kernel for the un-swapped module) a quantized value is an error
/// naming `module`.
pub(crate) fn apply_unary(
    module: &str,
    act: float::Activation,
    op: Option<Unary>,
    cache: &LutCache,
    input: Value,
) -> GraphResult<Value> {
    match input {
        Value::Float(x) => {
            let mut x = standard_layout(x);
            float::activation_in_place(act, x.as_slice_mut().expect("standard layout"), Isa::active())?;
            Ok(Value::Float(x))
        }
        other => {
            let q = other.into_quant(module)?;
            let op = op.ok_or_else(|| GraphError::ExpectedFloat { module: module.to_string() })?;
            let out_q = op.output_qparams(q.qparams(), qcore::QDType::QUInt8);
            Ok(Value::Quant(cache.apply(op, &q, out_q)?))
        }
    }
}

/// An activation without arguments: the struct (a lookup-table cache only), `new()` and
/// `Default`.
macro_rules! unit_activation {
    ($(#[$doc:meta])* $ty:ident, $new_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $ty {
            #[serde(skip)]
            cache: LutCache,
        }

        impl $ty {
            #[doc = $new_doc]
            pub fn new() -> Self {
                Self::default()
            }
        }
    };
}
pub(crate) use unit_activation;

/// Implements `Module` for an activation: its PyTorch name, the float and quantized ops of
/// `$ops(&self)` (`None`: no quantized kernel), `extra_repr`, and save/load through serde.
macro_rules! activation_module {
    ($ty:ident, $name:literal, $ops:expr, $repr:expr) => {
        impl $ty {
            /// The float and quantized ops this module runs.
            fn ops(&self) -> (float::Activation, Option<Unary>) {
                let f: fn(&$ty) -> (float::Activation, Option<Unary>) = $ops;
                f(self)
            }
        }

        impl Module for $ty {
            fn type_name(&self) -> &str {
                $name
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                let (act, op) = self.ops();
                apply_unary($name, act, op, &self.cache, input)
            }

            fn extra_repr(&self) -> String {
                let f: fn(&$ty) -> String = $repr;
                f(self)
            }

            serde_config!();
        }
    };
}

unit_activation!(
    /// `nn.ReLU`: `max(x, 0)`; on quantized values `max(q, zero_point)` with the input's parameters.
    ReLU,
    "`nn.ReLU()`."
);

activation_module!(ReLU, "ReLU", |_| (float::Activation::Relu, Some(Unary::Relu)), |_| String::new());

unit_activation!(
    /// `nn.ReLU6`: `min(max(x, 0), 6)`; on quantized values an integer clamp with the input's
    /// parameters.
    ReLU6,
    "`nn.ReLU6()`."
);

activation_module!(ReLU6, "ReLU6", |_| (float::Activation::Relu6, Some(Unary::Relu6)), |_| String::new());

/// `nn.Hardtanh(min_val, max_val)`: `min(max(x, min_val), max_val)`; on quantized values an
/// integer clamp to the quantized bounds, with the input's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hardtanh {
    min_val: f64,
    max_val: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl Hardtanh {
    /// `nn.Hardtanh(min_val, max_val)`; PyTorch's default is `(-1.0, 1.0)`. Bounds with
    /// `min_val > max_val` are refused when the module runs.
    pub fn new(min_val: f64, max_val: f64) -> Self {
        Self { min_val, max_val, cache: LutCache::default() }
    }
}

impl Default for Hardtanh {
    fn default() -> Self {
        Self::new(-1.0, 1.0)
    }
}

activation_module!(
    Hardtanh,
    "Hardtanh",
    |m| {
        let (min, max) = (m.min_val as f32, m.max_val as f32);
        (float::Activation::Hardtanh { min, max }, Some(Unary::Hardtanh { min, max }))
    },
    |m| format!("min_val={}, max_val={}", py_float(m.min_val), py_float(m.max_val))
);

unit_activation!(
    /// `nn.Hardswish`: `x * relu6(x + 3) / 6`. PyTorch has no kernel for it on quantized tensors
    /// (convert swaps it for [`crate::quantized::activation::Hardswish`]): a quantized input is an
    /// error.
    Hardswish,
    "`nn.Hardswish()`."
);

activation_module!(Hardswish, "Hardswish", |_| (float::Activation::Hardswish, None), |_| { String::new() });

unit_activation!(
    /// `nn.Hardsigmoid`: `relu6(x + 3) / 6`; on quantized values `quantized::hardsigmoid`, output
    /// scale 1/256, zero point 0. `convert` leaves it in place (PyTorch has no quantized module for
    /// it), so it runs on the quantized output of the module before it.
    Hardsigmoid,
    "`nn.Hardsigmoid()`."
);

activation_module!(
    Hardsigmoid,
    "Hardsigmoid",
    |_| (float::Activation::Hardsigmoid, Some(Unary::Hardsigmoid)),
    |_| String::new()
);

unit_activation!(
    /// `nn.Sigmoid`; on quantized values `quantized::sigmoid`, output scale 1/256, zero point 0.
    Sigmoid,
    "`nn.Sigmoid()`."
);

activation_module!(Sigmoid, "Sigmoid", |_| (float::Activation::Sigmoid, Some(Unary::Sigmoid)), |_| {
    String::new()
});

unit_activation!(
    /// `nn.Tanh`; on quantized values `quantized::tanh`, output scale 2/256, zero point 128.
    Tanh,
    "`nn.Tanh()`."
);

activation_module!(Tanh, "Tanh", |_| (float::Activation::Tanh, Some(Unary::Tanh)), |_| String::new());

/// `nn.LeakyReLU(negative_slope)`: `x > 0 ? x : x * negative_slope`; on quantized values
/// `quantized::leaky_relu` with the input's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakyReLU {
    negative_slope: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl LeakyReLU {
    /// `nn.LeakyReLU(negative_slope)`; PyTorch's default slope is `0.01`.
    pub fn new(negative_slope: f64) -> Self {
        Self { negative_slope, cache: LutCache::default() }
    }

    /// The slope for negative inputs.
    pub fn negative_slope(&self) -> f64 {
        self.negative_slope
    }
}

impl Default for LeakyReLU {
    fn default() -> Self {
        Self::new(0.01)
    }
}

activation_module!(
    LeakyReLU,
    "LeakyReLU",
    |m| {
        let negative_slope = m.negative_slope as f32;
        (float::Activation::LeakyRelu { negative_slope }, Some(Unary::LeakyRelu { negative_slope }))
    },
    |m| format!("negative_slope={}", py_float(m.negative_slope))
);

/// `nn.ELU(alpha)`: `x > 0 ? x : alpha * (exp(x) - 1)`. PyTorch has no kernel for it on
/// quantized tensors (convert swaps it for [`crate::quantized::activation::ELU`]): a quantized
/// input is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ELU {
    alpha: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl ELU {
    /// `nn.ELU(alpha)`; PyTorch's default is `1.0`.
    pub fn new(alpha: f64) -> Self {
        Self { alpha, cache: LutCache::default() }
    }

    /// `alpha`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

impl Default for ELU {
    fn default() -> Self {
        Self::new(1.0)
    }
}

activation_module!(ELU, "ELU", |m| (float::Activation::Elu { alpha: m.alpha as f32 }, None), |m| format!(
    "alpha={}",
    py_float(m.alpha)
));

/// `nn.Threshold(threshold, value)`: `x <= threshold ? value : x`; on quantized values PyTorch's
/// `threshold` kernel with the input's parameters. `convert` leaves it in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Threshold {
    threshold: f64,
    value: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl Threshold {
    /// `nn.Threshold(threshold, value)` (both required, as in PyTorch).
    pub fn new(threshold: f64, value: f64) -> Self {
        Self { threshold, value, cache: LutCache::default() }
    }
}

activation_module!(
    Threshold,
    "Threshold",
    |m| {
        let (threshold, value) = (m.threshold as f32, m.value as f32);
        (float::Activation::Threshold { threshold, value }, Some(Unary::Threshold { threshold, value }))
    },
    |m| format!("threshold={}, value={}", py_float(m.threshold), py_float(m.value))
);

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn floats_print_as_python_does() {
        for (x, s) in [
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.01, "0.01"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (123.25, "123.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(py_float(x), s);
        }
    }
}
