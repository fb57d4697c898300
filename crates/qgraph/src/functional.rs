//! `FloatFunctional` and `QFunctional`: modules whose ops (`add`, `add_relu`, `cat`, ...) are
//! called from a parent's forward, so that the op has an observer (float) and output parameters
//! (quantized) of its own.

use ndarray::{ArrayD, Axis, IxDyn};
use qcore::QDType;
use qcore::requant::AddRequant;
use qkernels::elementwise::{self, BinaryOp, CatInput, Dequant, PerTensor};
use qkernels::{Isa, MemoryFormat};
use serde::{Deserialize, Serialize};

use crate::module::Functional;
use crate::nn::Identity;
use crate::outq::{OutQ, outq_newtype};
use crate::record::Record;
use crate::value::{QuantTensor, for_each_scalar_loop_element};
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// `FloatFunctional`: the float ops, each a `torch` op on float tensors. `prepare` gives the
/// instance one observer for the outputs of its observed ops; use one instance per call site.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloatFunctional;

impl FloatFunctional {
    /// An instance.
    pub fn new() -> Self {
        FloatFunctional
    }
}

fn broadcast_op(a: &ArrayD<f32>, b: &ArrayD<f32>, op: impl Fn(f32, f32) -> f32) -> GraphResult<ArrayD<f32>> {
    let shape = elementwise::broadcast_shape("FloatFunctional", a.shape(), b.shape())?;
    memory::checked_numel("FloatFunctional", &shape)?;
    let (a, b) = (
        a.broadcast(IxDyn(&shape)).expect("broadcast shape"),
        b.broadcast(IxDyn(&shape)).expect("broadcast shape"),
    );
    Ok(ndarray::Zip::from(&a).and(&b).map_collect(|&x, &y| op(x, y)))
}

fn arity(op: Functional, inputs: &[Value]) -> GraphResult<()> {
    let ok = match op.arity() {
        Some(n) => inputs.len() == n,
        None => !inputs.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "FloatFunctional",
            "number of inputs",
            inputs.len(),
            format!("{} takes {:?}", op.name(), op.arity()),
        ))
    }
}

/// The error of calling `forward` on a functional module, which only has ops.
fn no_forward(module: &'static str) -> GraphError {
    invalid(
        module,
        "forward",
        "called",
        format!("{module} has no forward; call one of its ops (add, add_relu, mul, cat, ...)"),
    )
}

/// PyTorch's `activation_post_process = nn.Identity()` child of both functional modules, which
/// `prepare` replaces by an observer; kept so that the printout matches.
static POST_PROCESS: [(&str, Identity); 1] = [("activation_post_process", Identity)];

fn post_process() -> Vec<(&'static str, &'static dyn Module)> {
    POST_PROCESS.iter().map(|(n, m)| (*n, m as &dyn Module)).collect()
}

impl Module for FloatFunctional {
    fn type_name(&self) -> &str {
        "FloatFunctional"
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        post_process()
    }

    fn forward(&self, _input: Value) -> GraphResult<Value> {
        Err(no_forward("FloatFunctional"))
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        arity(op, &inputs)?;
        let xs =
            inputs.into_iter().map(|v| v.into_float("FloatFunctional")).collect::<GraphResult<Vec<_>>>()?;
        let relu = |x: f32| if x > 0.0 || x.is_nan() { x } else { 0.0 };
        let out = match op {
            Functional::Add => broadcast_op(&xs[0], &xs[1], |a, b| a + b)?,
            Functional::AddRelu => broadcast_op(&xs[0], &xs[1], |a, b| relu(a + b))?,
            Functional::Mul => broadcast_op(&xs[0], &xs[1], |a, b| a * b)?,
            Functional::AddScalar(c) => xs[0].mapv(|a| a + c as f32),
            Functional::MulScalar(c) => xs[0].mapv(|a| a * c as f32),
            Functional::Cat(dim) => {
                let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
                if views.iter().any(|v| dim >= v.ndim()) {
                    return Err(invalid(
                        "FloatFunctional",
                        "cat dim",
                        dim,
                        "must be less than the rank of the inputs",
                    ));
                }
                ndarray::concatenate(Axis(dim), &views).map_err(|e| {
                    invalid("FloatFunctional", "cat inputs", e, "shapes must agree except along dim")
                })?
            }
        };
        Ok(Value::Float(out))
    }
}

/// `QFunctional`: the quantized ops, with the output parameters the `FloatFunctional`'s observer
/// chose (`add_scalar` / `mul_scalar` choose their own, as in PyTorch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QFunctional(OutQ);

outq_newtype!(QFunctional, "Ops whose outputs have parameters `q`.");

/// The stored (channels-last) shape of a logical shape.
fn stored_shape(shape: &[usize]) -> Vec<usize> {
    if shape.len() < 3 {
        return shape.to_vec();
    }
    let mut s = vec![shape[0]];
    s.extend_from_slice(&shape[2..]);
    s.push(shape[1]);
    s
}

