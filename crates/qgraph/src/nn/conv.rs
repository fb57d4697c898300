//! `nn.Conv1d` / `Conv2d` / `Conv3d`: one [`Conv`] type for 1-3 spatial dimensions, built with
//! [`Conv1d::new`], [`Conv2d::new`] or [`Conv3d::new`] and the builder's setters.

use ndarray::{ArrayD, Axis, IxDyn};
use qkernels::conv::PaddingMode;
use qkernels::{Isa, float};
use serde::{Deserialize, Serialize};

use super::args::{check_sizes, py_tuple};
use super::init::{default_bound, uniform};
use crate::record::{Record, Tensors};
use crate::value::standard_layout;
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// PyTorch's class names, by spatial dimensions (1, 2, 3).
const NAMES: [&str; 3] = ["Conv1d", "Conv2d", "Conv3d"];

/// The constructor arguments of a convolution (PyTorch's `ConvNd` attributes), shared by the
/// float and the quantized forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvOptions {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size per spatial axis (1-3 entries, outermost first).
    pub kernel_size: Vec<usize>,
    /// Stride per axis.
    pub stride: Vec<usize>,
    /// Padding per axis (both sides).
    pub padding: Vec<usize>,
    /// Dilation per axis.
    pub dilation: Vec<usize>,
    /// Groups; divides both channel counts.
    pub groups: usize,
    /// True if the layer has a bias.
    pub bias: bool,
    /// `"zeros"` or `"reflect"` padding.
    #[serde(with = "padding_mode_name")]
    pub padding_mode: PaddingMode,
}

/// PyTorch's spelling of a padding mode, for saving.
mod padding_mode_name {
    use qkernels::conv::PaddingMode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn name(mode: PaddingMode) -> &'static str {
        match mode {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
        }
    }

    pub fn serialize<S: Serializer>(mode: &PaddingMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*mode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PaddingMode, D::Error> {
        match String::deserialize(d)?.as_str() {
            "zeros" => Ok(PaddingMode::Zeros),
            "reflect" => Ok(PaddingMode::Reflect),
            other => Err(D::Error::custom(format!("padding_mode {other:?}: use \"zeros\" or \"reflect\""))),
        }
    }
}

impl ConvOptions {
    /// The number of spatial dimensions (1, 2 or 3).
    pub fn dims(&self) -> usize {
        self.kernel_size.len()
    }

