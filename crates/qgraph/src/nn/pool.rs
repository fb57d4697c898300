//! Pooling: `MaxPool1d/2d/3d` and `AvgPool2d`, in f32 on float values and with PyTorch's
//! quantized kernels on quantized values (output parameters are the input's).

use ndarray::{ArrayD, IxDyn};
use qkernels::pool::{self, Window};
use qkernels::{Isa, float};
use serde::{Deserialize, Serialize};

use super::args::{py_bool, py_tuple};
use crate::record::Record;
use crate::value::QuantTensor;
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// A size argument as PyTorch keeps it: one integer for every dimension (`kernel_size=2`) or one
/// per dimension (`kernel_size=(2, 3)`). Both run the same; they print differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size<const D: usize> {
    values: [usize; D],
    scalar: bool,
}

impl<const D: usize> Size<D> {
    /// The size per dimension.
    pub fn values(&self) -> [usize; D] {
        self.values
    }

    /// True if given as one integer for every dimension.
    pub(crate) fn is_scalar(&self) -> bool {
        self.scalar
    }

    /// As Python prints it: `2` or `(2, 3)`.
    pub(crate) fn repr(&self) -> String {
        match (self.scalar, self.values.first()) {
            (true, Some(v)) => v.to_string(),
            _ => py_tuple(&self.values),
        }
    }

    fn to_saved(self) -> SavedSize {
        match (self.scalar, self.values.first()) {
            (true, Some(&v)) => SavedSize::Int(v),
            _ => SavedSize::Tuple(self.values.to_vec()),
        }
    }
}

impl<const D: usize> From<usize> for Size<D> {
    /// The same size in every dimension, printed as one integer.
    fn from(v: usize) -> Self {
        Self { values: [v; D], scalar: true }
    }
}

impl<const D: usize> From<[usize; D]> for Size<D> {
    /// One size per dimension, printed as a tuple.
    fn from(values: [usize; D]) -> Self {
        Self { values, scalar: false }
    }
}

/// A [`Size`] in a saved configuration: an integer or a list, as in Python.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum SavedSize {
    Int(usize),
    Tuple(Vec<usize>),
}

impl SavedSize {
    fn load<const D: usize>(self, what: &'static str) -> GraphResult<Size<D>> {
        match self {
            SavedSize::Int(v) => Ok(Size::from(v)),
            SavedSize::Tuple(v) => {
                let values: [usize; D] = v.as_slice().try_into().map_err(|_| {
                    invalid("load", what, &v, format!("needs {D} values, one per spatial dimension"))
                })?;
                Ok(Size::from(values))
            }
        }
    }
}

/// The rank check every pooling module makes: `[N, C, spatial...]` with `D` spatial dims.
fn check_rank(context: &'static str, shape: &[usize], d: usize) -> GraphResult<()> {
    if shape.len() != d + 2 {
        return Err(GraphError::ShapeMismatch {
            context,
            what: "input rank (N, C, spatial...; unbatched inputs are not supported)",
            got: shape.len(),
            expected: d + 2,
        });
    }
    Ok(())
}

/// `nn.MaxPool1d`, `nn.MaxPool2d`, `nn.MaxPool3d` (`D` = 1, 2, 3): the maximum over each window,
/// padding ignored. Build with [`MaxPool::new`] and the setters:
///
/// ```
/// use qgraph::Module;
/// use qgraph::nn::MaxPool2d;
/// let pool = MaxPool2d::new(3).stride(2).padding(1);
/// assert_eq!((&pool as &dyn Module).to_string(),
///            "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool<const D: usize> {
    kernel_size: Size<D>,
    stride: Size<D>,
    padding: Size<D>,
    dilation: Size<D>,
    ceil_mode: bool,
}

/// `nn.MaxPool1d`.
pub type MaxPool1d = MaxPool<1>;
/// `nn.MaxPool2d`.
pub type MaxPool2d = MaxPool<2>;
/// `nn.MaxPool3d`.
pub type MaxPool3d = MaxPool<3>;