/// The stored axis of logical axis `dim` for a tensor of rank `rank`.
fn stored_axis(dim: usize, rank: usize) -> usize {
    match dim {
        _ if rank < 3 => dim,
        0 => 0,
        1 => rank - 1,
        d => d - 1,
    }
}

impl Module for QFunctional {
    fn type_name(&self) -> &str {
        "QFunctional"
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        post_process()
    }

    fn forward(&self, _input: Value) -> GraphResult<Value> {
        Err(no_forward("QFunctional"))
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        arity(op, &inputs)?;
        let xs = inputs.into_iter().map(|v| v.into_quant("QFunctional")).collect::<GraphResult<Vec<_>>>()?;
        let (isa, out_q) = (Isa::active(), self.qparams());
        let binary = |kind: BinaryOp| -> GraphResult<Value> {
            let (a, b) = (&xs[0], &xs[1]);
            if a.shape().len() != b.shape().len() {
                return Err(GraphError::ShapeMismatch {
                    context: "QFunctional",
                    what: "rank of the second input",
                    got: b.shape().len(),
                    expected: a.shape().len(),
                });
            }
            let shape = elementwise::broadcast_shape("QFunctional", a.shape(), b.shape())?;
            let mut out = memory::zeroed("QFunctional", &shape)?;
            elementwise::binary(
                kind,
                a.data(),
                &stored_shape(a.shape()),
                a.qparams(),
                b.data(),
                &stored_shape(b.shape()),
                b.qparams(),
                &mut out,
                out_q,
                isa,
            )?;
            // PyTorch allocates the output in `a.suggest_memory_format()`; its add rounds the
            // elements its scalar loop takes with another rule (NUMERICS.md section 6).
            let format = a.memory_format();
            if matches!(kind, BinaryOp::Add | BinaryOp::AddRelu) {
                let rule = AddRequant::new(
                    a.qparams().pair(),
                    b.qparams().pair(),
                    out_q.pair(),
                    QDType::QUInt8,
                    kind == BinaryOp::AddRelu,
                )?;
                for_each_scalar_loop_element(&shape, format, &[a, b], |o, at| {
                    let (x, y) = (a.data()[at[0]], b.data()[at[1]]);
                    out[o] = rule.apply_scalar_loop(i32::from(x), i32::from(y)) as u8;
                });
            }
            Ok(Value::Quant(QuantTensor::new(out, shape, out_q)?.with_memory_format(format)))
        };
        match op {
            Functional::Add => binary(BinaryOp::Add),
            Functional::AddRelu => binary(BinaryOp::AddRelu),
            Functional::Mul => binary(BinaryOp::Mul),
            Functional::AddScalar(c) | Functional::MulScalar(c) => {
                let x = &xs[0];
                let mut out = vec![0u8; x.data().len()];
                let q = if matches!(op, Functional::AddScalar(_)) {
                    elementwise::add_scalar(x.data(), x.qparams(), c, false, &mut out, isa)?
                } else {
                    elementwise::mul_scalar(x.data(), x.qparams(), c, false, &mut out, isa)?
                };
                Ok(Value::Quant(
                    QuantTensor::new(out, x.shape().to_vec(), q)?.with_memory_format(x.memory_format()),
                ))
            }
            Functional::Cat(dim) => {
                let rank = xs[0].shape().len();
                if dim >= rank {
                    return Err(invalid(
                        "QFunctional",
                        "cat dim",
                        dim,
                        "must be less than the rank of the inputs",
                    ));
                }
                let stored: Vec<Vec<usize>> = xs.iter().map(|x| stored_shape(x.shape())).collect();
                let parts: Vec<CatInput<'_, u8>> = xs
                    .iter()
                    .zip(&stored)
                    .map(|(x, s)| CatInput { data: x.data(), shape: s, q: x.qparams() })
                    .collect();
                let mut shape = xs[0].shape().to_vec();
                shape[dim] = xs.iter().map(|x| x.shape().get(dim).copied().unwrap_or(0)).sum();
                let mut out = memory::zeroed("QFunctional", &shape)?;
                // PyTorch's cat of 4-D channels-last tensors along the channels takes its NHWC
                // kernel (output channels-last); any other cat dequantizes, concatenates the
                // float tensors (channels-last only if every input is) and quantizes.
                let all_channels_last = xs.iter().all(|x| x.kernel_format() == MemoryFormat::ChannelsLast);
                let (dequant, format) = match (rank, dim, all_channels_last) {
                    (4, 1, true) => (Dequant::Fma, MemoryFormat::ChannelsLast),
                    _ if xs.iter().all(|x| x.memory_format() == xs[0].memory_format()) => {
                        (Dequant::Plain, xs[0].memory_format())
                    }
                    _ => (Dequant::Plain, MemoryFormat::Contiguous),
                };
                elementwise::cat(&parts, stored_axis(dim, rank), &mut out, out_q, false, dequant, isa)?;
                Ok(Value::Quant(QuantTensor::new(out, shape, out_q)?.with_memory_format(format)))
            }
        }
    }

    fn extra_repr(&self) -> String {
        let q = self.qparams();
        format!("scale={}, zero_point={}", qcore::python_float_repr(q.scale), q.zero_point)
    }

    serde_config!();
}
