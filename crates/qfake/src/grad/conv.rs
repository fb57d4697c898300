//! Convolution and linear layers: forward with a given weight, and the gradients of input,
//! weight and bias.

use ndarray::{Array2, ArrayD, Axis, Ix2, IxDyn};
use qgraph::nn::{Conv, ConvOptions};
use qgraph::{Module, Value};
use qkernels::conv::PaddingMode;

use crate::fake_quantize::{QFakeResult, invalid};

/// Which gradients [`conv_backward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNeeds {
    /// The input's.
    pub input: bool,
    /// The weight's.
    pub weight: bool,
    /// The bias's.
    pub bias: bool,
}

/// The gradients [`conv_backward`] computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGrads {
    /// Of the input.
    pub input: Option<ArrayD<f32>>,
    /// Of the weight.
    pub weight: Option<ArrayD<f32>>,
    /// Of the bias.
    pub bias: Option<ArrayD<f32>>,
}

/// The convolution `options` describes, run with `weight` and `bias` (the same kernel as
/// `qgraph::nn::Conv`'s forward).
pub fn conv_forward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    options: &ConvOptions,
) -> QFakeResult<ArrayD<f32>> {
    let mut conv = Conv::with_options(ConvOptions { bias: bias.is_some(), ..options.clone() })?;
    conv.set_weight_bias(weight.clone(), bias.cloned())?;
    conv.forward(Value::Float(input.clone()))?.into_float("conv")
}

/// Sizes of a convolution with every spatial rank padded to 3 (leading 1s).
struct Geometry {
    n: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
}

fn pad3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

impl Geometry {
    fn new(input: &[usize], output: &[usize], options: &ConvOptions) -> QFakeResult<Self> {
        if options.padding_mode != PaddingMode::Zeros {
            return Err(invalid(
                "conv_backward",
                "padding_mode",
                options.padding_mode,
                "only zeros padding trains",
            ));
        }
        Ok(Self {
            n: input[0],
            cin: options.in_channels,
            cout: options.out_channels,
            groups: options.groups,
            input: pad3(&input[2..], 1),
            output: pad3(&output[2..], 1),
            kernel: pad3(&options.kernel_size, 1),
            stride: pad3(&options.stride, 1),
            padding: pad3(&options.padding, 0),
            dilation: pad3(&options.dilation, 1),
        })
    }

    fn taps(&self) -> usize {
        self.kernel.iter().product::<usize>() * self.cin / self.groups
    }

    fn positions(&self) -> usize {
        self.output.iter().product()
    }

    /// For each tap (ci within the group, kernel offset) and output position, the input index
    /// (within one image and group), or `None` in the padding.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [id, ih, iw] = self.input;
        let [od, oh, ow] = self.output;
        let [kd, kh, kw] = self.kernel;
        let cin_g = self.cin / self.groups;
        let mut tap = 0;
        for ci in 0..cin_g {
            for a in 0..kd {
                for b in 0..kh {
                    for c in 0..kw {
                        let mut pos = 0;
                        for z in 0..od {
                            let zi = (z * self.stride[0] + a * self.dilation[0]) as isize
                                - self.padding[0] as isize;
                            for y in 0..oh {
                                let yi = (y * self.stride[1] + b * self.dilation[1]) as isize
                                    - self.padding[1] as isize;
                                for x in 0..ow {
                                    let xi = (x * self.stride[2] + c * self.dilation[2]) as isize
                                        - self.padding[2] as isize;
                                    if (0..id as isize).contains(&zi)
                                        && (0..ih as isize).contains(&yi)
                                        && (0..iw as isize).contains(&xi)
                                    {
                                        let idx =
                                            ((ci * id + zi as usize) * ih + yi as usize) * iw + xi as usize;
                                        f(tap, pos, idx);
                                    }
                                    pos += 1;
                                }
                            }
                        }
                        tap += 1;
                    }
                }
            }
        }
    }
}

