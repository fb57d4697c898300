//! `nn.ConvTranspose2d` in f32 (qgraph has no transposed convolution; under static quantization
//! the importer keeps it float, between a `DeQuantStub` and a `QuantStub`).

use ndarray::{ArrayD, IxDyn};
use qgraph::record::Record;
use qgraph::{GraphError, GraphResult, Module, Value};
use serde::{Deserialize, Serialize};

/// The constructor arguments of a [`ConvTranspose2d`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvTransposeOptions {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding removed from both sides of the output.
    pub padding: [usize; 2],
    /// Extra rows and columns at the end of the output.
    pub output_padding: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Groups; divides both channel counts.
    pub groups: usize,
    /// True if the layer has a bias.
    pub bias: bool,
}

/// `nn.ConvTranspose2d` (float): weight `[in, out / groups, kh, kw]`, optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    options: ConvTransposeOptions,
    weight: ArrayD<f32>,
    bias: Option<ArrayD<f32>>,
}

fn err(reason: impl Into<String>) -> GraphError {
    GraphError::Mismatch { context: "ConvTranspose2d", reason: reason.into() }
}

impl ConvTranspose2d {
    /// A layer with the given options and parameters (shapes and sizes checked).
    pub fn new(
        options: ConvTransposeOptions,
        weight: ArrayD<f32>,
        bias: Option<ArrayD<f32>>,
    ) -> GraphResult<Self> {
        let o = &options;
        let sizes = o.kernel_size.iter().chain(&o.stride).chain(&o.dilation);
        if o.groups == 0
            || !o.in_channels.is_multiple_of(o.groups)
            || !o.out_channels.is_multiple_of(o.groups)
        {
            return Err(err(format!(
                "groups {} must divide {} and {}",
                o.groups, o.in_channels, o.out_channels
            )));
        }
        let all = sizes.chain(&o.padding).chain(&o.output_padding);
        if all.clone().any(|&v| v > qgraph::nn::MAX_SIZE)
            || o.kernel_size.iter().chain(&o.stride).chain(&o.dilation).any(|&v| v == 0)
        {
            return Err(err("kernel, stride and dilation must be positive and sizes at most 2^31 - 1"));
        }
        let shape = [o.in_channels, o.out_channels / o.groups, o.kernel_size[0], o.kernel_size[1]];
        if weight.shape() != shape {
            return Err(err(format!("weight of shape {:?}, expected {shape:?}", weight.shape())));
        }
        if o.bias != bias.is_some() || bias.as_ref().is_some_and(|b| b.shape() != [o.out_channels]) {
            return Err(err(format!("bias must be [{}] if and only if bias=True", o.out_channels)));
        }
        let weight = weight.as_standard_layout().into_owned();
        Ok(Self { options, weight, bias })
    }

    /// Rebuilds a saved layer.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: ConvTransposeOptions = record.config()?;
        let o = &options;
        let shape = [o.in_channels, o.out_channels / o.groups.max(1), o.kernel_size[0], o.kernel_size[1]];
        let weight = record.tensors.shaped("weight", &shape)?;
        let bias = if o.bias { Some(record.tensors.shaped("bias", &[o.out_channels])?) } else { None };
        Self::new(options, weight, bias)
    }

    fn output_size(&self, input: usize, axis: usize) -> GraphResult<usize> {
        let o = &self.options;
        let full = (input.max(1) - 1) * o.stride[axis]
            + o.dilation[axis] * (o.kernel_size[axis] - 1)
            + 1
            + o.output_padding[axis];
        full.checked_sub(2 * o.padding[axis])
            .filter(|&v| v > 0 && input > 0)
            .ok_or_else(|| err(format!("input size {input} gives an empty output")))
    }
}

impl Module for ConvTranspose2d {
    fn type_name(&self) -> &str {
        "ConvTranspose2d"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("ConvTranspose2d")?;
        let o = &self.options;
        let &[n, c, h, w] = x.shape() else {
            return Err(err(format!(
                "input of shape {:?}, expected [N, {}, H, W]",
                x.shape(),
                o.in_channels
            )));
        };
        if c != o.in_channels {
            return Err(err(format!("input has {c} channels, expected {}", o.in_channels)));
        }
        let (oh, ow) = (self.output_size(h, 0)?, self.output_size(w, 1)?);
        let total = [n, o.out_channels, oh, ow].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if total.is_none_or(|t| t > qgraph::memory::max_elements()) {
            return Err(err(format!(
                "output [{n}, {}, {oh}, {ow}] exceeds the element limit",
                o.out_channels
            )));
        }
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let ws = self.weight.as_slice().expect("standard layout");
        let (cin_g, cout_g) = (o.in_channels / o.groups, o.out_channels / o.groups);
        let (kh, kw) = (o.kernel_size[0], o.kernel_size[1]);
        let mut out = vec![0f32; n * o.out_channels * oh * ow];
        for b in 0..n {
            for ic in 0..c {
                let g = ic / cin_g;
                for iy in 0..h {
                    for ix in 0..w {
                        let v = xs[((b * c + ic) * h + iy) * w + ix];
                        for ocg in 0..cout_g {
                            let oc = g * cout_g + ocg;
                            for ky in 0..kh {
                                let y =
                                    (iy * o.stride[0] + ky * o.dilation[0]) as isize - o.padding[0] as isize;
                                if y < 0 || y as usize >= oh {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let xo = (ix * o.stride[1] + kx * o.dilation[1]) as isize
                                        - o.padding[1] as isize;
                                    if xo < 0 || xo as usize >= ow {
                                        continue;
                                    }
                                    let wv = ws[((ic * cout_g + ocg) * kh + ky) * kw + kx];
                                    out[((b * o.out_channels + oc) * oh + y as usize) * ow + xo as usize] +=
                                        v * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(bias) = &self.bias {
            for (i, chunk) in out.chunks_mut(oh * ow).enumerate() {
                let bv = bias[[i % o.out_channels]];
                chunk.iter_mut().for_each(|v| *v += bv);
            }
        }
        Ok(Value::Float(ArrayD::from_shape_vec(IxDyn(&[n, o.out_channels, oh, ow]), out).expect("length")))
    }

    fn extra_repr(&self) -> String {
        let o = &self.options;
        let pair = |v: [usize; 2]| format!("({}, {})", v[0], v[1]);
        let mut s = format!(
            "{}, {}, kernel_size={}, stride={}",
            o.in_channels,
            o.out_channels,
            pair(o.kernel_size),
            pair(o.stride)
        );
        if o.padding != [0, 0] {
            s += &format!(", padding={}", pair(o.padding));
        }
        if o.output_padding != [0, 0] {
            s += &format!(", output_padding={}", pair(o.output_padding));
        }
        if o.dilation != [1, 1] {
            s += &format!(", dilation={}", pair(o.dilation));
        }
        if o.groups != 1 {
            s += &format!(", groups={}", o.groups);
        }
        if !o.bias {
            s += ", bias=False";
        }
        s
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let mut p = vec![("weight", &self.weight)];
        if let Some(b) = &self.bias {
            p.push(("bias", b));
        }
        p
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let mut p = vec![("weight", &mut self.weight)];
        if let Some(b) = &mut self.bias {
            p.push(("bias", b));
        }
        p
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.options).expect("plain data")
    }
}
