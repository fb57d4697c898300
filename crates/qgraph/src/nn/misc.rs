//! `Dropout` (the identity at inference), `Softmax` (float only) and `Upsample` (nearest and
//! bilinear, float and quantized).

use ndarray::{ArrayD, IxDyn};
use qkernels::{Isa, float, pool};
use serde::{Deserialize, Serialize};

use super::args::{MAX_SIZE, check_sizes};
use super::pool::Size;
use super::unary::py_float;
use crate::record::Record;
use crate::value::QuantTensor;
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// `nn.Dropout(p)`: the identity in evaluation mode, on float and quantized values. Training mode
/// (which would zero random elements) is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    p: f64,
    #[serde(skip)]
    training: bool,
    /// Set by `prepare` when the module has a qconfig: `convert` then swaps in `QuantizedDropout`,
    /// as PyTorch swaps every mapped module with a qconfig. Saved only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) swap_at_convert: bool,
    /// PyTorch's `inplace` flag: printed and passed on by `convert`, nothing else (the module
    /// returns its input). Saved only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inplace: bool,
}

impl Dropout {
    /// `nn.Dropout(p)`, in evaluation mode; `p` must be within `[0, 1]`, as PyTorch checks.
    pub fn new(p: f64) -> GraphResult<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid("Dropout", "p", p, "dropout probability has to be between 0 and 1"));
        }
        Ok(Self { p, training: false, swap_at_convert: false, inplace: false })
    }

    /// `nn.Dropout(p, inplace)`: the same module, printed with PyTorch's `inplace` flag.
    pub fn with_inplace(self, inplace: bool) -> Self {
        Self { inplace, ..self }
    }

    /// PyTorch's `inplace` flag.
    pub fn inplace(&self) -> bool {
        self.inplace
    }

    /// The probability of zeroing an element in training.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Rebuilds a saved module (in evaluation mode, marked for `convert` as it was saved).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let saved: Self = record.config()?;
        Ok(Self { swap_at_convert: saved.swap_at_convert, inplace: saved.inplace, ..Self::new(saved.p)? })
    }
}

/// `Dropout(p=0.5, inplace=False)`: the printout of `nn.Dropout` and `nnq.Dropout`.
pub(crate) fn dropout_repr(p: f64, inplace: bool) -> String {
    format!("p={}, inplace={}", py_float(p), if inplace { "True" } else { "False" })
}

impl Module for Dropout {
    fn type_name(&self) -> &str {
        "Dropout"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        if self.training {
            return Err(invalid(
                "Dropout",
                "training",
                true,
                "dropout in training mode is not supported (inference only); call eval(&mut model) first",
            ));
        }
        Ok(input)
    }

    fn extra_repr(&self) -> String {
        dropout_repr(self.p, self.inplace)
    }

    training_field!();

    serde_config!();
}

/// `nn.Softmax(dim)`: `exp(x) / sum(exp(x))` along `dim`, in f32. PyTorch has no softmax on
/// quantized tensors for the un-swapped module, so a quantized input is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Softmax {
    dim: Option<i64>,
}

impl Softmax {
    /// `nn.Softmax(dim)`; a negative `dim` counts from the end.
    pub fn new(dim: i64) -> Self {
        Self { dim: Some(dim) }
    }

    /// `nn.Softmax()` (`dim=None`): PyTorch's implicit choice, dim 0 for rank 0, 1 and 3 and dim 1
    /// otherwise (deprecated in PyTorch).
    pub fn implicit() -> Self {
        Self { dim: None }
    }

    /// The dimension as given (`None`: implicit).
    pub fn dim(&self) -> Option<i64> {
        self.dim
    }

    fn axis(&self, rank: usize) -> GraphResult<usize> {
        let r = rank as i64;
        let d = self.dim.unwrap_or(if matches!(rank, 0 | 1 | 3) { 0 } else { 1 });
        let a = if d < 0 { d + r } else { d };
        if !(0..r.max(1)).contains(&a) {
            return Err(invalid("Softmax", "dim", d, format!("out of range for a rank-{rank} tensor")));
        }
        Ok(a as usize)
    }
}

