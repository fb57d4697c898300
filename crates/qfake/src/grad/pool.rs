//! Max, average and adaptive pooling over 1 or 2 spatial axes (max pooling also over 3), with
//! their backward, as ATen's CPU kernels compute them (`aten/src/ATen/native/cpu/MaxPoolKernel.cpp`,
//! `AvgPoolKernel.cpp`, `AdaptiveAvgPoolKernel.cpp`, `AdaptiveMaxPoolKernel.cpp`). 1-D pooling
//! is 2-D pooling of height 1, as ATen computes it. Indices are flat within each `[H, W]` plane
//! (`[D, H, W]` volume), as PyTorch returns them.

use ndarray::ArrayD;

use super::check::{Axis, array, bad, check_shape, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::pool";

/// The arguments of `nn.MaxPool1d` / `nn.MaxPool2d` / `nn.MaxPool3d` (one entry per spatial
/// axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxPoolOptions {
    /// Window size.
    pub kernel_size: Vec<usize>,
    /// Step between windows (PyTorch's default is the kernel size).
    pub stride: Vec<usize>,
    /// Implicit `-inf` padding on both sides, at most half the kernel.
    pub padding: Vec<usize>,
    /// Spacing of the window's elements.
    pub dilation: Vec<usize>,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

/// The arguments of `nn.AvgPool1d` / `nn.AvgPool2d` (one entry per spatial axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvgPoolOptions {
    /// Window size.
    pub kernel_size: Vec<usize>,
    /// Step between windows.
    pub stride: Vec<usize>,
    /// Zero padding on both sides, at most half the kernel.
    pub padding: Vec<usize>,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// Count the padding in the divisor.
    pub count_include_pad: bool,
    /// Divide by this instead of the window size (2-D only in PyTorch's modules).
    pub divisor_override: Option<usize>,
}

/// The pooling rules of an [`Axis`].
trait Pooling: Sized {
    fn new(
        input: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        ceil: bool,
    ) -> QFakeResult<Self>;
    fn window(&self, o: usize) -> (usize, usize, usize);
}

impl Pooling for Axis {
    /// ATen's `pooling_output_shape` with its checks (`pool2d_shape_check`).
    fn new(
        input: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        ceil: bool,
    ) -> QFakeResult<Axis> {
        if kernel == 0 || stride == 0 || dilation == 0 {
            let v = (kernel, stride, dilation);
            return Err(bad(CONTEXT, "(kernel_size, stride, dilation)", v, "must be positive"));
        }
        if pad > kernel / 2 {
            return Err(bad(
                CONTEXT,
                "padding",
                pad,
                format!("must be at most half the kernel size {kernel}"),
            ));
        }
        let span = dilation * (kernel - 1) + 1;
        let avail = (input + 2 * pad) as i64 - span as i64 + if ceil { stride as i64 - 1 } else { 0 };
        let mut output = avail.div_euclid(stride as i64) + 1;
        if ceil && (output - 1) * stride as i64 >= (input + pad) as i64 {
            output -= 1;
        }
        if output < 1 {
            return Err(bad(
                CONTEXT,
                "input size",
                input,
                format!("gives no output for kernel {kernel}, padding {pad}"),
            ));
        }
        Ok(Axis { input, kernel, stride, pad, dilation, output: output as usize })
    }

    /// The max-pool window of output `o`: first input index, end (exclusive), step.
    fn window(&self, o: usize) -> (usize, usize, usize) {
        let mut start = (o * self.stride) as i64 - self.pad as i64;
        let end = (start + ((self.kernel - 1) * self.dilation) as i64 + 1).min(self.input as i64);
        while start < 0 {
            start += self.dilation as i64;
        }
        (start as usize, end.max(0) as usize, self.dilation)
    }
}

/// `[N, C, L]` or `[N, C, H, W]` as (planes `N * C`, spatial sizes as `[H, W]`).
fn planes(shape: &[usize]) -> QFakeResult<(usize, [usize; 2])> {
    match *shape {
        [n, c, l] => Ok((n * c, [1, l])),
        [n, c, h, w] => Ok((n * c, [h, w])),
        _ => Err(bad(CONTEXT, "input shape", shape, "must be [N, C, L] or [N, C, H, W]")),
    }
}