    /// PyTorch's class name of the float layer (`Conv2d`).
    pub fn type_name(&self) -> &'static str {
        NAMES[self.dims().clamp(1, 3) - 1]
    }

    /// The weight shape `[out_channels, in_channels / groups, *kernel_size]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.out_channels, self.in_channels / self.groups.max(1)];
        shape.extend_from_slice(&self.kernel_size);
        shape
    }

    /// Checks the arguments as PyTorch's constructor does (and nonzero sizes).
    pub fn validate(&self) -> GraphResult<()> {
        let name = self.type_name();
        let d = self.dims();
        if !(1..=3).contains(&d) {
            return Err(invalid(name, "kernel_size", &self.kernel_size, "give 1, 2 or 3 kernel sizes"));
        }
        for (what, v) in [("stride", &self.stride), ("padding", &self.padding), ("dilation", &self.dilation)]
        {
            if v.len() != d {
                return Err(invalid(name, what, v, format!("needs {d} entries, one per kernel axis")));
            }
        }
        for (what, v, min) in [
            ("kernel_size", &self.kernel_size, 1),
            ("stride", &self.stride, 1),
            ("padding", &self.padding, 0),
            ("dilation", &self.dilation, 1),
        ] {
            check_sizes(name, what, v, min)?;
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            let channels = (self.in_channels, self.out_channels);
            return Err(invalid(name, "(in_channels, out_channels)", channels, "must be positive"));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(invalid(
                name,
                "groups",
                self.groups,
                format!(
                    "must be positive and divide in_channels ({}) and out_channels ({})",
                    self.in_channels, self.out_channels
                ),
            ));
        }
        Ok(())
    }

    /// The geometry for `qkernels::conv`.
    pub fn kernel_params(&self) -> qkernels::conv::ConvParams {
        qkernels::conv::ConvParams::new(self.in_channels, self.out_channels, &self.kernel_size)
            .stride(&self.stride)
            .padding(&self.padding)
            .dilation(&self.dilation)
            .groups(self.groups)
            .padding_mode(self.padding_mode)
    }

    /// `in, out, kernel_size=(..), stride=(..)`: the start of both printouts.
    pub(crate) fn repr_head(&self) -> String {
        format!(
            "{}, {}, kernel_size={}, stride={}",
            self.in_channels,
            self.out_channels,
            py_tuple(&self.kernel_size),
            py_tuple(&self.stride)
        )
    }

    /// `, padding=.., dilation=.., groups=.., bias=False`, each only when not the default (the
    /// end of both printouts, as PyTorch's `extra_repr`).
    pub(crate) fn repr_tail(&self) -> String {
        let mut s = String::new();
        if self.padding.iter().any(|&p| p != 0) {
            s += &format!(", padding={}", py_tuple(&self.padding));
        }
        if self.dilation.iter().any(|&d| d != 1) {
            s += &format!(", dilation={}", py_tuple(&self.dilation));
        }
        if self.groups != 1 {
            s += &format!(", groups={}", self.groups);
        }
        if !self.bias {
            s += ", bias=False";
        }
        s
    }

    /// Checks a `[N, C, spatial...]` input shape against these options.
    pub(crate) fn check_input(&self, shape: &[usize]) -> GraphResult<()> {
        let name = self.type_name();
        if shape.len() != self.dims() + 2 {
            return Err(GraphError::ShapeMismatch {
                context: name,
                what: "input rank (N, C, spatial...)",
                got: shape.len(),
                expected: self.dims() + 2,
            });
        }
        if shape[1] != self.in_channels {
            return Err(GraphError::ShapeMismatch {
                context: name,
                what: "input channels",
                got: shape[1],
                expected: self.in_channels,
            });
        }
        if self.padding_mode == PaddingMode::Reflect {
            for (&p, &len) in self.padding.iter().zip(&shape[2..]) {
                if p >= len {
                    return Err(invalid(
                        name,
                        "padding",
                        &self.padding,
                        format!("reflect padding must be smaller than the input size {:?}", &shape[2..]),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Builds a [`Conv`] of `D` spatial dimensions; see [`Conv2d`].
#[derive(Debug, Clone)]
pub struct ConvBuilder<const D: usize> {
    options: ConvOptions,
}

/// `nn.Conv1d(in, out, [k])` builder.
pub type Conv1d = ConvBuilder<1>;
/// `nn.Conv2d(in, out, [kh, kw])` builder.
///
/// ```
/// use qgraph::Module;
/// use qgraph::nn::Conv2d;
/// let conv = Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build()?;
/// assert_eq!((&conv as &dyn Module).to_string(), "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");
/// assert!(Conv2d::new(3, 16, [3, 3]).groups(2).build().is_err());
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub type Conv2d = ConvBuilder<2>;
/// `nn.Conv3d(in, out, [kd, kh, kw])` builder.
pub type Conv3d = ConvBuilder<3>;

impl<const D: usize> ConvBuilder<D> {
    /// A convolution from `in_channels` to `out_channels` with `kernel_size`, and PyTorch's
    /// defaults: stride 1, no padding, dilation 1, 1 group, a bias, zero padding.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: [usize; D]) -> Self {
        Self {
            options: ConvOptions {
                in_channels,
                out_channels,
                kernel_size: kernel_size.to_vec(),
                stride: vec![1; D],
                padding: vec![0; D],
                dilation: vec![1; D],
                groups: 1,
                bias: true,
                padding_mode: PaddingMode::Zeros,
            },
        }
    }

    /// Sets the stride.
    pub fn stride(mut self, stride: [usize; D]) -> Self {
        self.options.stride = stride.to_vec();
        self
    }

    /// Sets the padding (both sides).
    pub fn padding(mut self, padding: [usize; D]) -> Self {
        self.options.padding = padding.to_vec();
        self
    }

    /// Sets the dilation.
    pub fn dilation(mut self, dilation: [usize; D]) -> Self {
        self.options.dilation = dilation.to_vec();
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.options.groups = groups;
        self
    }

    /// With or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.options.bias = bias;
        self
    }

    /// Sets the padding mode (`Zeros` or `Reflect`).
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.options.padding_mode = mode;
        self
    }

    /// The layer, with PyTorch's default initialisation bounds drawn from the
    /// [`manual_seed`](super::manual_seed) stream; an error for inconsistent arguments.
    pub fn build(self) -> GraphResult<Conv> {
        Conv::with_options(self.options)
    }
}

/// `nn.Conv1d` / `Conv2d` / `Conv3d` in f32 (NCHW), in training mode when built (as PyTorch).
#[derive(Debug, Clone)]
pub struct Conv {
    options: ConvOptions,
    weight: ArrayD<f32>,
    bias: Option<ArrayD<f32>>,
    training: bool,
}

impl Conv {
    /// A convolution with `options` and default-initialised parameters.
    pub fn with_options(options: ConvOptions) -> GraphResult<Self> {
        options.validate()?;
        let shape = options.weight_shape();
        memory::checked_numel(options.type_name(), &shape)?;
        let fan_in: usize = shape[1..].iter().product();
        let bound = default_bound(fan_in);
        let weight = uniform(&shape, bound);
        let bias = options.bias.then(|| uniform(&[options.out_channels], bound));
        Ok(Self { options, weight, bias, training: true })
    }

    /// The options.
    pub fn options(&self) -> &ConvOptions {
        &self.options
    }

    /// The weight `[out_channels, in_channels / groups, *kernel_size]`.
    pub fn weight(&self) -> &ArrayD<f32> {
        &self.weight
    }

    /// The bias `[out_channels]`, if any.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }

    /// Replaces weight and bias (shapes checked; a bias may be added or removed, as batch-norm
    /// folding does).
    pub fn set_weight_bias(&mut self, weight: ArrayD<f32>, bias: Option<ArrayD<f32>>) -> GraphResult<()> {
        let shape = self.options.weight_shape();
        self.bias = check_weight_bias(self.options.type_name(), weight.shape(), &shape, bias)?;
        self.options.bias = self.bias.is_some();
        self.weight = weight.as_standard_layout().into_owned();
        Ok(())
    }

    /// The number of spatial dimensions.
    pub fn dims(&self) -> usize {
        self.options.dims()
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.options.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.options.out_channels
    }

    /// Rebuilds a saved convolution (in eval mode).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: ConvOptions = record.config()?;
        options.validate()?;
        let (weight, bias) = read_weight_bias(&record.tensors, &options.weight_shape(), options.bias)?;
        Ok(Self { options, weight, bias, training: false })
    }

    fn run(&self, x: ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
        self.options.check_input(x.shape())?;
        let x = standard_layout(x);
        let (x, padding) = match self.options.padding_mode {
            PaddingMode::Zeros => (x, self.options.padding.clone()),
            PaddingMode::Reflect => (reflect_pad(&x, &self.options.padding), vec![0; self.dims()]),
        };
        match self.dims() {
            1 => self.run_dims::<1>(&x, &padding),
            2 => self.run_dims::<2>(&x, &padding),
            _ => self.run_dims::<3>(&x, &padding),
        }
    }

    fn run_dims<const D: usize>(&self, x: &ArrayD<f32>, padding: &[usize]) -> GraphResult<ArrayD<f32>> {
        let o = &self.options;
        let arr = |v: &[usize]| -> [usize; D] { v.try_into().expect("lengths validated at construction") };
        let params = float::ConvParams::<D> {
            stride: arr(&o.stride),
            padding: arr(padding),
            dilation: arr(&o.dilation),
            groups: o.groups,
        };
        let shape = float::conv_output_shape(x.shape(), self.weight.shape(), &params)?;
        let mut out = memory::zeroed(o.type_name(), &shape)?;
        float::ConvScratch::with_thread_local(|scratch| {
            float::conv::<D>(
                x.as_slice().expect("standard layout"),
                x.shape(),
                self.weight.as_slice().expect("standard layout"),
                self.weight.shape(),
                self.bias.as_ref().map(|b| b.as_slice().expect("standard layout")),
                &params,
                &mut out,
                scratch,
                Isa::active(),
            )
        })?;
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("length from conv_output_shape"))
    }
}

/// Checks a parameter shape.
pub(crate) fn check_shape(
    context: &'static str,
    what: &'static str,
    got: &[usize],
    expected: &[usize],
) -> GraphResult<()> {
    if got == expected {
        return Ok(());
    }
    Err(GraphError::Mismatch {
        context,
        reason: format!("{what} has shape {got:?} but the layer needs {expected:?}"),
    })
}

/// Checks a layer's weight shape against `weight_shape` and its bias, if any, against one value
/// per output channel (`weight_shape[0]`); returns the bias in standard layout. `name` is the
/// layer's, for errors.
pub(crate) fn check_weight_bias(
    name: &'static str,
    weight: &[usize],
    weight_shape: &[usize],
    bias: Option<ArrayD<f32>>,
) -> GraphResult<Option<ArrayD<f32>>> {
    check_shape(name, "weight", weight, weight_shape)?;
    if let Some(b) = &bias {
        check_shape(name, "bias", b.shape(), &weight_shape[..1])?;
    }
    Ok(bias.map(|b| b.as_standard_layout().into_owned()))
}

/// The saved `weight` of `weight_shape` and, if `bias`, the `bias` of one value per output
/// channel (`weight_shape[0]`).
pub(crate) fn read_weight_bias(
    t: &Tensors<'_>,
    weight_shape: &[usize],
    bias: bool,
) -> GraphResult<(ArrayD<f32>, Option<ArrayD<f32>>)> {
    let weight = t.shaped::<f32>("weight", weight_shape)?;
    let bias = if bias { Some(t.shaped::<f32>("bias", &weight_shape[..1])?) } else { None };
    Ok((weight, bias))
}

/// `weight` and, if any, `bias`, as a layer's parameters.
pub(crate) fn weight_bias_params<'a>(
    weight: &'a ArrayD<f32>,
    bias: Option<&'a ArrayD<f32>>,
) -> Vec<(&'static str, &'a ArrayD<f32>)> {
    let mut p = vec![("weight", weight)];
    p.extend(bias.map(|b| ("bias", b)));
    p
}

