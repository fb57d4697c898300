//! Convolution forward and backward (`aten::convolution_backward` on CPU): the input gradient by
//! a transposed GEMM and col2im, the weight gradient by im2col and a GEMM per image, the bias
//! gradient by a sum over the batch and the spatial positions.

use ndarray::ArrayD;
use qgraph::nn::ConvOptions;
use qkernels::Isa;
use qkernels::conv::PaddingMode;
use qkernels::float::{self, Matrix};
use rayon::prelude::*;

use super::check::{Axis, array, bad, check_shape, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::conv";

/// Which gradients a backward computes (ATen's `output_mask`): [`conv_backward`] and, as
/// [`BatchNormNeeds`](super::BatchNormNeeds), the batch-norm backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNeeds {
    /// The gradient of the input.
    pub input: bool,
    /// The gradient of the weight.
    pub weight: bool,
    /// The gradient of the bias.
    pub bias: bool,
}

impl ConvNeeds {
    /// All three gradients.
    pub const ALL: ConvNeeds = ConvNeeds { input: true, weight: true, bias: true };
}

/// The gradients [`conv_backward`] (and, as [`BatchNormGrads`](super::BatchNormGrads), the
/// batch-norm backward) returns; `None` where not asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGrads {
    /// The input's shape.
    pub input: Option<ArrayD<f32>>,
    /// The weight's shape (`[C]` for batch norm).
    pub weight: Option<ArrayD<f32>>,
    /// `[O]` (`[C]` for batch norm).
    pub bias: Option<ArrayD<f32>>,
}

/// The geometry of one convolution: three spatial axes, outermost first, missing ones
/// [`Axis::unit`].
#[derive(Debug, Clone, Copy)]
struct Geometry([Axis; 3]);

impl Geometry {
    fn in_plane(&self) -> usize {
        self.0.iter().map(|a| a.input).product()
    }
    fn out_plane(&self) -> usize {
        self.0.iter().map(|a| a.output).product()
    }
    fn kvol(&self) -> usize {
        self.0.iter().map(|a| a.kernel).product()
    }

    /// Calls `f(col, input, count)` for every run of output positions of im2col row `r` (input
    /// channel `r / kvol`, kernel tap `r % kvol`) whose input position lies inside the image:
    /// `count` positions from column `col` of the row read the input of the group from
    /// `input` on, `stride[2]` apart. Positions not visited read padding.
    fn runs(&self, r: usize, mut f: impl FnMut(usize, usize, usize)) {
        let field = |f: fn(&Axis) -> usize| self.0.map(|a| f(&a));
        let (isp, osp, ksp) = (field(|a| a.input), field(|a| a.output), field(|a| a.kernel));
        let (s, p, d) = (field(|a| a.stride), field(|a| a.pad), field(|a| a.dilation));
        let kvol = self.kvol();
        let (ch, kk) = (r / kvol, r % kvol);
        let (kz, ky, kx) = (kk / (ksp[1] * ksp[2]), kk / ksp[2] % ksp[1], kk % ksp[2]);
        let off = kx * d[2];
        // Output columns whose input column ox * s - p + off lies in [0, W).
        let lo = if off >= p[2] { 0 } else { (p[2] - off).div_ceil(s[2]) };
        let hi = if isp[2] + p[2] > off { ((isp[2] + p[2] - off - 1) / s[2] + 1).min(osp[2]) } else { 0 };
        if lo >= hi {
            return;
        }
        for oz in 0..osp[0] {
            let iz = (oz * s[0] + kz * d[0]).wrapping_sub(p[0]);
            if iz >= isp[0] {
                continue;
            }
            for oy in 0..osp[1] {
                let iy = (oy * s[1] + ky * d[1]).wrapping_sub(p[1]);
                if iy >= isp[1] {
                    continue;
                }
                let col = (oz * osp[1] + oy) * osp[2] + lo;
                let input = ((ch * isp[0] + iz) * isp[1] + iy) * isp[2] + lo * s[2] + off - p[2];
                f(col, input, hi - lo);
            }
        }
    }

