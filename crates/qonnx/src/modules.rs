//! Modules for ONNX operators qgraph has no module for: the tensor-layout operators (reshape,
//! transpose, squeeze, unsqueeze, slice, gather with constant indices, constant padding), which
//! run on float values and, element for element, on quantized ones (PyTorch's view and indexing
//! ops keep a quantized tensor's parameters), and the float-only `LogSoftmax` and
//! [`ConvTranspose2d`].

use ndarray::{ArrayD, Axis, IxDyn, Slice as NdSlice};

use qgraph::{GraphError, GraphResult, Module, QuantTensor, Value};
use serde::{Deserialize, Serialize};

pub use crate::conv_transpose::{ConvTranspose2d, ConvTransposeOptions};

fn invalid(module: &str, reason: impl Into<String>) -> GraphError {
    GraphError::Mismatch { context: "qonnx", reason: format!("{module}: {}", reason.into()) }
}

/// An operator that moves elements without changing them.
trait Layout {
    /// The class name.
    const NAME: &'static str;
    /// The operation on an array of any element type; `fill` is the padding value.
    fn run<T: Clone>(&self, x: ArrayD<T>, fill: T) -> GraphResult<ArrayD<T>>;
    /// The float padding value (0 unless padding).
    fn fill(&self) -> f32 {
        0.0
    }
}

/// Runs `op` on a float value, or on the integers of a quint8 value (the parameters unchanged).
fn run_layout<L: Layout>(op: &L, input: Value) -> GraphResult<Value> {
    match input {
        Value::Float(x) => Ok(Value::Float(op.run(x, op.fill())?)),
        Value::Quant(q) => {
            let params = q.qparams();
            let fill = (f64::from(op.fill()) / params.scale).round_ties_even() + params.zero_point as f64;
            if !(0.0..=255.0).contains(&fill) {
                return Err(invalid(
                    L::NAME,
                    format!("padding value {} is outside the quantized range", op.fill()),
                ));
            }
            let y = op.run(q.int_repr(), fill as u8)?;
            Ok(Value::Quant(QuantTensor::from_int_repr(&y, params)?))
        }
        other => {
            Err(other.unsupported(L::NAME, "float or quint8 tensors", "quantize its input with a QuantStub"))
        }
    }
}

/// `axis` (negative counts from the end) of a rank-`rank` tensor.
fn wrap(module: &str, axis: i64, rank: usize) -> GraphResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(invalid(module, format!("axis {axis} is out of range for a rank-{rank} tensor")))
    }
}

macro_rules! layout_module {
    ($ty:ident, $name:literal) => {
        impl Module for $ty {
            fn type_name(&self) -> &str {
                $name
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                run_layout(self, input)
            }

            fn extra_repr(&self) -> String {
                match serde_json::to_value(self).expect("plain data") {
                    serde_json::Value::Object(fields) => {
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
                    }
                    other => other.to_string(),
                }
            }

            fn config(&self) -> serde_json::Value {
                serde_json::to_value(self).expect("plain data")
            }
        }
    };
}

/// ONNX `Reshape`: `0` copies the input's dimension, `-1` is inferred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshape {
    /// The target shape.
    pub shape: Vec<i64>,
}

impl Layout for Reshape {
    const NAME: &'static str = "Reshape";

    fn run<T: Clone>(&self, x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let mut shape = Vec::with_capacity(self.shape.len());
        let mut infer = None;
        for (i, &d) in self.shape.iter().enumerate() {
            match d {
                0 => shape.push(
                    *x.shape().get(i).ok_or_else(|| invalid("Reshape", "0 copies a missing dimension"))?,
                ),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    shape.push(1);
                }
                d if d > 0 => {
                    shape.push(usize::try_from(d).map_err(|_| invalid("Reshape", "dimension too large"))?)
                }
                d => return Err(invalid("Reshape", format!("dimension {d} in {:?}", self.shape))),
            }
        }
        let known = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(0);
        if let Some(i) = infer {
            if known == 0 || !x.len().is_multiple_of(known) {
                return Err(invalid(
                    "Reshape",
                    format!("cannot reshape {:?} to {:?}", x.shape(), self.shape),
                ));
            }
            shape[i] = x.len() / known;
        } else if known != x.len() {
            return Err(invalid("Reshape", format!("cannot reshape {:?} to {:?}", x.shape(), self.shape)));
        }
        let x = x.as_standard_layout().into_owned();
        x.into_shape_with_order(IxDyn(&shape)).map_err(|e| invalid("Reshape", e.to_string()))
    }
}
layout_module!(Reshape, "Reshape");

/// ONNX `Transpose` (`x.permute(*perm)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transpose {
    /// Output dimension `i` is input dimension `perm[i]`.
    pub perm: Vec<usize>,
}