/// [`weight_bias_params`], mutable.
pub(crate) fn weight_bias_params_mut<'a>(
    weight: &'a mut ArrayD<f32>,
    bias: Option<&'a mut ArrayD<f32>>,
) -> Vec<(&'static str, &'a mut ArrayD<f32>)> {
    let mut p = vec![("weight", weight)];
    p.extend(bias.map(|b| ("bias", b)));
    p
}

/// Reflect padding of the spatial axes of an NCHW tensor (PyTorch's `F.pad(mode="reflect")`):
/// `x[-i] = x[i]`, `x[len - 1 + i] = x[len - 1 - i]`; each padding must be below its size.
fn reflect_pad(x: &ArrayD<f32>, padding: &[usize]) -> ArrayD<f32> {
    let mut out = x.clone();
    for (ax, &p) in padding.iter().enumerate() {
        let len = x.shape()[ax + 2] as isize;
        let source = (0..len + 2 * p as isize)
            .map(|i| {
                let j = i - p as isize;
                (if j < 0 {
                    -j
                } else if j >= len {
                    2 * (len - 1) - j
                } else {
                    j
                }) as usize
            })
            .collect::<Vec<_>>();
        out = out.select(Axis(ax + 2), &source);
    }
    // `select` keeps the input's axis order in memory, not necessarily row-major.
    out.as_standard_layout().into_owned()
}

impl Module for Conv {
    fn type_name(&self) -> &str {
        self.options.type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float(self.type_name())?;
        Ok(Value::Float(self.run(x)?))
    }

    fn extra_repr(&self) -> String {
        let mut s = self.options.repr_head() + &self.options.repr_tail();
        if self.options.padding_mode != PaddingMode::Zeros {
            s += &format!(", padding_mode={}", padding_mode_name::name(self.options.padding_mode));
        }
        s
    }

    weight_bias_layer!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_pad_mirrors_without_the_edge() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 4]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = reflect_pad(&x, &[2]);
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
    }
}