    /// Unfolds the input of one group (`cg` channels) into columns `at..at + out_plane` of the
    /// `cg * kvol` rows of `col` (row stride `ld`).
    fn im2col(&self, x: &[f32], col: &mut [f32], ld: usize, at: usize, cg: usize) {
        let plane = self.out_plane();
        let step = self.0[2].stride;
        for r in 0..cg * self.kvol() {
            let row = &mut col[r * ld + at..r * ld + at + plane];
            row.fill(0.0);
            self.runs(r, |c, i, n| {
                if step == 1 {
                    row[c..c + n].copy_from_slice(&x[i..i + n]);
                } else {
                    for (v, &src) in row[c..c + n].iter_mut().zip(x[i..].iter().step_by(step)) {
                        *v = src;
                    }
                }
            });
        }
    }

    /// Adds columns `at..at + out_plane` of `col` (row stride `ld`) back onto the input
    /// gradient of one group (`dx`, zeroed first).
    fn col2im(&self, col: &[f32], ld: usize, at: usize, dx: &mut [f32], cg: usize) {
        let plane = self.out_plane();
        let step = self.0[2].stride;
        dx.fill(0.0);
        for r in 0..cg * self.kvol() {
            let row = &col[r * ld + at..r * ld + at + plane];
            self.runs(r, |c, i, n| {
                if step == 1 {
                    for (d, v) in dx[i..i + n].iter_mut().zip(&row[c..c + n]) {
                        *d += v;
                    }
                } else {
                    for (d, v) in dx[i..].iter_mut().step_by(step).zip(&row[c..c + n]) {
                        *d += v;
                    }
                }
            });
        }
    }
}

/// Checks the options, the padding mode and the input and weight shapes; returns the geometry
/// and the output shape.
fn geometry(input: &[usize], weight: &[usize], options: &ConvOptions) -> QFakeResult<(Geometry, Vec<usize>)> {
    options.validate()?;
    if options.padding_mode != PaddingMode::Zeros {
        return Err(bad(
            CONTEXT,
            "padding_mode",
            format!("{:?}", options.padding_mode).to_lowercase(),
            "training supports zeros padding only; pad the input explicitly and use padding 0",
        ));
    }
    let d = options.dims();
    if input.len() != d + 2 {
        return Err(qgraph::GraphError::ShapeMismatch {
            context: CONTEXT,
            what: "input rank (N, C, spatial...)",
            got: input.len(),
            expected: d + 2,
        });
    }
    check_shape(CONTEXT, "input channels", &input[1..2], &[options.in_channels])?;
    check_shape(CONTEXT, "weight", weight, &options.weight_shape())?;
    let mut output = vec![input[0], options.out_channels];
    for i in 0..d {
        let span = options.dilation[i] * (options.kernel_size[i] - 1) + 1;
        let padded = input[2 + i] + 2 * options.padding[i];
        if padded < span {
            return Err(bad(
                CONTEXT,
                "input size",
                &input[2..],
                format!("the dilated kernel {:?} is larger than the padded input", options.kernel_size),
            ));
        }
        output.push((padded - span) / options.stride[i] + 1);
    }
    let mut axes = [Axis::unit(); 3];
    for (i, axis) in axes[3 - d..].iter_mut().enumerate() {
        *axis = Axis {
            input: input[2 + i],
            kernel: options.kernel_size[i],
            stride: options.stride[i],
            pad: options.padding[i],
            dilation: options.dilation[i],
            output: output[2 + i],
        };
    }
    let geo = Geometry(axes);
    Ok((geo, output))
}