impl Layout for Transpose {
    const NAME: &'static str = "Transpose";

    fn run<T: Clone>(&self, x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let mut seen = vec![false; x.ndim()];
        if self.perm.len() != x.ndim()
            || self.perm.iter().any(|&p| p >= x.ndim() || std::mem::replace(&mut seen[p], true))
        {
            return Err(invalid(
                "Transpose",
                format!("perm {:?} does not permute {} dimensions", self.perm, x.ndim()),
            ));
        }
        Ok(x.permuted_axes(IxDyn(&self.perm)).as_standard_layout().into_owned())
    }
}
layout_module!(Transpose, "Transpose");

/// ONNX `Squeeze` of the given axes (all size-1 axes if empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Squeeze {
    /// The axes removed.
    pub axes: Vec<i64>,
}

impl Layout for Squeeze {
    const NAME: &'static str = "Squeeze";

    fn run<T: Clone>(&self, x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let rank = x.ndim();
        let axes: Vec<usize> = if self.axes.is_empty() {
            (0..rank).filter(|&a| x.shape()[a] == 1).collect()
        } else {
            self.axes.iter().map(|&a| wrap("Squeeze", a, rank)).collect::<GraphResult<_>>()?
        };
        if axes.iter().any(|&a| x.shape()[a] != 1) {
            return Err(invalid(
                "Squeeze",
                format!("axes {:?} of shape {:?} are not all 1", self.axes, x.shape()),
            ));
        }
        let shape: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).map(|a| x.shape()[a]).collect();
        let x = x.as_standard_layout().into_owned();
        x.into_shape_with_order(IxDyn(&shape)).map_err(|e| invalid("Squeeze", e.to_string()))
    }
}
layout_module!(Squeeze, "Squeeze");

/// ONNX `Unsqueeze`: inserts size-1 axes (positions in the output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsqueeze {
    /// The inserted axes.
    pub axes: Vec<i64>,
}

impl Layout for Unsqueeze {
    const NAME: &'static str = "Unsqueeze";

    fn run<T: Clone>(&self, x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let rank = x.ndim() + self.axes.len();
        let axes: Vec<usize> =
            self.axes.iter().map(|&a| wrap("Unsqueeze", a, rank)).collect::<GraphResult<_>>()?;
        let mut dims = x.shape().iter();
        let shape: Vec<usize> = (0..rank)
            .map(|a| if axes.contains(&a) { 1 } else { dims.next().copied().unwrap_or(1) })
            .collect();
        let x = x.as_standard_layout().into_owned();
        x.into_shape_with_order(IxDyn(&shape)).map_err(|e| invalid("Unsqueeze", e.to_string()))
    }
}
layout_module!(Unsqueeze, "Unsqueeze");

/// ONNX `Slice` with constant bounds (also each output of `Split`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Start per axis (negative counts from the end, clamped).
    pub starts: Vec<i64>,
    /// End per axis (exclusive; clamped).
    pub ends: Vec<i64>,
    /// The axes sliced.
    pub axes: Vec<i64>,
    /// Steps (negative walks backwards).
    pub steps: Vec<i64>,
}

impl Layout for Slice {
    const NAME: &'static str = "Slice";

    fn run<T: Clone>(&self, mut x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let n = self.axes.len();
        if self.starts.len() != n || self.ends.len() != n || self.steps.len() != n {
            return Err(invalid("Slice", "starts, ends, axes and steps differ in length"));
        }
        for i in 0..n {
            let axis = wrap("Slice", self.axes[i], x.ndim())?;
            let indices = slice_indices(x.shape()[axis], self.starts[i], self.ends[i], self.steps[i])?;
            x = x.select(Axis(axis), &indices);
        }
        Ok(x)
    }
}

/// The indices ONNX's `Slice` takes along a dimension of `dim` (negative bounds count from the
/// end, bounds are clamped, a negative step walks backwards).
fn slice_indices(dim: usize, start: i64, end: i64, step: i64) -> GraphResult<Vec<usize>> {
    let d = i64::try_from(dim).map_err(|_| invalid("Slice", "dimension too large"))?;
    let wrap = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (start, end) = (wrap(start), wrap(end));
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, end) = (start.clamp(0, d), end.clamp(0, d));
        while i < end {
            out.push(i as usize);
            i = i.saturating_add(step);
        }
    } else if step < 0 {
        let (mut i, end) = (start.clamp(0, d - 1), end.clamp(-1, d - 1));
        while i > end {
            out.push(i as usize);
            i = i.saturating_add(step);
        }
    } else {
        return Err(invalid("Slice", "step 0"));
    }
    Ok(out)
}
layout_module!(Slice, "Slice");