/// The saved configuration of a [`MaxPool`].
#[derive(Debug, Serialize, Deserialize)]
struct MaxPoolConfig {
    kernel_size: SavedSize,
    stride: SavedSize,
    padding: SavedSize,
    dilation: SavedSize,
    ceil_mode: bool,
}

impl<const D: usize> MaxPool<D> {
    /// A window of `kernel_size` (`2` or `[2, 3]`) with stride `kernel_size`, padding 0,
    /// dilation 1, floor mode: PyTorch's defaults.
    pub fn new(kernel_size: impl Into<Size<D>>) -> Self {
        let kernel_size = kernel_size.into();
        Self { kernel_size, stride: kernel_size, padding: 0.into(), dilation: 1.into(), ceil_mode: false }
    }

    /// The stride.
    pub fn stride(mut self, stride: impl Into<Size<D>>) -> Self {
        self.stride = stride.into();
        self
    }

    /// Implicit padding on both sides (at most half the kernel).
    pub fn padding(mut self, padding: impl Into<Size<D>>) -> Self {
        self.padding = padding.into();
        self
    }

    /// The dilation of the window.
    pub fn dilation(mut self, dilation: impl Into<Size<D>>) -> Self {
        self.dilation = dilation.into();
        self
    }

    /// Round the output size up instead of down.
    pub fn ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// The kernel's window.
    pub fn window(&self) -> Window<D> {
        Window {
            kernel: self.kernel_size.values,
            stride: self.stride.values,
            padding: self.padding.values,
            dilation: self.dilation.values,
            ceil_mode: self.ceil_mode,
        }
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: MaxPoolConfig = record.config()?;
        let pool = Self {
            kernel_size: c.kernel_size.load("kernel_size")?,
            stride: c.stride.load("stride")?,
            padding: c.padding.load("padding")?,
            dilation: c.dilation.load("dilation")?,
            ceil_mode: c.ceil_mode,
        };
        pool.window().validate(pool.name())?;
        Ok(pool)
    }

    fn name(&self) -> &'static str {
        match D {
            1 => "MaxPool1d",
            2 => "MaxPool2d",
            _ => "MaxPool3d",
        }
    }

    /// Max pooling in f32 of an NC(D)HW tensor: 1-D and 2-D through `qkernels::float::pool2d`
    /// (1-D as height 1), 3-D directly.
    fn forward_float(&self, x: ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
        let shape = x.shape().to_vec();
        let x = x.as_standard_layout();
        let data = x.as_slice().expect("standard layout");
        let w = self.window();
        let Some(w2) = as_2d(&w) else { return max_pool3d_f32(data, &shape, &w, self.name()) };
        let shape4 = if D == 1 { vec![shape[0], shape[1], 1, shape[2]] } else { shape.clone() };
        let [oh, ow] = w2.output_size(self.name(), [shape4[2], shape4[3]])?;
        let oshape = if D == 1 { vec![shape[0], shape[1], ow] } else { vec![shape[0], shape[1], oh, ow] };
        let mut out = memory::zeroed(self.name(), &oshape)?;
        float::pool2d(data, &shape4, &w2, float::PoolKind::Max, &mut out, Isa::active())?;
        Ok(ArrayD::from_shape_vec(IxDyn(&oshape), out).expect("length from the kernel"))
    }
}

/// A 1-D window as a 2-D one of height 1, a 2-D window as it is; `None` for 3-D.
fn as_2d<const D: usize>(w: &Window<D>) -> Option<Window<2>> {
    let pick = |a: &[usize; D], fill: usize| if D == 1 { [fill, a[0]] } else { [a[0], a[D - 1]] };
    (D <= 2).then(|| Window {
        kernel: pick(&w.kernel, 1),
        stride: pick(&w.stride, 1),
        padding: pick(&w.padding, 0),
        dilation: pick(&w.dilation, 1),
        ceil_mode: w.ceil_mode,
    })
}

