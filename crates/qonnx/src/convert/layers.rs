//! Weighted layers and pooling: Conv, ConvTranspose, BatchNormalization, Gemm, MatMul, pools, Resize.

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv, ConvOptions, Linear,
    MaxPool1d, MaxPool2d, Upsample, UpsampleMode,
};
use qgraph::qkernels::conv::PaddingMode;

use super::Converter;
use super::attrs::*;
use crate::fold::Dim;
use crate::items::{Kind, Val};
use crate::modules::{ConvTranspose2d, ConvTransposeOptions};
use crate::proto::NodeProto;

/// A pooling window: kernel, strides, (symmetric) padding, ceil mode.
pub(super) struct Window {
    kernel: Vec<usize>,
    stride: Vec<usize>,
    padding: Vec<usize>,
    ceil: bool,
}

impl Converter<'_> {
    pub(super) fn conv(&mut self, node: &NodeProto) -> Res<()> {
        no_auto_pad(node)?;
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?;
        let b = self.constant(node, 2, "the bias")?;
        let w = w.to_f32();
        let dims = w.ndim().saturating_sub(2);
        if !(1..=3).contains(&dims) {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "1-d, 2-d and 3-d convolutions are supported",
            ));
        }
        let groups = sizes(node, "group", &[attr_i(node, "group", 1)])?[0].max(1);
        let kernel = w.shape()[2..].to_vec();
        if let Some(k) = attr_ints(node, "kernel_shape")
            && sizes(node, "kernel_shape", &k)? != kernel
        {
            return Err(node_err(node, "kernel_shape differs from the weight's", "check the model"));
        }
        let options = ConvOptions {
            in_channels: w.shape()[1]
                .checked_mul(groups)
                .ok_or_else(|| node_err(node, "too many groups", "check the model"))?,
            out_channels: w.shape()[0],
            kernel_size: kernel,
            stride: sizes(node, "strides", &attr_ints(node, "strides").unwrap_or_else(|| vec![1; dims]))?,
            padding: symmetric(node, attr_ints(node, "pads"), dims)?,
            dilation: sizes(
                node,
                "dilations",
                &attr_ints(node, "dilations").unwrap_or_else(|| vec![1; dims]),
            )?,
            groups,
            bias: b.is_some(),
            padding_mode: PaddingMode::Zeros,
        };
        let mut conv = Conv::with_options(options)?;
        conv.set_weight_bias(w, b.map(|b| b.to_f32()))?;
        self.unary(node, "conv", conv)
    }

    pub(super) fn conv_transpose(&mut self, node: &NodeProto) -> Res<()> {
        no_auto_pad(node)?;
        if attr(node, "output_shape").is_some() {
            return Err(node_err(
                node,
                "output_shape is given",
                "export with output_padding (as torch.onnx.export does)",
            ));
        }
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        let b = self.constant(node, 2, "the bias")?.map(|b| b.to_f32());
        if w.ndim() != 4 {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "2-d transposed convolutions are supported",
            ));
        }
        let pair = |name: &str, default: usize| -> Res<[usize; 2]> {
            let v = match attr_ints(node, name) {
                Some(v) => sizes(node, name, &v)?,
                None => vec![default; 2],
            };
            <[usize; 2]>::try_from(v)
                .map_err(|_| node_err(node, format!("{name} has not 2 entries"), "check the model"))
        };
        let groups = sizes(node, "group", &[attr_i(node, "group", 1)])?[0].max(1);
        let padding = symmetric(node, attr_ints(node, "pads"), 2)?;
        let options = ConvTransposeOptions {
            in_channels: w.shape()[0],
            out_channels: w.shape()[1]
                .checked_mul(groups)
                .ok_or_else(|| node_err(node, "too many groups", "check the model"))?,
            kernel_size: [w.shape()[2], w.shape()[3]],
            stride: pair("strides", 1)?,
            padding: [padding[0], padding[1]],
            output_padding: pair("output_padding", 0)?,
            dilation: pair("dilations", 1)?,
            groups,
            bias: b.is_some(),
        };
        let module = ConvTranspose2d::new(options, w, b)?;
        let rank = Some(4);
        self.float_op(node, "conv_transpose", Box::new(module), rank).map(|_| ())
    }

    pub(super) fn batch_norm(&mut self, node: &NodeProto) -> Res<()> {
        if attr_i(node, "training_mode", 0) != 0 || node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(node_err(node, "training-mode batch norm", "export the model in eval mode"));
        }
        let get = |k, what| -> Res<ArrayD<f32>> {
            Ok(self
                .constant(node, k, what)?
                .ok_or_else(|| node_err(node, format!("no {what}"), "check the model"))?
                .to_f32())
        };
        let (w, b, mean, var) = (get(1, "scale")?, get(2, "bias")?, get(3, "mean")?, get(4, "var")?);
        let n = w.len();
        let rank = match self.input(node, 0)? {
            Some(Val::Node { rank, .. }) => *rank,
            _ => None,
        };
        let eps = attr_f64(node, "epsilon", 1e-5);
        let bn = match rank {
            Some(2 | 3) => BatchNorm1d::new(n),
            Some(5) => BatchNorm3d::new(n),
            _ => BatchNorm2d::new(n),
        };
        let mut bn = bn.eps(eps);
        let flat = |a: ArrayD<f32>| {
            a.into_shape_with_order(IxDyn(&[n]))
                .map_err(|_| node_err(node, "parameters of different lengths", "check the model"))
        };
        bn.set_params(flat(mean)?, flat(var)?, Some((flat(w)?, flat(b)?)))?;
        self.unary(node, "bn", bn)
    }

    pub(super) fn linear(
        &mut self,
        node: &NodeProto,
        base: &str,
        w: ArrayD<f32>,
        b: Option<ArrayD<f32>>,
        inputs: (String, Option<usize>),
    ) -> Res<String> {
        let [out, inp] = w.shape()[..] else {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "a linear layer's weight is 2-d",
            ));
        };
        let b = b
            .map(|b| {
                if b.len() != out {
                    return Err(node_err(
                        node,
                        format!("bias of shape {:?} for {out} outputs", b.shape()),
                        "use a bias per output",
                    ));
                }
                Ok(b.into_shape_with_order(IxDyn(&[out])).expect("length checked"))
            })
            .transpose()?;
        let mut linear = Linear::new(inp, out, b.is_some());
        linear.set_weight_bias(w, b)?;
        Ok(self.push(node, base, Kind::Module(Box::new(linear)), vec![inputs.0], inputs.1))
    }

    pub(super) fn gemm(&mut self, node: &NodeProto) -> Res<()> {
        if attr_i(node, "transA", 0) != 0 {
            return Err(node_err(node, "transA=1", "a linear layer multiplies the input untransposed"));
        }
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        if w.ndim() != 2 {
            return Err(node_err(node, "weight is not 2-d", "check the model"));
        }
        let alpha = attr_f(node, "alpha", 1.0);
        let beta = attr_f(node, "beta", 1.0);
        let mut w = if attr_i(node, "transB", 0) != 0 {
            w
        } else {
            w.reversed_axes().as_standard_layout().into_owned()
        };
        if alpha != 1.0 {
            w.mapv_inplace(|v| v * alpha);
        }
        let b = self.constant(node, 2, "the bias")?.map(|b| {
            let mut b = b.to_f32();
            if beta != 1.0 {
                b.mapv_inplace(|v| v * beta);
            }
            b
        });
        let consumer = self.items.len() + 1;
        let x = self.quant_value(node, 0, consumer)?;
        self.linear(node, "fc", w, b, x)?;
        Ok(())
    }

    pub(super) fn matmul(&mut self, index: usize) -> Res<()> {
        let node = &self.nodes[index];
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        if w.ndim() != 2 {
            return Err(node_err(
                node,
                "the right operand is not a 2-d constant",
                "MatMul maps to Linear with a constant weight",
            ));
        }
        let w = w.reversed_axes().as_standard_layout().into_owned();
        // MatMul then Add of a constant vector: nn.Linear on an input of rank > 2.
        let mut bias = None;
        if let Some(j) = self.sole_reader(Self::out(node)).filter(|&j| self.nodes[j].op_type == "Add") {
            let add = &self.nodes[j];
            let other = usize::from(add.inputs[0] == *Self::out(node));
            if let Some(Val::Const(t)) = self.input(add, other)?
                && t.len() == w.shape()[0]
            {
                bias = Some((j, t.to_f32()));
            }
        }
        let consumer = self.items.len() + 1;
        let x = self.quant_value(node, 0, consumer)?;
        let out = self.linear(node, "fc", w, bias.as_ref().map(|(_, b)| b.clone()), x)?;
        if let Some((j, _)) = bias {
            self.absorbed.insert(j, out);
        }
        Ok(())
    }

    pub(super) fn pool_geometry(&self, node: &NodeProto) -> Res<Window> {
        no_auto_pad(node)?;
        let k = sizes(
            node,
            "kernel_shape",
            &attr_ints(node, "kernel_shape")
                .ok_or_else(|| node_err(node, "no kernel_shape", "check the model"))?,
        )?;
        let d = k.len();
        let s = sizes(node, "strides", &attr_ints(node, "strides").unwrap_or_else(|| vec![1; d]))?;
        let p = symmetric(node, attr_ints(node, "pads"), d)?;
        if s.len() != d || k.iter().chain(&s).any(|&v| v == 0) {
            return Err(node_err(
                node,
                "kernel and strides must be positive and of equal length",
                "check the model",
            ));
        }
        Ok(Window { kernel: k, stride: s, padding: p, ceil: attr_i(node, "ceil_mode", 0) != 0 })
    }

    pub(super) fn max_pool(&mut self, node: &NodeProto) -> Res<()> {
        let Window { kernel: k, stride: s, padding: p, ceil } = self.pool_geometry(node)?;
        let dil =
            sizes(node, "dilations", &attr_ints(node, "dilations").unwrap_or_else(|| vec![1; k.len()]))?;
        if dil.len() != k.len() || dil.contains(&0) {
            return Err(node_err(
                node,
                format!("dilations {dil:?} for kernel {k:?}"),
                "give one positive dilation per axis",
            ));
        }
        if node.outputs.len() > 1 && node.outputs[1..].iter().any(|o| !o.is_empty()) {
            return Err(node_err(node, "the indices output is used", "export without return_indices"));
        }
        match k.len() {
            2 => {
                let pool = MaxPool2d::new([k[0], k[1]])
                    .stride([s[0], s[1]])
                    .padding([p[0], p[1]])
                    .dilation([dil[0], dil[1]])
                    .ceil_mode(ceil);
                self.unary(node, "maxpool", pool)
            }
            1 => self.unary(
                node,
                "maxpool",
                MaxPool1d::new([k[0]]).stride([s[0]]).padding([p[0]]).dilation([dil[0]]).ceil_mode(ceil),
            ),
            _ => Err(node_err(
                node,
                format!("{}-d max pooling", k.len()),
                "1-d and 2-d max pooling are supported",
            )),
        }
    }

    pub(super) fn avg_pool(&mut self, node: &NodeProto) -> Res<()> {
        let Window { kernel: k, stride: s, padding: p, ceil } = self.pool_geometry(node)?;
        if k.len() != 2 {
            return Err(node_err(
                node,
                format!("{}-d average pooling", k.len()),
                "2-d average pooling is supported",
            ));
        }
        let pool = AvgPool2d::new([k[0], k[1]])
            .stride([s[0], s[1]])
            .padding([p[0], p[1]])
            .ceil_mode(ceil)
            .count_include_pad(attr_i(node, "count_include_pad", 0) != 0);
        self.unary(node, "avgpool", pool)
    }

    pub(super) fn reduce_mean(&mut self, node: &NodeProto) -> Res<()> {
        let axes = match attr_ints(node, "axes") {
            Some(a) => Some(a),
            None => self.ints_input(node, 1, "axes")?,
        };
        let rank = match self.input(node, 0)? {
            Some(Val::Node { rank, .. }) => *rank,
            _ => None,
        };
        let spatial = matches!(axes.as_deref(), Some([2, 3] | [-2, -1] | [3, 2] | [-1, -2]));
        if rank == Some(4) && spatial && attr_i(node, "keepdims", 1) == 1 {
            return self.unary(node, "avgpool", AdaptiveAvgPool2d::new([1, 1]));
        }
        Err(node_err(
            node,
            format!("mean over axes {axes:?} of a rank-{rank:?} tensor"),
            "only the spatial mean of NCHW with keepdims (global average pooling) is supported",
        ))
    }

    pub(super) fn resize(&mut self, node: &NodeProto) -> Res<()> {
        let mode = attr_s(node, "mode").unwrap_or_else(|| "nearest".into());
        let ctm = attr_s(node, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
        let up = |u: Upsample| -> Res<Upsample> {
            Ok(match (mode.as_str(), ctm.as_str()) {
                ("nearest", "asymmetric") if attr_s(node, "nearest_mode").as_deref() == Some("floor") => u,
                ("linear", "align_corners") => u.mode(UpsampleMode::Bilinear).align_corners(true),
                ("linear", "pytorch_half_pixel" | "half_pixel") => {
                    u.mode(UpsampleMode::Bilinear).align_corners(false)
                }
                _ => {
                    return Err(node_err(
                        node,
                        format!("mode={mode}, coordinate_transformation_mode={ctm}"),
                        "PyTorch's nearest (asymmetric, floor) and bilinear (align_corners or half_pixel) are supported",
                    ));
                }
            })
        };
        let scales = self.constant(node, 2, "scales")?.filter(|t| t.len() > 0);
        let sizes_in = match self.input(node, 3)? {
            Some(Val::Dims(d)) if d.dims.len() == 4 => match (&d.dims[2], &d.dims[3]) {
                (Dim::Known(h), Dim::Known(w)) => Some(vec![0, 0, *h, *w]),
                _ => None,
            },
            _ => self.ints_input(node, 3, "sizes")?,
        };
        let u = match (scales, sizes_in) {
            (Some(s), _) => {
                let s = s.values_f64();
                if s.len() != 4 || s[0] != 1.0 || s[1] != 1.0 {
                    return Err(node_err(
                        node,
                        format!("scales {s:?}"),
                        "scale the spatial dimensions of NCHW only",
                    ));
                }
                Upsample::scale_factors([s[2], s[3]])
            }
            (None, Some(sz)) if sz.len() == 4 => {
                let sz = sizes(node, "sizes", &sz)?;
                Upsample::size([sz[2], sz[3]])
            }
            _ => {
                return Err(node_err(
                    node,
                    "neither constant scales nor sizes",
                    "export with a constant scale_factor or size",
                ));
            }
        };
        let u = up(u)?;
        self.unary(node, "upsample", u)
    }
}