/// The float convolution `F.conv{1,2,3}d(input, weight, bias)` with the geometry of `options`
/// (zeros padding), as PyTorch's training forward computes it where that order is known: 2-D
/// layers with kernels larger than 1x1 that are not depthwise run
/// [`qkernels::float::conv2d_onednn`], oneDNN's summation order on AVX-512 CPUs, PyTorch's bits
/// for batches of two or more (docs/NUMERICS.md §9.1); the others the kernel of qgraph's
/// `nn::Conv` (`qkernels::float::conv`).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qgraph::nn::Conv2d;
/// let options = Conv2d::new(1, 1, [2, 2]).build()?.options().clone();
/// let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
/// let w = ArrayD::from_elem(IxDyn(&[1, 1, 2, 2]), 0.5);
/// let y = qfake::grad::conv_forward(&x, &w, None, &options)?;
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![5.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn conv_forward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    options: &ConvOptions,
) -> QFakeResult<ArrayD<f32>> {
    let (_, oshape) = geometry(input.shape(), weight.shape(), options)?;
    if let Some(b) = bias {
        check_shape(CONTEXT, "bias", b.shape(), &[options.out_channels])?;
    }
    let (x, w) = (to_vec(input), to_vec(weight));
    let b = bias.map(to_vec);
    let mut out = vec![0.0; oshape.iter().product()];
    macro_rules! run {
        ($d:literal, $kernel:path) => {{
            let arr = |v: &[usize]| -> [usize; $d] { v.try_into().expect("lengths validated") };
            let params = float::ConvParams::<$d> {
                stride: arr(&options.stride),
                padding: arr(&options.padding),
                dilation: arr(&options.dilation),
                groups: options.groups,
            };
            float::ConvScratch::with_thread_local(|scratch| {
                $kernel(
                    &x,
                    input.shape(),
                    &w,
                    weight.shape(),
                    b.as_deref(),
                    &params,
                    &mut out,
                    scratch,
                    Isa::active(),
                )
            })?
        }};
    }
    let depthwise = options.groups == input.shape()[1] && options.groups == options.out_channels;
    let larger_than_1x1 = weight.shape()[2..].iter().product::<usize>() > 1;
    match options.dims() {
        1 => run!(1, float::conv::<1>),
        2 if larger_than_1x1 && !depthwise => run!(2, float::conv2d_onednn),
        2 => run!(2, float::conv::<2>),
        _ => run!(3, float::conv::<3>),
    };
    Ok(array(&oshape, out))
}

/// Images per GEMM: the batch is cut into chunks of this many images, whose columns are put
/// side by side so that each GEMM has `CHUNK * out_plane` columns (input gradient) or terms
/// (weight gradient) while the unfolded input stays small. Input-gradient chunks run on the
/// rayon pool; weight-gradient chunks accumulate in order.
const CHUNK: usize = 8;

/// `dY` of images `images` and group `gi` side by side: `og` rows of `images.len() * out_plane`.
fn gather_dy(
    dy: &[f32],
    images: std::ops::Range<usize>,
    gi: usize,
    g: usize,
    og: usize,
    out_plane: usize,
) -> Vec<f32> {
    let ld = images.len() * out_plane;
    let mut m = vec![0.0f32; og * ld];
    for (k, b) in images.enumerate() {
        for o in 0..og {
            let src = ((b * g + gi) * og + o) * out_plane;
            m[o * ld + k * out_plane..o * ld + (k + 1) * out_plane]
                .copy_from_slice(&dy[src..src + out_plane]);
        }
    }
    m
}