/// The gradients of a convolution (`options`, zeros padding) run on `input` with `weight`, for
/// `grad_output`: im2col of each image and group, then matrix products.
pub fn conv_backward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    options: &ConvOptions,
    grad_output: &ArrayD<f32>,
    needs: ConvNeeds,
) -> QFakeResult<ConvGrads> {
    let g = Geometry::new(input.shape(), grad_output.shape(), options)?;
    if grad_output.shape()[..2] != [g.n, g.cout] || weight.shape() != options.weight_shape().as_slice() {
        return Err(invalid(
            "conv_backward",
            "grad_output shape",
            grad_output.shape(),
            "must be the forward output's",
        ));
    }
    let input = input.as_standard_layout();
    let grad_output = grad_output.as_standard_layout();
    let (taps, positions) = (g.taps(), g.positions());
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let image = g.cin * g.input.iter().product::<usize>();
    let group_in = cin_g * g.input.iter().product::<usize>();
    let w2 = weight
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[g.cout, taps]))
        .expect("shape");
    let w2 = w2.into_dimensionality::<Ix2>().expect("rank 2");
    let mut grad_weight = Array2::<f32>::zeros((g.cout, taps));
    let mut grad_input = needs.input.then(|| vec![0f32; input.len()]);
    let x = input.as_slice().expect("standard layout");
    let go = grad_output.as_slice().expect("standard layout");
    for n in 0..g.n {
        for grp in 0..g.groups {
            let base = n * image + grp * group_in;
            let gy = Array2::from_shape_fn((cout_g, positions), |(co, p)| {
                go[(n * g.cout + grp * cout_g + co) * positions + p]
            });
            if needs.weight {
                let mut cols = Array2::<f32>::zeros((taps, positions));
                g.for_each_tap(|tap, pos, idx| cols[[tap, pos]] = x[base + idx]);
                let gw = gy.dot(&cols.t());
                grad_weight.slice_mut(ndarray::s![grp * cout_g..(grp + 1) * cout_g, ..]).scaled_add(1.0, &gw);
            }
            if let Some(gi) = grad_input.as_mut() {
                let w = w2.slice(ndarray::s![grp * cout_g..(grp + 1) * cout_g, ..]);
                let cols = w.t().dot(&gy);
                g.for_each_tap(|tap, pos, idx| gi[base + idx] += cols[[tap, pos]]);
            }
        }
    }
    let bias = needs.bias.then(|| {
        let sums: Vec<f32> = grad_output.axis_iter(Axis(1)).map(|c| c.sum()).collect();
        ArrayD::from_shape_vec(IxDyn(&[g.cout]), sums).expect("length")
    });
    Ok(ConvGrads {
        input: grad_input.map(|v| ArrayD::from_shape_vec(IxDyn(input.shape()), v).expect("length")),
        weight: needs
            .weight
            .then(|| grad_weight.into_dyn().into_shape_with_order(IxDyn(weight.shape())).expect("length")),
        bias,
    })
}

/// The gradients of a linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads {
    /// Of the input.
    pub input: ArrayD<f32>,
    /// Of the weight.
    pub weight: ArrayD<f32>,
    /// Of the bias, when asked for.
    pub bias: Option<ArrayD<f32>>,
}

/// The gradients of `y = x W^T + b` (`x` `[.., in]`, `W` `[out, in]`): input, weight and (with
/// `need_bias`) bias.
pub fn linear_backward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    grad_output: &ArrayD<f32>,
    need_bias: bool,
) -> QFakeResult<LinearGrads> {
    let (out, inp) = (weight.shape()[0], weight.shape()[1]);
    let rows = input.len() / inp.max(1);
    if grad_output.len() != rows * out {
        return Err(invalid(
            "linear_backward",
            "grad_output shape",
            grad_output.shape(),
            "must be the forward output's",
        ));
    }
    let x = input.as_standard_layout().into_owned().into_shape_with_order((rows, inp)).expect("length");
    let gy =
        grad_output.as_standard_layout().into_owned().into_shape_with_order((rows, out)).expect("length");
    let w = weight.as_standard_layout().into_owned().into_shape_with_order((out, inp)).expect("length");
    let gx = gy.dot(&w).into_dyn().into_shape_with_order(IxDyn(input.shape())).expect("length");
    let gw = gy.t().dot(&x).into_dyn();
    let gb = need_bias.then(|| gy.sum_axis(Axis(0)).into_dyn());
    Ok(LinearGrads { input: gx, weight: gw, bias: gb })
}