/// The output shape: the input's leading `[N, C]` and the output sizes of its spatial axes.
fn out_shape(input: &[usize], axes: &[Axis; 2]) -> Vec<usize> {
    let mut shape = input[..2].to_vec();
    if input.len() == 4 {
        shape.push(axes[0].output);
    }
    shape.push(axes[1].output);
    shape
}

/// Checks that `v` has one entry per spatial axis of `input` and pads it to `[H, W]` with
/// `unit`.
fn per_axis(what: &'static str, v: &[usize], input: &[usize], unit: usize) -> QFakeResult<[usize; 2]> {
    match (input.len(), v) {
        (3, &[a]) => Ok([unit, a]),
        (4, &[a, b]) => Ok([a, b]),
        _ => Err(bad(CONTEXT, what, v, format!("needs {} entries, one per spatial axis", input.len() - 2))),
    }
}

/// The pooling axes of `options` for `input`.
fn max_axes(input: &[usize], o: &MaxPoolOptions) -> QFakeResult<[Axis; 2]> {
    let (_, sp) = planes(input)?;
    let k = per_axis("kernel_size", &o.kernel_size, input, 1)?;
    let s = per_axis("stride", &o.stride, input, 1)?;
    let p = per_axis("padding", &o.padding, input, 0)?;
    let d = per_axis("dilation", &o.dilation, input, 1)?;
    let h =
        if input.len() == 3 { Axis::unit() } else { Axis::new(sp[0], k[0], s[0], p[0], d[0], o.ceil_mode)? };
    Ok([h, Axis::new(sp[1], k[1], s[1], p[1], d[1], o.ceil_mode)?])
}

/// Runs `pick(plane input, oh, ow) -> flat index` over every output; returns the output and the
/// indices.
fn gather(
    input: &ArrayD<f32>,
    oshape: &[usize],
    in_plane: usize,
    out_plane: [usize; 2],
    pick: impl Fn(&[f32], usize, usize) -> usize,
) -> (ArrayD<f32>, ArrayD<i64>) {
    let x = to_vec(input);
    let total: usize = oshape.iter().product();
    let (mut out, mut idx) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for plane in x.chunks(in_plane.max(1)) {
        for oh in 0..out_plane[0] {
            for ow in 0..out_plane[1] {
                let i = pick(plane, oh, ow);
                out.push(plane[i]);
                idx.push(i as i64);
            }
        }
    }
    let idx = ArrayD::from_shape_vec(ndarray::IxDyn(oshape), idx).expect("one index per output");
    (array(oshape, out), idx)
}

/// A window along one axis: first input index, end (exclusive), step.
type Window = (usize, usize, usize);

/// ATen's max rule over a window of a `[D, H, W]` volume (`[height, width]` its last two sizes;
/// a plane is a volume of depth 1 and the depth window `(0, 1, 1)`), visited depth, row, column:
/// the first maximum wins; a NaN always replaces (so NaN propagates, with the index of the last
/// NaN); an all `-inf` window gives its first index.
fn argmax(volume: &[f32], [height, width]: [usize; 2], [depths, rows, cols]: [Window; 3]) -> usize {
    let flat = |id: usize, ih: usize, iw: usize| (id * height + ih) * width + iw;
    let mut best = flat(depths.0, rows.0, cols.0);
    let mut max = f32::NEG_INFINITY;
    for id in (depths.0..depths.1).step_by(depths.2) {
        for ih in (rows.0..rows.1).step_by(rows.2) {
            for iw in (cols.0..cols.1).step_by(cols.2) {
                let v = volume[flat(id, ih, iw)];
                if v > max || v.is_nan() {
                    max = v;
                    best = flat(id, ih, iw);
                }
            }
        }
    }
    best
}