/// 3-D max pooling in f32 of `[N, C, D, H, W]` (NaN propagates, as in PyTorch).
fn max_pool3d_f32<const D: usize>(
    x: &[f32],
    shape: &[usize],
    w: &Window<D>,
    name: &'static str,
) -> GraphResult<ArrayD<f32>> {
    let sp: [usize; D] = shape[2..].try_into().expect("rank checked");
    let osp = w.output_size(name, sp)?;
    let mut oshape = shape[..2].to_vec();
    oshape.extend_from_slice(&osp);
    let mut out = memory::zeroed(name, &oshape)?;
    out.fill(f32::NEG_INFINITY);
    let (isz, osz): (usize, usize) = (sp.iter().product(), osp.iter().product());
    for (pl, y) in out.chunks_mut(osz.max(1)).enumerate() {
        let xp = &x[pl * isz..(pl + 1) * isz];
        for (o, v) in y.iter_mut().enumerate() {
            // Output coordinates, last dimension fastest.
            let mut rest = o;
            let mut oc = [0usize; D];
            for d in (0..D).rev() {
                oc[d] = rest % osp[d];
                rest /= osp[d];
            }
            // Only the taps inside the input: a huge kernel with a huge padding costs no more.
            let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|d| w.taps_inside(d, oc[d], sp[d]));
            let taps: usize = ranges.iter().map(|r| r.len()).product();
            for t in 0..taps {
                let (mut rest, mut idx) = (t, 0usize);
                for d in (0..D).rev() {
                    let k = ranges[d].start + rest % ranges[d].len();
                    rest /= ranges[d].len();
                    let i = oc[d] * w.stride[d] + k * w.dilation[d] - w.padding[d];
                    let stride: usize = sp[d + 1..].iter().product();
                    idx += i * stride;
                }
                let e = xp[idx];
                if e > *v || e.is_nan() {
                    *v = e;
                }
            }
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&oshape), out).expect("length computed above"))
}

impl<const D: usize> Module for MaxPool<D> {
    fn type_name(&self) -> &str {
        self.name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        check_rank(self.name(), input.shape()?, D)?;
        match input {
            Value::Float(x) => Ok(Value::Float(self.forward_float(x)?)),
            other => {
                let q = other.into_quant(self.name())?;
                let s = q.shape();
                let mut stored = vec![s[0]];
                stored.extend_from_slice(&s[2..]);
                stored.push(s[1]);
                let osp = self.window().output_size(self.name(), s[2..].try_into().expect("rank checked"))?;
                let mut oshape = s[..2].to_vec();
                oshape.extend_from_slice(&osp);
                let mut out = memory::zeroed(self.name(), &oshape)?;
                pool::max_pool::<u8, D>(q.data(), &stored, &self.window(), &mut out, Isa::active())?;
                Ok(Value::Quant(
                    QuantTensor::new(out, oshape, q.qparams())?.with_memory_format(q.memory_format()),
                ))
            }
        }
    }

    fn extra_repr(&self) -> String {
        format!(
            "kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={}",
            self.kernel_size.repr(),
            self.stride.repr(),
            self.padding.repr(),
            self.dilation.repr(),
            py_bool(self.ceil_mode)
        )
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(MaxPoolConfig {
            kernel_size: self.kernel_size.to_saved(),
            stride: self.stride.to_saved(),
            padding: self.padding.to_saved(),
            dilation: self.dilation.to_saved(),
            ceil_mode: self.ceil_mode,
        })
        .expect("plain data")
    }
}

/// `nn.AvgPool2d`: the mean over each window, in f32 or with PyTorch's quantized NHWC kernel.
///
/// ```
/// use qgraph::Module;
/// use qgraph::nn::AvgPool2d;
/// let pool = AvgPool2d::new(2);
/// assert_eq!((&pool as &dyn Module).to_string(), "AvgPool2d(kernel_size=2, stride=2, padding=0)");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AvgPool2d {
    kernel_size: Size<2>,
    stride: Size<2>,
    padding: Size<2>,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<i64>,
}

/// The saved configuration of an [`AvgPool2d`].
#[derive(Debug, Serialize, Deserialize)]
struct AvgPoolConfig {
    kernel_size: SavedSize,
    stride: SavedSize,
    padding: SavedSize,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<i64>,
}