/// ONNX `Gather` with constant indices: `x.index_select(axis, indices)`, or `x.select(axis, i)`
/// for a scalar index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gather {
    /// The axis indexed.
    pub axis: i64,
    /// The indices (negative counts from the end).
    pub indices: Vec<i64>,
    /// True if the index is a scalar (the axis is removed).
    pub scalar: bool,
}

impl Layout for Gather {
    const NAME: &'static str = "Gather";

    fn run<T: Clone>(&self, x: ArrayD<T>, _: T) -> GraphResult<ArrayD<T>> {
        let axis = wrap("Gather", self.axis, x.ndim())?;
        let dim = x.shape()[axis] as i64;
        let indices: Vec<usize> = self
            .indices
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + dim } else { i };
                if (0..dim).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(invalid("Gather", format!("index {i} out of range for a dimension of {dim}")))
                }
            })
            .collect::<GraphResult<_>>()?;
        let rows = x.len() / x.shape()[axis].max(1);
        if rows.checked_mul(indices.len()).is_none_or(|n| n > qgraph::memory::max_elements()) {
            return Err(invalid(
                "Gather",
                format!("{} indices of {:?} exceed the element limit", indices.len(), x.shape()),
            ));
        }
        if self.scalar {
            let [i] = indices[..] else { return Err(invalid("Gather", "a scalar index holds one value")) };
            return Ok(x.index_axis(Axis(axis), i).to_owned());
        }
        Ok(x.select(Axis(axis), &indices))
    }
}
layout_module!(Gather, "Gather");

/// ONNX `Pad` in constant mode: `pads` is ONNX's `[begin_0, ..., begin_n, end_0, ..., end_n]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pad {
    /// Begin pads then end pads, one per axis (non-negative).
    pub pads: Vec<usize>,
    /// The padding value.
    pub value: f32,
}

impl Layout for Pad {
    const NAME: &'static str = "Pad";

    fn fill(&self) -> f32 {
        self.value
    }

    fn run<T: Clone>(&self, x: ArrayD<T>, fill: T) -> GraphResult<ArrayD<T>> {
        let rank = x.ndim();
        if self.pads.len() != 2 * rank {
            return Err(invalid("Pad", format!("{} pads for a rank-{rank} tensor", self.pads.len())));
        }
        let mut shape = Vec::with_capacity(rank);
        for a in 0..rank {
            let d = x.shape()[a].checked_add(self.pads[a]).and_then(|d| d.checked_add(self.pads[a + rank]));
            shape.push(d.ok_or_else(|| invalid("Pad", "padded size overflows"))?);
        }
        let total = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if total.is_none_or(|t| t > qgraph::memory::max_elements()) {
            return Err(invalid("Pad", format!("padded shape {shape:?} exceeds the element limit")));
        }
        let mut out = ArrayD::from_elem(IxDyn(&shape), fill);
        let mut view = out.view_mut();
        for a in 0..rank {
            let start = self.pads[a] as isize;
            view.slice_axis_inplace(Axis(a), NdSlice::new(start, Some(start + x.shape()[a] as isize), 1));
        }
        view.assign(&x);
        Ok(out)
    }
}
layout_module!(Pad, "Pad");

/// `nn.LogSoftmax(dim)` (float).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSoftmax {
    /// The axis normalized.
    pub dim: i64,
}

impl Module for LogSoftmax {
    fn type_name(&self) -> &str {
        "LogSoftmax"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut x = input.into_float("LogSoftmax")?;
        let axis = wrap("LogSoftmax", self.dim, x.ndim())?;
        for mut lane in x.lanes_mut(Axis(axis)) {
            let max = lane.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = lane.iter().map(|&v| (v - max).exp()).sum();
            let log = max + sum.ln();
            lane.mapv_inplace(|v| v - log);
        }
        Ok(Value::Float(x))
    }