/// `F.max_pool1d/2d/3d(input, ..., return_indices=True)` on `[N, C, L]`, `[N, C, H, W]` or
/// `[N, C, D, H, W]`: the output and the flat index of each maximum in its input plane (volume).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{MaxPoolOptions, max_pool_with_indices};
/// let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 4]), vec![1.0, 3.0, 3.0, 2.0]).unwrap();
/// let o = MaxPoolOptions { kernel_size: vec![2], stride: vec![1], padding: vec![0], dilation: vec![1], ceil_mode: false };
/// let (y, i) = max_pool_with_indices(&x, &o)?;
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![3.0, 3.0, 3.0]);
/// assert_eq!(i.into_raw_vec_and_offset().0, vec![1, 1, 2]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn max_pool_with_indices(
    input: &ArrayD<f32>,
    options: &MaxPoolOptions,
) -> QFakeResult<(ArrayD<f32>, ArrayD<i64>)> {
    if input.ndim() == 5 {
        return max_pool3d_with_indices(input, options);
    }
    let axes = max_axes(input.shape(), options)?;
    let (_, sp) = planes(input.shape())?;
    let oshape = out_shape(input.shape(), &axes);
    let [ah, aw] = axes;
    Ok(gather(input, &oshape, sp[0] * sp[1], [ah.output, aw.output], |plane, oh, ow| {
        argmax(plane, sp, [(0, 1, 1), ah.window(oh), aw.window(ow)])
    }))
}

/// [`max_pool_with_indices`] on `[N, C, D, H, W]` (ATen's `cpu_max_pool` with `is_3d`).
fn max_pool3d_with_indices(
    input: &ArrayD<f32>,
    o: &MaxPoolOptions,
) -> QFakeResult<(ArrayD<f32>, ArrayD<i64>)> {
    let &[n, c, d, h, w] = input.shape() else {
        return Err(bad(CONTEXT, "input shape", input.shape(), "must be [N, C, D, H, W]"));
    };
    let three = |what: &'static str, v: &[usize]| -> QFakeResult<[usize; 3]> {
        <[usize; 3]>::try_from(v).map_err(|_| bad(CONTEXT, what, v, "needs 3 entries, one per spatial axis"))
    };
    let (k, s) = (three("kernel_size", &o.kernel_size)?, three("stride", &o.stride)?);
    let (p, dl) = (three("padding", &o.padding)?, three("dilation", &o.dilation)?);
    let axes = [d, h, w]
        .iter()
        .enumerate()
        .map(|(i, &size)| Axis::new(size, k[i], s[i], p[i], dl[i], o.ceil_mode))
        .collect::<QFakeResult<Vec<_>>>()?;
    let oshape = [n, c, axes[0].output, axes[1].output, axes[2].output];
    let x = to_vec(input);
    let total: usize = oshape.iter().product();
    let (mut out, mut idx) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for volume in x.chunks((d * h * w).max(1)) {
        for od in 0..axes[0].output {
            for oh in 0..axes[1].output {
                for ow in 0..axes[2].output {
                    let i =
                        argmax(volume, [h, w], [axes[0].window(od), axes[1].window(oh), axes[2].window(ow)]);
                    out.push(volume[i]);
                    idx.push(i as i64);
                }
            }
        }
    }
    let idx = ArrayD::from_shape_vec(ndarray::IxDyn(&oshape), idx).expect("one index per output");
    Ok((array(&oshape, out), idx))
}

/// `[N, C, ...]` with 1 to 3 spatial axes as (planes `N * C`, elements per plane).
fn volumes(shape: &[usize]) -> QFakeResult<(usize, usize)> {
    match shape {
        [n, c, spatial @ ..] if (1..=3).contains(&spatial.len()) => Ok((n * c, spatial.iter().product())),
        _ => Err(bad(CONTEXT, "shape", shape, "must be [N, C, L], [N, C, H, W] or [N, C, D, H, W]")),
    }
}

/// The backward of [`max_pool_with_indices`] and [`adaptive_max_pool`]: each output's gradient
/// is added to its input index, plane by plane in output order (ATen's
/// `cpu_max_pool_backward`), into a zero gradient of `input_shape`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let g = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![1.0, 2.0]).unwrap();
/// let i = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![1i64, 1]).unwrap();
/// let dx = qfake::grad::max_pool_backward(&g, &i, &[1, 1, 3])?;
/// assert_eq!(dx.into_raw_vec_and_offset().0, vec![0.0, 3.0, 0.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn max_pool_backward(
    grad_output: &ArrayD<f32>,
    indices: &ArrayD<i64>,
    input_shape: &[usize],
) -> QFakeResult<ArrayD<f32>> {
    let (np, in_plane) = volumes(input_shape)?;
    check_shape(CONTEXT, "indices", indices.shape(), grad_output.shape())?;
    let (gnp, _) = volumes(grad_output.shape())?;
    check_shape(CONTEXT, "grad_output's [N, C]", &grad_output.shape()[..2], &input_shape[..2])?;
    if grad_output.ndim() != input_shape.len() || gnp != np {
        return Err(bad(CONTEXT, "grad_output shape", grad_output.shape(), "must have the input's rank"));
    }
    let out_plane = grad_output.len() / np.max(1);
    let g = to_vec(grad_output);
    let idx: Vec<i64> = indices.iter().copied().collect();
    let mut dx = vec![0.0f32; np * in_plane];
    for p in 0..np {
        for j in p * out_plane..(p + 1) * out_plane {
            let i = idx[j];
            if i == -1 {
                continue;
            }
            if i < 0 || i as usize >= in_plane {
                return Err(bad(CONTEXT, "index", i, format!("must be in 0..{in_plane} (the input plane)")));
            }
            dx[p * in_plane + i as usize] += g[j];
        }
    }
    Ok(array(input_shape, dx))
}