impl Module for Softmax {
    fn type_name(&self) -> &str {
        "Softmax"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("Softmax")?;
        let shape = if x.ndim() == 0 { vec![1] } else { x.shape().to_vec() };
        let axis = self.axis(x.ndim())?;
        let x = x.as_standard_layout();
        let mut out = vec![0f32; x.len()];
        float::softmax(x.as_slice().expect("standard layout"), &shape, axis, &mut out, Isa::active())?;
        Ok(Value::Float(ArrayD::from_shape_vec(x.raw_dim(), out).expect("same length")))
    }

    fn extra_repr(&self) -> String {
        match self.dim {
            Some(d) => format!("dim={d}"),
            None => "dim=None".into(),
        }
    }

    serde_config!();
}

/// How [`Upsample`] interpolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleMode {
    /// Copies the nearest input pixel (`mode='nearest'`).
    Nearest,
    /// Bilinear interpolation (`mode='bilinear'`).
    Bilinear,
}

/// The target of an [`Upsample`]: a fixed output size or scale factors.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Size(Size<2>),
    Scale { values: [f64; 2], scalar: bool },
}

/// The saved configuration of an [`Upsample`].
#[derive(Debug, Serialize, Deserialize)]
struct UpsampleConfig {
    size: Option<Vec<usize>>,
    scalar: bool,
    scale_factor: Option<Vec<f64>>,
    mode: UpsampleMode,
    align_corners: Option<bool>,
}

/// `nn.Upsample` on `[N, C, H, W]`: nearest or bilinear resampling to a size or by scale factors,
/// in f32 or on quantized values (PyTorch's quantized kernels, parameters unchanged).
///
/// ```
/// use qgraph::Module;
/// use qgraph::nn::{Upsample, UpsampleMode};
/// let up = Upsample::scale_factor(2.0).mode(UpsampleMode::Bilinear).align_corners(true);
/// assert_eq!((&up as &dyn Module).to_string(), "Upsample(scale_factor=2.0, mode='bilinear')");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Upsample {
    target: Target,
    mode: UpsampleMode,
    align_corners: Option<bool>,
}