    fn extra_repr(&self) -> String {
        format!("dim={}", self.dim)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}

/// [`Gather`] on a constant (import-time folding).
pub(crate) fn gather_const<T: Clone + Default>(g: &Gather, a: ArrayD<T>) -> GraphResult<ArrayD<T>> {
    g.run(a, T::default())
}

/// [`Reshape`] on a constant.
pub(crate) fn reshape_const<T: Clone + Default>(r: &Reshape, a: ArrayD<T>) -> GraphResult<ArrayD<T>> {
    r.run(a, T::default())
}

/// [`Slice`] on a constant.
pub(crate) fn slice_const<T: Clone + Default>(s: &Slice, a: ArrayD<T>) -> GraphResult<ArrayD<T>> {
    s.run(a, T::default())
}

/// [`Transpose`] on a constant.
pub(crate) fn transpose_const<T: Clone + Default>(t: &Transpose, a: ArrayD<T>) -> GraphResult<ArrayD<T>> {
    t.run(a, T::default())
}

/// `Squeeze` or `Unsqueeze` (by `op`) on a constant.
pub(crate) fn squeeze_const<T: Clone + Default>(
    op: &str,
    axes: &[i64],
    a: ArrayD<T>,
) -> GraphResult<ArrayD<T>> {
    if op == "Squeeze" {
        Squeeze { axes: axes.to_vec() }.run(a, T::default())
    } else {
        Unsqueeze { axes: axes.to_vec() }.run(a, T::default())
    }
}

/// Registers the loaders of this file's modules.
pub(crate) fn register_loaders(loaders: &mut qgraph::io::Loaders) {
    loaders
        .register_config::<Reshape>("Reshape")
        .register_config::<Transpose>("Transpose")
        .register_config::<Squeeze>("Squeeze")
        .register_config::<Unsqueeze>("Unsqueeze")
        .register_config::<Slice>("Slice")
        .register_config::<Gather>("Gather")
        .register_config::<Pad>("Pad")
        .register_config::<LogSoftmax>("LogSoftmax")
        .register("ConvTranspose2d", |record| Ok(Box::new(ConvTranspose2d::from_record(record)?)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use qgraph::PerTensor;

    fn arange(shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), (0..shape.iter().product::<usize>()).map(|v| v as f32).collect())
            .unwrap()
    }

    #[test]
    fn layout_ops_move_float_and_quantized_elements_alike() {
        let x = arange(&[2, 3, 4]);
        let q = QuantTensor::quantize(&x, PerTensor::new(0.5, 3)).unwrap();
        let ops: Vec<Box<dyn Module>> = vec![
            Box::new(Reshape { shape: vec![0, -1] }),
            Box::new(Transpose { perm: vec![2, 0, 1] }),
            Box::new(Unsqueeze { axes: vec![0, -1] }),
            Box::new(Slice {
                starts: vec![1, -3],
                ends: vec![i64::MAX, 3],
                axes: vec![1, 2],
                steps: vec![1, 2],
            }),
            Box::new(Gather { axis: -1, indices: vec![3, 0], scalar: false }),
            Box::new(Pad { pads: vec![0, 1, 0, 0, 0, 2], value: 0.0 }),
        ];
        for op in ops {
            let f = op.forward(Value::Float(x.clone())).unwrap().into_float("test").unwrap();
            let g = op.forward(Value::Quant(q.clone())).unwrap().into_quant("test").unwrap();
            assert_eq!(g.dequantize(), f, "{}", op.type_name());
        }
        let y = Reshape { shape: vec![0, -1] }.forward(Value::Float(x.clone())).unwrap();
        assert_eq!(y.shape().unwrap(), &[2, 12]);
        let y = Slice { starts: vec![1, -3], ends: vec![i64::MAX, 3], axes: vec![1, 2], steps: vec![1, 2] }
            .forward(Value::Float(x.clone()))
            .unwrap()
            .into_float("t")
            .unwrap();
        assert_eq!(y.shape(), &[2, 2, 1]);
        assert_eq!(y[[0, 0, 0]], 5.0);
        let s = Squeeze { axes: vec![] }.forward(Value::Float(arange(&[1, 3, 1]))).unwrap();
        assert_eq!(s.shape().unwrap(), &[3]);
        assert!(Squeeze { axes: vec![1] }.forward(Value::Float(arange(&[1, 3, 1]))).is_err());
        assert!(Gather { axis: 0, indices: vec![5], scalar: true }.forward(Value::Float(x.clone())).is_err());
        assert!(Transpose { perm: vec![0, 0, 1] }.forward(Value::Float(x.clone())).is_err());
        let r = Slice { starts: vec![-1], ends: vec![i64::MIN], axes: vec![2], steps: vec![-2] }
            .forward(Value::Float(x))
            .unwrap()
            .into_float("t")
            .unwrap();
        assert_eq!(r.shape(), &[2, 3, 2]);
        assert_eq!((r[[0, 0, 0]], r[[0, 0, 1]]), (3.0, 1.0));
        assert_eq!(slice_indices(5, 1, 100, 2).unwrap(), [1, 3]);
        assert_eq!(slice_indices(5, 10, -10, -1).unwrap(), [4, 3, 2, 1, 0]);
        assert!(slice_indices(5, 0, 5, 0).is_err());
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let y =
            LogSoftmax { dim: 1 }.forward(Value::Float(arange(&[2, 5]))).unwrap().into_float("t").unwrap();
        for row in y.rows() {
            let s: f32 = row.iter().map(|v| v.exp()).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }
}