/// Checks a pooling `grad_output` against the output shape the input shape gives; returns the
/// number of planes and the input plane's `[H, W]`.
fn check_grad(
    grad_output: &ArrayD<f32>,
    input_shape: &[usize],
    oshape: &[usize],
) -> QFakeResult<(usize, [usize; 2])> {
    check_shape(CONTEXT, "grad_output", grad_output.shape(), oshape)?;
    planes(input_shape)
}

/// The backward of `F.avg_pool1d/2d` (ATen's `cpu_avg_pool_backward`): each output's gradient
/// divided by its divisor (`divisor_override`, else the window clipped to the padded input
/// with `count_include_pad`, else the window clipped to the input) is added to every input of
/// its window, in output order.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{AvgPoolOptions, avg_pool_backward};
/// let o = AvgPoolOptions { kernel_size: vec![2], stride: vec![2], padding: vec![1], ceil_mode: false, count_include_pad: false, divisor_override: None };
/// let g = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![1.0, 2.0]).unwrap();
/// let dx = avg_pool_backward(&g, &[1, 1, 2], &o)?;
/// assert_eq!(dx.into_raw_vec_and_offset().0, vec![1.0, 2.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn avg_pool_backward(
    grad_output: &ArrayD<f32>,
    input_shape: &[usize],
    options: &AvgPoolOptions,
) -> QFakeResult<ArrayD<f32>> {
    let max = MaxPoolOptions {
        kernel_size: options.kernel_size.clone(),
        stride: options.stride.clone(),
        padding: options.padding.clone(),
        dilation: vec![1; options.kernel_size.len()],
        ceil_mode: options.ceil_mode,
    };
    let axes = max_axes(input_shape, &max)?;
    if options.divisor_override == Some(0) {
        return Err(bad(CONTEXT, "divisor_override", 0, "must be positive"));
    }
    let (np, sp) = check_grad(grad_output, input_shape, &out_shape(input_shape, &axes))?;
    let [ah, aw] = axes;
    let g = to_vec(grad_output);
    let in_plane = sp[0] * sp[1];
    let mut dx = vec![0.0f32; np * in_plane];
    let mut j = 0;
    // ATen's window: start at o * s - p, end at start + k clipped to the padded input (the
    // count_include_pad size), then both clipped to the input.
    let bounds = |a: Axis, o: usize| {
        let start = (o * a.stride) as i64 - a.pad as i64;
        let end = (start + a.kernel as i64).min((a.input + a.pad) as i64);
        (start, end)
    };
    for p in 0..np {
        let plane = &mut dx[p * in_plane..(p + 1) * in_plane];
        for oh in 0..ah.output {
            let (h0, h1) = bounds(ah, oh);
            for ow in 0..aw.output {
                let (w0, w1) = bounds(aw, ow);
                let pool_size = (h1 - h0) * (w1 - w0);
                let (h0, w0) = (h0.max(0) as usize, w0.max(0) as usize);
                let (h1, w1) = (h1.min(sp[0] as i64) as usize, w1.min(sp[1] as i64) as usize);
                let divide = match options.divisor_override {
                    Some(d) => d as i64,
                    None if options.count_include_pad => pool_size,
                    None => ((h1 - h0) * (w1 - w0)) as i64,
                };
                let delta = g[j] / divide as f32;
                j += 1;
                for ih in h0..h1 {
                    for v in &mut plane[ih * sp[1] + w0..ih * sp[1] + w1] {
                        *v += delta;
                    }
                }
            }
        }
    }
    Ok(array(input_shape, dx))
}