impl AvgPool2d {
    /// A window of `kernel_size` with stride `kernel_size`, no padding, floor mode, padding
    /// counted in the divisor: PyTorch's defaults.
    pub fn new(kernel_size: impl Into<Size<2>>) -> Self {
        let kernel_size = kernel_size.into();
        Self {
            kernel_size,
            stride: kernel_size,
            padding: 0.into(),
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// The stride.
    pub fn stride(mut self, stride: impl Into<Size<2>>) -> Self {
        self.stride = stride.into();
        self
    }

    /// Implicit zero padding on both sides (at most half the kernel).
    pub fn padding(mut self, padding: impl Into<Size<2>>) -> Self {
        self.padding = padding.into();
        self
    }

    /// Round the output size up instead of down.
    pub fn ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Count padding positions in the divisor (PyTorch's default `True`).
    pub fn count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// Divide by this instead of the window size (non-zero; checked when the module runs).
    pub fn divisor_override(mut self, divisor: Option<i64>) -> Self {
        self.divisor_override = divisor;
        self
    }

    /// The kernel's options.
    pub fn options(&self) -> pool::AvgPool2d {
        pool::AvgPool2d {
            window: Window {
                kernel: self.kernel_size.values,
                stride: self.stride.values,
                padding: self.padding.values,
                dilation: [1, 1],
                ceil_mode: self.ceil_mode,
            },
            count_include_pad: self.count_include_pad,
            divisor_override: self.divisor_override,
        }
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: AvgPoolConfig = record.config()?;
        let pool = Self {
            kernel_size: c.kernel_size.load("kernel_size")?,
            stride: c.stride.load("stride")?,
            padding: c.padding.load("padding")?,
            ceil_mode: c.ceil_mode,
            count_include_pad: c.count_include_pad,
            divisor_override: c.divisor_override,
        };
        pool.options().window.validate("AvgPool2d")?;
        if pool.divisor_override == Some(0) {
            return Err(invalid("AvgPool2d", "divisor_override", 0, "must be non-zero (or None)"));
        }
        Ok(pool)
    }
}

impl Module for AvgPool2d {
    fn type_name(&self) -> &str {
        "AvgPool2d"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        const NAME: &str = "AvgPool2d";
        check_rank(NAME, input.shape()?, 2)?;
        let opts = self.options();
        let s = input.shape()?.to_vec();
        let [oh, ow] = opts.window.output_size(NAME, [s[2], s[3]])?;
        let oshape = vec![s[0], s[1], oh, ow];
        let isa = Isa::active();
        match input {
            Value::Float(x) => {
                let x = x.as_standard_layout();
                let kind = float::PoolKind::Avg {
                    count_include_pad: opts.count_include_pad,
                    divisor_override: opts.divisor_override,
                };
                let mut out = memory::zeroed(NAME, &oshape)?;
                float::pool2d(x.as_slice().expect("standard layout"), &s, &opts.window, kind, &mut out, isa)?;
                Ok(Value::Float(ArrayD::from_shape_vec(IxDyn(&oshape), out).expect("length")))
            }
            other => {
                let q = other.into_quant(NAME)?;
                let mut out = memory::zeroed(NAME, &oshape)?;
                let nhwc = [s[0], s[2], s[3], s[1]];
                pool::avg_pool2d(q.kernel_format(), q.data(), &nhwc, q.qparams(), &opts, &mut out, isa)?;
                Ok(Value::Quant(
                    QuantTensor::new(out, oshape, q.qparams())?.with_memory_format(q.memory_format()),
                ))
            }
        }
    }

    fn extra_repr(&self) -> String {
        format!(
            "kernel_size={}, stride={}, padding={}",
            self.kernel_size.repr(),
            self.stride.repr(),
            self.padding.repr()
        )
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(AvgPoolConfig {
            kernel_size: self.kernel_size.to_saved(),
            stride: self.stride.to_saved(),
            padding: self.padding.to_saved(),
            ceil_mode: self.ceil_mode,
            count_include_pad: self.count_include_pad,
            divisor_override: self.divisor_override,
        })
        .expect("plain data")
    }
}