/// Per output coordinate: the two source indices and their weights.
#[derive(Debug, Clone, Copy)]
struct Lerp {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

/// PyTorch's `compute_scales_value<float>`: `1 / scale` when a scale factor is given, else
/// `in / out`.
fn scale_value(scale: Option<f64>, n_in: usize, n_out: usize) -> f32 {
    match scale {
        Some(s) if s > 0.0 => (1.0 / s) as f32,
        _ => n_in as f32 / n_out as f32,
    }
}

/// PyTorch's `nearest_idx`: the source index of output `o`.
fn nearest_index(o: usize, n_in: usize, n_out: usize, scale: Option<f64>) -> usize {
    if n_out == n_in {
        o
    } else if n_out == 2 * n_in {
        o >> 1
    } else {
        ((o as f32 * scale_value(scale, n_in, n_out)).floor() as usize).min(n_in - 1)
    }
}

/// PyTorch's `area_pixel_compute_scale<float>`.
fn linear_scale(n_in: usize, n_out: usize, align_corners: bool, scale: Option<f64>) -> f32 {
    if align_corners {
        if n_out > 1 { (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 }
    } else {
        scale_value(scale, n_in, n_out)
    }
}

/// PyTorch's `compute_source_index_and_lambda` for every output coordinate.
fn lerps(n_in: usize, n_out: usize, align_corners: bool, scale: Option<f64>) -> Vec<Lerp> {
    let ratio = linear_scale(n_in, n_out, align_corners, scale);
    (0..n_out)
        .map(|o| {
            if n_in == n_out {
                return Lerp { i0: o, i1: o, l0: 1.0, l1: 0.0 };
            }
            let real =
                if align_corners { ratio * o as f32 } else { (ratio * (o as f32 + 0.5) - 0.5).max(0.0) };
            let i0 = (real.floor() as usize).min(n_in - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            Lerp { i0, i1: i0 + usize::from(i0 < n_in - 1), l0: 1.0 - l1, l1 }
        })
        .collect()
}

impl Upsample {
    /// Resampling to `size` (`4` or `[4, 5]`), nearest.
    pub fn size(size: impl Into<Size<2>>) -> Self {
        Self { target: Target::Size(size.into()), mode: UpsampleMode::Nearest, align_corners: None }
    }

    /// Resampling by one scale factor for height and width, nearest.
    pub fn scale_factor(scale: f64) -> Self {
        Self {
            target: Target::Scale { values: [scale; 2], scalar: true },
            mode: UpsampleMode::Nearest,
            align_corners: None,
        }
    }

    /// Resampling by `[height, width]` scale factors, nearest.
    pub fn scale_factors(scales: [f64; 2]) -> Self {
        Self {
            target: Target::Scale { values: scales, scalar: false },
            mode: UpsampleMode::Nearest,
            align_corners: None,
        }
    }

    /// The interpolation mode.
    pub fn mode(mut self, mode: UpsampleMode) -> Self {
        self.mode = mode;
        self
    }

    /// Bilinear only: align the corner pixels of input and output (PyTorch's default `False`).
    pub fn align_corners(mut self, align_corners: bool) -> Self {
        self.align_corners = Some(align_corners);
        self
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: UpsampleConfig = record.config()?;
        let target = match (c.size, c.scale_factor) {
            (Some(v), None) => {
                let values: [usize; 2] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| record.tensors.mismatch(format!("size {v:?} needs 2 values")))?;
                check_sizes("Upsample", "size", &values, 1)?;
                Target::Size(if c.scalar { Size::from(values[0]) } else { Size::from(values) })
            }
            (None, Some(v)) => {
                let values: [f64; 2] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| record.tensors.mismatch(format!("scale_factor {v:?} needs 2 values")))?;
                if values.iter().any(|&s| !(s > 0.0 && s <= MAX_SIZE as f64)) {
                    return Err(invalid(
                        "Upsample",
                        "scale_factor",
                        values,
                        "must be positive and at most 2^31 - 1",
                    ));
                }
                Target::Scale { values, scalar: c.scalar }
            }
            _ => return Err(record.tensors.mismatch("exactly one of size and scale_factor".into())),
        };
        Ok(Self { target, mode: c.mode, align_corners: c.align_corners })
    }

    /// The output `[H, W]` for an input `[H, W]` and the scale factors to hand to the kernels
    /// (`floor(in * scale)`, as PyTorch's `compute_output_size`).
    fn plan(&self, h: usize, w: usize) -> GraphResult<([usize; 2], [Option<f64>; 2])> {
        let (out, scales) = match self.target {
            Target::Size(s) => (s.values(), [None, None]),
            Target::Scale { values, .. } => {
                if values.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(invalid("Upsample", "scale_factor", values, "must be positive and finite"));
                }
                ([(h as f64 * values[0]) as usize, (w as f64 * values[1]) as usize], values.map(Some))
            }
        };
        if out.contains(&0) || h == 0 || w == 0 {
            return Err(invalid("Upsample", "output size", out, "input and output sizes must be positive"));
        }
        if self.mode == UpsampleMode::Nearest && self.align_corners.is_some() {
            return Err(invalid(
                "Upsample",
                "align_corners",
                self.align_corners,
                "can only be set with the interpolating modes (bilinear)",
            ));
        }
        Ok((out, scales))
    }