/// ATen's adaptive window of output `o` of `out` over `len` inputs:
/// `[floor(o * len / out), ceil((o + 1) * len / out))`.
fn adaptive_window(o: usize, out: usize, len: usize) -> (usize, usize) {
    (o * len / out, ((o + 1) * len).div_ceil(out))
}

/// Checks an adaptive output size (one entry per spatial axis, each positive) and returns the
/// output shape and the `[H, W]` output sizes.
fn adaptive_shape(input: &[usize], output_size: &[usize]) -> QFakeResult<(Vec<usize>, [usize; 2])> {
    let o = per_axis("output_size", output_size, input, 1)?;
    if o.contains(&0) {
        return Err(bad(CONTEXT, "output_size", output_size, "must be positive"));
    }
    let mut shape = input[..2].to_vec();
    shape.extend_from_slice(output_size);
    Ok((shape, o))
}

/// The backward of `F.adaptive_avg_pool1d/2d` to `output_size` (ATen's
/// `cpu_adaptive_avg_pool_backward`): each output's gradient divided by its window height, then
/// by its width, added to every input of its window, in output order.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let g = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![3.0, 6.0]).unwrap();
/// let dx = qfake::grad::adaptive_avg_pool_backward(&g, &[1, 1, 3])?;
/// assert_eq!(dx.into_raw_vec_and_offset().0, vec![1.5, 4.5, 3.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn adaptive_avg_pool_backward(
    grad_output: &ArrayD<f32>,
    input_shape: &[usize],
) -> QFakeResult<ArrayD<f32>> {
    let (np, sp) = planes(input_shape)?;
    let (oshape, o) = adaptive_shape(input_shape, &grad_output.shape()[2.min(grad_output.ndim())..])?;
    check_grad(grad_output, input_shape, &oshape)?;
    let g = to_vec(grad_output);
    let in_plane = sp[0] * sp[1];
    let mut dx = vec![0.0f32; np * in_plane];
    if o == [1, 1] {
        // ATen computes a 1x1 adaptive average as `mean` over the plane, whose backward divides
        // by the element count once.
        for (plane, &gv) in dx.chunks_mut(in_plane.max(1)).zip(&g) {
            plane.fill(gv / in_plane as f32);
        }
        return Ok(array(input_shape, dx));
    }
    let mut j = 0;
    for p in 0..np {
        let plane = &mut dx[p * in_plane..(p + 1) * in_plane];
        for oh in 0..o[0] {
            let (h0, h1) = adaptive_window(oh, o[0], sp[0]);
            for ow in 0..o[1] {
                let (w0, w1) = adaptive_window(ow, o[1], sp[1]);
                let delta = g[j] / (h1 - h0) as f32 / (w1 - w0) as f32;
                j += 1;
                for ih in h0..h1 {
                    for v in &mut plane[ih * sp[1] + w0..ih * sp[1] + w1] {
                        *v += delta;
                    }
                }
            }
        }
    }
    Ok(array(input_shape, dx))
}

/// `F.adaptive_max_pool1d/2d(input, output_size, return_indices=True)` (ATen's
/// `cpu_adaptive_max_pool`, the max rule of [`max_pool_with_indices`]); its backward is
/// [`max_pool_backward`].
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 3]), vec![1.0, 5.0, 2.0]).unwrap();
/// let (y, i) = qfake::grad::adaptive_max_pool(&x, &[2])?;
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![5.0, 5.0]);
/// assert_eq!(i.into_raw_vec_and_offset().0, vec![1, 1]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn adaptive_max_pool(
    input: &ArrayD<f32>,
    output_size: &[usize],
) -> QFakeResult<(ArrayD<f32>, ArrayD<i64>)> {
    let (_, sp) = planes(input.shape())?;
    let (oshape, o) = adaptive_shape(input.shape(), output_size)?;
    if sp.contains(&0) {
        return Err(bad(CONTEXT, "input shape", input.shape(), "needs a non-empty plane"));
    }
    Ok(gather(input, &oshape, sp[0] * sp[1], o, |plane, oh, ow| {
        let (h0, h1) = adaptive_window(oh, o[0], sp[0]);
        let (w0, w1) = adaptive_window(ow, o[1], sp[1]);
        argmax(plane, sp, [(0, 1, 1), (h0, h1, 1), (w0, w1, 1)])
    }))
}