/// The backward of [`conv_forward`] (`aten::convolution_backward`): for `grad_output`
/// `[N, O, out spatial...]`, the gradients of the input, the weight and the bias that `need`
/// asks for. Zeros padding only (another `padding_mode` is an error naming it).
///
/// Per group, the input gradient is `col2im(W^T * dY)` and the weight gradient
/// `sum_n dY_n * im2col(X_n)^T`, both with [`qkernels::float::sgemm`] on chunks of images put
/// side by side (input-gradient chunks run on the rayon pool). The weight gradient is one fused
/// multiply-add chain per element over (image, output position) in order and the bias gradient
/// a float sum in that order: PyTorch's bits for kernels larger than 1x1 (bias: batches of two
/// or more); the input gradient agrees to float rounding (docs/NUMERICS.md, "Training
/// gradients").
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{ConvNeeds, conv_backward};
/// use qgraph::nn::Conv1d;
/// let options = Conv1d::new(1, 1, [2]).build()?.options().clone();
/// let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 3]), vec![1.0, 2.0, 3.0]).unwrap();
/// let w = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![1.0, -1.0]).unwrap();
/// let dy = ArrayD::from_elem(IxDyn(&[1, 1, 2]), 1.0);
/// let g = conv_backward(&x, &w, &options, &dy, ConvNeeds::ALL)?;
/// assert_eq!(g.input.unwrap().into_raw_vec_and_offset().0, vec![1.0, 0.0, -1.0]);
/// assert_eq!(g.weight.unwrap().into_raw_vec_and_offset().0, vec![3.0, 5.0]);
/// assert_eq!(g.bias.unwrap().into_raw_vec_and_offset().0, vec![2.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn conv_backward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    options: &ConvOptions,
    grad_output: &ArrayD<f32>,
    need: ConvNeeds,
) -> QFakeResult<ConvGrads> {
    let (geo, oshape) = geometry(input.shape(), weight.shape(), options)?;
    check_shape(CONTEXT, "grad_output", grad_output.shape(), &oshape)?;
    let (n, g) = (input.shape()[0], options.groups);
    let (cg, og) = (options.in_channels / g, options.out_channels / g);
    let (in_plane, out_plane, rows) = (geo.in_plane(), geo.out_plane(), cg * geo.kvol());
    let x = to_vec(input);
    let w = to_vec(weight);
    let dy = to_vec(grad_output);
    let isa = Isa::active();
    let mut grads = ConvGrads { input: None, weight: None, bias: None };

    if need.bias {
        let mut db = vec![0.0f32; options.out_channels];
        for image in dy.chunks(options.out_channels * out_plane) {
            for (acc, plane) in db.iter_mut().zip(image.chunks(out_plane.max(1))) {
                *acc = plane.iter().fold(*acc, |a, &v| a + v);
            }
        }
        grads.bias = Some(array(&[options.out_channels], db));
    }

    let chunks = n.div_ceil(CHUNK);
    let images = |chunk: usize| chunk * CHUNK..((chunk + 1) * CHUNK).min(n);
    if need.input {
        let chunk_len = (CHUNK * options.in_channels * in_plane).max(1);
        let mut dx = vec![0.0f32; x.len()];
        dx.par_chunks_mut(chunk_len).enumerate().for_each(|(chunk, dx_chunk)| {
            let range = images(chunk);
            let ld = range.len() * out_plane;
            let mut col = vec![0.0f32; rows * ld];
            for gi in 0..g {
                let dyg = gather_dy(&dy, range.clone(), gi, g, og, out_plane);
                let wg = &w[gi * og * rows..(gi + 1) * og * rows];
                let product = float::sgemm(
                    rows,
                    ld,
                    og,
                    Matrix::transposed(wg, rows),
                    Matrix::row_major(&dyg, ld),
                    &mut col,
                    ld,
                    false,
                    isa,
                );
                product.expect("sizes checked");
                for k in 0..range.len() {
                    let at = (k * g + gi) * cg * in_plane;
                    geo.col2im(&col, ld, k * out_plane, &mut dx_chunk[at..at + cg * in_plane], cg);
                }
            }
        });
        grads.input = Some(array(input.shape(), dx));
    }

    if need.weight {
        // dW^T (rows x og) += col (rows x terms) * dY^T per chunk: the GEMM packs the small dY,
        // and accumulating continues each element's fused multiply-add chain, so every weight
        // gradient is one chain over (image, output position) in order, as oneDNN's.
        let mut dwt = vec![0.0f32; g * rows * og];
        let mut col = vec![0.0f32; rows * CHUNK.min(n) * out_plane];
        for chunk in 0..chunks {
            let range = images(chunk);
            let ld = range.len() * out_plane;
            for gi in 0..g {
                for (k, b) in range.clone().enumerate() {
                    let xg = &x[(b * g + gi) * cg * in_plane..(b * g + gi + 1) * cg * in_plane];
                    geo.im2col(xg, &mut col, ld, k * out_plane, cg);
                }
                let dyg = gather_dy(&dy, range.clone(), gi, g, og, out_plane);
                let product = float::sgemm(
                    rows,
                    og,
                    ld,
                    Matrix::row_major(&col, ld),
                    Matrix::transposed(&dyg, ld),
                    &mut dwt[gi * rows * og..(gi + 1) * rows * og],
                    og,
                    chunk > 0,
                    isa,
                );
                product.expect("sizes checked");
            }
        }
        let mut dw = vec![0.0f32; w.len()];
        for (dwg, dwtg) in dw.chunks_mut((og * rows).max(1)).zip(dwt.chunks((rows * og).max(1))) {
            for (r, row) in dwtg.chunks(og.max(1)).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    dwg[o * rows + r] = v;
                }
            }
        }
        grads.weight = Some(array(weight.shape(), dw));
    }
    Ok(grads)
}