    fn forward_float(
        &self,
        x: &ArrayD<f32>,
        out: [usize; 2],
        scales: [Option<f64>; 2],
    ) -> GraphResult<ArrayD<f32>> {
        let s = x.shape();
        let (h, w) = (s[2], s[3]);
        let [oh, ow] = out;
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let mut y = memory::zeroed("Upsample", &[s[0], s[1], oh, ow])?;
        match self.mode {
            UpsampleMode::Nearest => {
                let ys: Vec<usize> = (0..oh).map(|o| nearest_index(o, h, oh, scales[0])).collect();
                let xs: Vec<usize> = (0..ow).map(|o| nearest_index(o, w, ow, scales[1])).collect();
                for (p, plane) in y.chunks_mut(oh * ow).enumerate() {
                    let src = &x[p * h * w..(p + 1) * h * w];
                    for (oy, row) in plane.chunks_mut(ow).enumerate() {
                        for (v, &ix) in row.iter_mut().zip(&xs) {
                            *v = src[ys[oy] * w + ix];
                        }
                    }
                }
            }
            UpsampleMode::Bilinear => {
                let ac = self.align_corners.unwrap_or(false);
                let (lh, lw) = (lerps(h, oh, ac, scales[0]), lerps(w, ow, ac, scales[1]));
                for (p, plane) in y.chunks_mut(oh * ow).enumerate() {
                    let src = &x[p * h * w..(p + 1) * h * w];
                    for (a, row) in lh.iter().zip(plane.chunks_mut(ow)) {
                        let (r0, r1) = (&src[a.i0 * w..(a.i0 + 1) * w], &src[a.i1 * w..(a.i1 + 1) * w]);
                        for (v, b) in row.iter_mut().zip(&lw) {
                            *v = a.l0 * (b.l0 * r0[b.i0] + b.l1 * r0[b.i1])
                                + a.l1 * (b.l0 * r1[b.i0] + b.l1 * r1[b.i1]);
                        }
                    }
                }
            }
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&[s[0], s[1], oh, ow]), y).expect("length computed above"))
    }

    fn forward_quant(
        &self,
        q: &QuantTensor,
        out: [usize; 2],
        scales: [Option<f64>; 2],
    ) -> GraphResult<QuantTensor> {
        let s = q.shape();
        let (h, w) = (s[2], s[3]);
        let nhwc = [s[0], h, w, s[1]];
        let mut y = memory::zeroed("Upsample", &[s[0], s[1], out[0], out[1]])?;
        let isa = Isa::active();
        // The kernels take output sizes only: they compute PyTorch's indices for an explicit
        // scale factor only where it gives the same indices as the size ratio.
        let ins = [h, w];
        let same = (0..2).all(|d| match self.mode {
            UpsampleMode::Nearest => (0..out[d]).all(|o| {
                nearest_index(o, ins[d], out[d], scales[d]) == nearest_index(o, ins[d], out[d], None)
            }),
            UpsampleMode::Bilinear => {
                let ac = self.align_corners.unwrap_or(false);
                linear_scale(ins[d], out[d], ac, scales[d]) == linear_scale(ins[d], out[d], ac, None)
            }
        });
        if !same {
            return Err(invalid(
                "Upsample",
                "scale_factor",
                scales,
                "on quantized tensors only scale factors whose output size is an exact multiple are \
                 supported; give the output size instead",
            ));
        }
        match self.mode {
            UpsampleMode::Nearest => pool::upsample_nearest2d(q.data(), &nhwc, out, &mut y, isa)?,
            UpsampleMode::Bilinear => pool::upsample_bilinear2d(
                q.kernel_format(),
                q.data(),
                &nhwc,
                q.qparams(),
                out,
                self.align_corners.unwrap_or(false),
                &mut y,
                isa,
            )?,
        };
        Ok(QuantTensor::new(y, vec![s[0], s[1], out[0], out[1]], q.qparams())?
            .with_memory_format(q.memory_format()))
    }
}

impl Module for Upsample {
    fn type_name(&self) -> &str {
        "Upsample"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let s = input.shape()?;
        if s.len() != 4 {
            return Err(GraphError::ShapeMismatch {
                context: "Upsample",
                what: "input rank (N, C, H, W; only 2-D upsampling is supported)",
                got: s.len(),
                expected: 4,
            });
        }
        let (out, scales) = self.plan(s[2], s[3])?;
        match input {
            Value::Float(x) => Ok(Value::Float(self.forward_float(&x, out, scales)?)),
            other => {
                let q = other.into_quant("Upsample")?;
                Ok(Value::Quant(self.forward_quant(&q, out, scales)?))
            }
        }
    }

    fn extra_repr(&self) -> String {
        let target = match self.target {
            Target::Size(s) => format!("size={}", s.repr()),
            Target::Scale { values, scalar: true } => format!("scale_factor={}", py_float(values[0])),
            Target::Scale { values, .. } => {
                format!("scale_factor=({}, {})", py_float(values[0]), py_float(values[1]))
            }
        };
        let mode = match self.mode {
            UpsampleMode::Nearest => "nearest",
            UpsampleMode::Bilinear => "bilinear",
        };
        format!("{target}, mode='{mode}'")
    }

    fn config(&self) -> serde_json::Value {
        let (size, scale_factor, scalar) = match self.target {
            Target::Size(s) => (Some(s.values().to_vec()), None, s.is_scalar()),
            Target::Scale { values, scalar } => (None, Some(values.to_vec()), scalar),
        };
        serde_json::to_value(UpsampleConfig {
            size,
            scalar,
            scale_factor,
            mode: self.mode,
            align_corners: self.align_corners,
        })
        .expect("plain data")
    }
}
