//! Quantized pooling and resampling on channels-last tensors (`N, spatial..., C`, PyTorch's
//! `channels_last` memory): max pooling (1-3 D), average and adaptive average pooling, nearest and
//! bilinear upsampling, with the integer and float arithmetic of PyTorch's NHWC kernels
//! (`QuantizedOpKernels.cpp`: `qmaxpool_2d_nhwc_kernel`, `_qavg_pool_nhwc_kernel`,
//! `_qadaptive_avg_pool_kernel`, `qupsample_bilinear2d_nhwc_kernel`; `UpSampleNearest2d.cpp`).
//!
//! Output parameters are the input's, as in PyTorch. Every kernel loops over channels innermost,
//! compiled once per tier ([`Isa`]) so the channel loop is vectorised with that tier's registers;
//! rayon splits the output rows.

use qcore::{QDType, quantize_val};

use crate::dispatch::run_tiered;
use crate::elementwise::{PerTensor, QElem};
use crate::util::{SendPtr, Tiered, check_len, invalid, numel, par_rows};
use crate::{Isa, KernelError, KernelResult, MemoryFormat};

/// Channels PyTorch's AVX-512 NHWC average-pooling kernel handles in its vector loop at a time;
/// the remaining `C mod 16` channels take its scalar loop, whose rounding differs slightly (and
/// which these kernels reproduce too).
pub const PYTORCH_VECTOR_CHANNELS: usize = 16;

/// Channels PyTorch's NHWC bilinear kernel handles in its vector loop at a time: it is
/// registered for the AVX2 build only (`REGISTER_DISPATCH`), which AVX-512 CPUs run too, so the
/// last `C mod 8` channels take its scalar loop.
pub const PYTORCH_BILINEAR_VECTOR_CHANNELS: usize = 8;

/// A pooling window over `D` spatial dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<const D: usize> {
    /// Kernel size per spatial dimension.
    pub kernel: [usize; D],
    /// Stride (PyTorch's default is the kernel size).
    pub stride: [usize; D],
    /// Implicit padding on both sides, at most half the kernel.
    pub padding: [usize; D],
    /// Dilation (1 for none; average pooling has none).
    pub dilation: [usize; D],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

/// The largest kernel size, stride, padding or dilation a [`Window`] takes, `2^31 - 1`: PyTorch's
/// quantized pooling kernels hold them in `int`, and with it every index a window computes fits
/// `i64`.
pub const MAX_WINDOW: usize = i32::MAX as usize;

impl<const D: usize> Window<D> {
    /// A window of `kernel` with stride `kernel`, no padding or dilation, floor mode.
    pub fn new(kernel: [usize; D]) -> Self {
        Self { kernel, stride: kernel, padding: [0; D], dilation: [1; D], ceil_mode: false }
    }

    /// Checks the sizes alone: kernel, stride and dilation positive, every size at most
    /// [`MAX_WINDOW`], padding at most half the kernel (PyTorch's `pool2d_shape_check`).
    pub fn validate(&self, op: &'static str) -> KernelResult<()> {
        for i in 0..D {
            for (what, sizes, min) in [
                ("kernel_size", self.kernel, 1),
                ("stride", self.stride, 1),
                ("padding", self.padding, 0),
                ("dilation", self.dilation, 1),
            ] {
                if sizes[i] < min {
                    return Err(invalid(op, what, sizes, "must be positive"));
                }
                if sizes[i] > MAX_WINDOW {
                    return Err(invalid(op, what, sizes, "must be at most 2^31 - 1"));
                }
            }
            if self.padding[i] > self.kernel[i] / 2 {
                return Err(invalid(op, "padding", self.padding, "must be at most half the kernel size"));
            }
        }
        Ok(())
    }

    /// Checks the window against a spatial input size and returns the output size, as PyTorch's
    /// `pooling_output_shape` and `pool2d_shape_check` do (see [`Window::validate`]).
    pub fn output_size(&self, op: &'static str, input: [usize; D]) -> KernelResult<[usize; D]> {
        self.validate(op)?;
        let mut out = [0; D];
        for i in 0..D {
            // Exact in i128 for any input size.
            let [n, k, s, p, d] =
                [input[i], self.kernel[i], self.stride[i], self.padding[i], self.dilation[i]]
                    .map(|v| v as i128);
            let num = n + 2 * p - d * (k - 1) - 1 + if self.ceil_mode { s - 1 } else { 0 };
            let mut o = num.div_euclid(s) + 1;
            if self.ceil_mode && (o - 1) * s >= n + p {
                o -= 1;
            }
            if o < 1 || n == 0 {
                return Err(KernelError::InvalidArgument {
                    op,
                    what: "output size",
                    value: format!("{o} (input {input:?}, window {self:?})"),
                    reason: "the window is larger than the padded input: the output would be empty",
                });
            }
            out[i] = o as usize;
        }
        Ok(out)
    }

    /// The kernel offsets along dimension `dim` whose taps for output `o` fall inside an input of
    /// `n`, for a window [`Window::output_size`] accepted: loops over these instead of the whole
    /// kernel do work bounded by the input, however large the kernel.
    pub fn taps_inside(&self, dim: usize, o: usize, n: usize) -> std::ops::Range<usize> {
        taps_inside(o, n, self.kernel[dim], self.stride[dim], self.padding[dim], self.dilation[dim])
    }
}

/// The offsets `t < k` with `0 <= o * s + t * d - p < n` (all sizes within [`MAX_WINDOW`], `o`
/// an output index of the window).
fn taps_inside(o: usize, n: usize, k: usize, s: usize, p: usize, d: usize) -> std::ops::Range<usize> {
    let start = (o * s) as i64 - p as i64;
    let d = d as i64;
    // First t with start + t * d >= 0, and first t with start + t * d >= n.
    let lo = if start >= 0 { 0 } else { (-start + d - 1) / d };
    let hi = if (n as i64) > start { (n as i64 - start + d - 1) / d } else { 0 };
    let hi = hi.min(k as i64);
    (lo.min(hi) as usize)..(hi as usize)
}

/// `[N, spatial..., C]` split into its parts, checked against the data length.
fn split_shape<const D: usize>(
    op: &'static str,
    shape: &[usize],
    len: usize,
) -> KernelResult<(usize, [usize; D], usize)> {
    check_len(op, "rank of the input (N, spatial..., C)", shape.len(), D + 2)?;
    check_len(op, "input length", len, numel(op, shape)?)?;
    let mut sp = [0; D];
    sp.copy_from_slice(&shape[1..=D]);
    if shape[D + 1] == 0 {
        return Err(invalid(op, "channels", 0, "must be positive"));
    }
    Ok((shape[0], sp, shape[D + 1]))
}

/// Pads a D-dimensional size to three dimensions (leading 1s).
fn to3<const D: usize>(v: [usize; D], fill: usize) -> [usize; 3] {
    let mut r = [fill; 3];
    r[3 - D..].copy_from_slice(&v);
    r
}

fn out_shape<const D: usize>(n: usize, sp: [usize; D], c: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(D + 2);
    v.push(n);
    v.extend_from_slice(&sp);
    v.push(c);
    v
}

struct MaxPoolRows<'a, T> {
    input: &'a [T],
    out: SendPtr<T>,
    rows: (usize, usize),
    n_in: [usize; 3],
    n_out: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
    d: [usize; 3],
    c: usize,
}

impl<T: QElem> Tiered for MaxPoolRows<'_, T> {
    #[inline(always)]
    fn run(&self) {
        let c = self.c;
        let [id, ih, iw] = self.n_in;
        let [od, oh, ow] = self.n_out;
        let lowest = T::from_i32(T::DTYPE.min() as i32);
        // Window taps inside the input, as offsets into the input (filled per pixel, on the stack
        // for up to 64 taps). A window has at most `min(k, n)` taps inside along each dimension.
        let mut taps_buf = [0usize; 64];
        let mut taps_vec = Vec::new();
        let ktotal = (0..3).map(|i| self.k[i].min(self.n_in[i])).product::<usize>();
        let taps: &mut [usize] = if ktotal <= 64 {
            &mut taps_buf[..]
        } else {
            taps_vec.resize(ktotal, 0);
            &mut taps_vec[..]
        };
        for pix in self.rows.0..self.rows.1 {
            // pix enumerates (n, z, y, x) output pixels.
            let x = pix % ow;
            let y = pix / ow % oh;
            let z = pix / (ow * oh) % od;
            let n = pix / (ow * oh * od);
            let mut count = 0;
            let inside = |i: usize, o: usize| {
                let range = taps_inside(o, self.n_in[i], self.k[i], self.s[i], self.p[i], self.d[i]);
                range.map(move |t| o * self.s[i] + t * self.d[i] - self.p[i])
            };
            for zi in inside(0, z) {
                for yi in inside(1, y) {
                    for xi in inside(2, x) {
                        taps[count] = (((n * id + zi) * ih + yi) * iw + xi) * c;
                        count += 1;
                    }
                }
            }
            let taps = &taps[..count];
            // SAFETY: output pixels are disjoint ranges of `out` handed to one task each.
            let o = unsafe { self.out.slice(pix * c, (pix + 1) * c) };
            // Blocks of 64 channels accumulate in a register across all taps, stored once
            // (a store reloaded by the next tap stalls on store forwarding).
            let mut cb = 0;
            while cb + 64 <= c {
                let mut acc = [lowest; 64];
                for &t in taps {
                    let v: &[T; 64] = self.input[t + cb..t + cb + 64].try_into().expect("64");
                    for i in 0..64 {
                        acc[i] = acc[i].max(v[i]);
                    }
                }
                o[cb..cb + 64].copy_from_slice(&acc);
                cb += 64;
            }
            if cb < c {
                let rest = &mut o[cb..];
                rest.fill(lowest);
                for &t in taps {
                    for (a, &v) in rest.iter_mut().zip(&self.input[t + cb..t + c]) {
                        *a = (*a).max(v);
                    }
                }
            }
        }
    }
}

/// Max pooling over `D` = 1, 2 or 3 spatial dimensions of an `[N, spatial..., C]` tensor
/// (`quantized::max_pool1d/2d`, `max_pool3d`): the integer maximum over each window, padding
/// ignored. Returns the output shape; `out` must have its length ([`Window::output_size`]).
pub fn max_pool<T: QElem, const D: usize>(
    input: &[T],
    shape: &[usize],
    window: &Window<D>,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "max_pool";
    isa.ensure_supported()?;
    if !(1..=3).contains(&D) {
        return Err(invalid(OP, "spatial dimensions", D, "must be 1, 2 or 3"));
    }
    let (n, sp, c) = split_shape::<D>(OP, shape, input.len())?;
    let osp = window.output_size(OP, sp)?;
    let oshape = out_shape(n, osp, c);
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let pixels = out.len() / c;
    let ptr = SendPtr(out.as_mut_ptr());
    // The work per pixel: the taps inside the input (at most min(kernel, input) per dimension).
    let taps = (0..D).map(|i| window.kernel[i].min(sp[i])).fold(c, usize::saturating_mul);
    par_rows(pixels, taps, |r0, r1| {
        let k = MaxPoolRows {
            input,
            out: ptr,
            rows: (r0, r1),
            n_in: to3(sp, 1),
            n_out: to3(osp, 1),
            k: to3(window.kernel, 1),
            s: to3(window.stride, 1),
            p: to3(window.padding, 0),
            d: to3(window.dilation, 1),
            c,
        };
        run_tiered(&k, isa);
    });
    Ok(oshape)
}

/// [`max_pool`] over one spatial dimension (`[N, L, C]`).
pub fn max_pool1d<T: QElem>(
    input: &[T],
    shape: &[usize],
    window: &Window<1>,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    max_pool(input, shape, window, out, isa)
}

/// [`max_pool`] over two spatial dimensions (`[N, H, W, C]`).
pub fn max_pool2d<T: QElem>(
    input: &[T],
    shape: &[usize],
    window: &Window<2>,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    max_pool(input, shape, window, out, isa)
}

/// [`max_pool`] over three spatial dimensions (`[N, D, H, W, C]`).
pub fn max_pool3d<T: QElem>(
    input: &[T],
    shape: &[usize],
    window: &Window<3>,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    max_pool(input, shape, window, out, isa)
}

/// Round half to even into i32 with `cvtps2dq`'s out-of-range rule.
#[inline(always)]
fn rne_i32(t: f32) -> i32 {
    if t.abs() < 2_147_483_648.0 { t.round_ties_even() as i32 } else { i32::MIN }
}

/// Round half to even into i32 for `|t| < 2^22`, in a form LLVM vectorises (a float add and an
/// integer subtract): adding `1.5 * 2^23` leaves exactly the rounded integer in the mantissa.
#[inline(always)]
fn rne_small(t: f32) -> i32 {
    debug_assert!(t.abs() < 4_194_304.0);
    (t + 12_582_912.0).to_bits() as i32 - 0x4B40_0000
}

/// Bound below which [`rne_small`] is exact.
const SMALL: f32 = 4_194_304.0;

/// The requantization of a zero-point-corrected window sum, channel by channel, as PyTorch's
/// NHWC average-pooling kernels do it: the first `vector_channels` channels by FBGEMM's vector
/// quantize (`cvtps2dq(acc * multiplier) + zp`, clamped), the rest by the scalar
/// `quantize_val(1.0f / multiplier, zp, acc)`.
#[derive(Debug, Clone, Copy)]
struct AvgRequant {
    multiplier: f32,
    tail_scale: f64,
    zp: i32,
    lo: i32,
    hi: i32,
    dtype: QDType,
}

impl AvgRequant {
    fn new(divide_factor: i64, q: PerTensor, dtype: QDType) -> Self {
        // PyTorch: `float multiplier = input_scale / output_scale / divide_factor`, all f32. The
        // two scales are the same finite non-zero f32 (checked), so their quotient is exactly 1.
        let multiplier = 1.0f32 / divide_factor as f32;
        Self {
            multiplier,
            tail_scale: f64::from(1.0f32 / multiplier),
            zp: q.zero_point as i32,
            lo: dtype.min() as i32,
            hi: dtype.max() as i32,
            dtype,
        }
    }

    #[inline(always)]
    fn vector(&self, acc: i32) -> i32 {
        let t = acc as f32 * self.multiplier;
        let t = if t > 2_147_483_520.0 { 2_147_483_520.0 } else { t };
        rne_i32(t).wrapping_add(self.zp).clamp(self.lo, self.hi)
    }

    /// [`AvgRequant::vector`] for sums known to keep `|acc * multiplier| < 2^22`.
    #[inline(always)]
    fn vector_small(&self, acc: i32) -> i32 {
        rne_small(acc as f32 * self.multiplier).wrapping_add(self.zp).clamp(self.lo, self.hi)
    }

    fn tail(&self, acc: i32) -> i32 {
        quantize_val(self.tail_scale, i64::from(self.zp), acc as f32, self.dtype)
    }

    /// PyTorch's NCHW kernel (`avg_pool2d_out_frame`, compiled without FMA):
    /// `nearbyint(acc * multiplier + zp)` in f32, the zero point added **before** rounding, with
    /// `multiplier = f32(1.0 / divide_factor)` computed in double.
    fn nchw(&self, acc: i32, multiplier: f32) -> i32 {
        let t = acc as f32 * multiplier + self.zp as f32;
        (t.round_ties_even() as i32).clamp(self.lo, self.hi)
    }
}

/// Channels handled per block, with the accumulators in registers (64 x i32: four zmm).
const CBLOCK: usize = 64;

struct AvgRows<'a, T> {
    input: &'a [T],
    out: SendPtr<T>,
    rows: (usize, usize),
    n_in: [usize; 2],
    n_out: [usize; 2],
    c: usize,
    /// For output coordinate `o` along dim `i`: (start, end) of the summed input range and the
    /// padded window size, per PyTorch's rules.
    ranges: [&'a [(usize, usize, usize)]; 2],
    divisor_override: Option<i64>,
    count_include_pad: bool,
    q: PerTensor,
    /// The PyTorch kernel whose rounding to reproduce: its NHWC or its NCHW one.
    format: MemoryFormat,
}

impl<T: QElem> Tiered for AvgRows<'_, T> {
    #[inline(always)]
    fn run(&self) {
        let c = self.c;
        let [ih, iw] = self.n_in;
        let [oh, ow] = self.n_out;
        let vector_channels = c - c % PYTORCH_VECTOR_CHANNELS;
        let nchw = self.format == MemoryFormat::Contiguous;
        let zp = self.q.zero_point as i32;
        for pix in self.rows.0..self.rows.1 {
            let x = pix % ow;
            let y = pix / ow % oh;
            let n = pix / (ow * oh);
            let (y0, y1, ph) = self.ranges[0][y];
            let (x0, x1, pw) = self.ranges[1][x];
            let size = ((y1 - y0) * (x1 - x0)) as i64;
            let divide =
                self.divisor_override.unwrap_or(if self.count_include_pad { (ph * pw) as i64 } else { size });
            let rq = AvgRequant::new(divide, self.q, T::DTYPE);
            let nchw_multiplier = (1.0 / divide as f64) as f32;
            let init = (-(zp as i64) * size) as i32;
            // SAFETY: output pixels are disjoint ranges of `out` handed to one task each.
            let o = unsafe { self.out.slice(pix * c, (pix + 1) * c) };
            for cb in (0..c).step_by(CBLOCK) {
                let ce = (cb + CBLOCK).min(c);
                let mut acc = [init; CBLOCK];
                if ce - cb == CBLOCK {
                    // A full block: four 16-lane sums that stay in registers across the window
                    // (sums kept in memory stall on store forwarding at every tap).
                    let mut r = [[init; 16]; 4];
                    for yi in y0..y1 {
                        for xi in x0..x1 {
                            let base = ((n * ih + yi) * iw + xi) * c + cb;
                            for (j, rj) in r.iter_mut().enumerate() {
                                add16(rj, &self.input[base + 16 * j..base + 16 * j + 16]);
                            }
                        }
                    }
                    for (j, rj) in r.iter().enumerate() {
                        acc[16 * j..16 * j + 16].copy_from_slice(rj);
                    }
                } else {
                    for yi in y0..y1 {
                        for xi in x0..x1 {
                            let base = ((n * ih + yi) * iw + xi) * c;
                            for (a, &v) in acc.iter_mut().zip(&self.input[base + cb..base + ce]) {
                                *a += v.to_i32();
                            }
                        }
                    }
                }
                let acc = &acc[..ce - cb];
                if nchw {
                    for (dst, &a) in o[cb..ce].iter_mut().zip(acc) {
                        *dst = T::from_i32(rq.nchw(a, nchw_multiplier));
                    }
                    continue;
                }
                let vend = vector_channels.clamp(cb, ce) - cb;
                // |acc| <= 255 * size, so this bound proves |acc * multiplier| < 2^22.
                if 256.0 * size as f32 * rq.multiplier < SMALL {
                    for (dst, &a) in o[cb..cb + vend].iter_mut().zip(&acc[..vend]) {
                        *dst = T::from_i32(rq.vector_small(a));
                    }
                } else {
                    for (dst, &a) in o[cb..cb + vend].iter_mut().zip(&acc[..vend]) {
                        *dst = T::from_i32(rq.vector(a));
                    }
                }
                for (dst, &a) in o[cb + vend..ce].iter_mut().zip(&acc[vend..]) {
                    *dst = T::from_i32(rq.tail(a));
                }
            }
        }
    }
}

/// `acc[i] += v[i]` for 16 lanes (one zmm of i32).
#[inline(always)]
fn add16<T: QElem>(acc: &mut [i32; 16], v: &[T]) {
    let v: &[T; 16] = v.try_into().expect("16 lanes");
    for i in 0..16 {
        acc[i] += v[i].to_i32();
    }
}

/// Average pooling options beyond the window (`torch.nn.functional.avg_pool2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window (dilation must be 1).
    pub window: Window<2>,
    /// Count padding positions in the divisor.
    pub count_include_pad: bool,
    /// Divide by this instead of the window size (must be non-zero).
    pub divisor_override: Option<i64>,
}

/// Per output coordinate: the clipped input range and the padded window extent.
fn avg_ranges(n_in: usize, n_out: usize, k: usize, s: usize, p: usize, buf: &mut Vec<(usize, usize, usize)>) {
    buf.clear();
    for o in 0..n_out {
        let start = (o * s) as i64 - p as i64;
        let end = (start + k as i64).min((n_in + p) as i64);
        let pool = (end - start) as usize;
        buf.push((start.max(0) as usize, end.min(n_in as i64) as usize, pool));
    }
}

/// `quantized::avg_pool2d` on `[N, H, W, C]` (PyTorch's NHWC kernel): the i32 sum of each window
/// minus `zp * size`, requantized with `multiplier = 1.0f / divisor` (see
/// [`PYTORCH_VECTOR_CHANNELS`] for the two rounding forms). Output parameters are the
/// input's. Returns the output shape.
///
/// `format` chooses the rounding of PyTorch's kernel for a tensor in that memory format (the
/// data is `[N, H, W, C]` either way): its NHWC kernel for channels-last, its NCHW kernel
/// (`avg_pool2d_out_frame`: `nearbyint(acc * f32(1.0 / divisor) + zp)`, every channel alike)
/// for contiguous tensors.
pub fn avg_pool2d<T: QElem>(
    format: MemoryFormat,
    input: &[T],
    shape: &[usize],
    q: PerTensor,
    opts: &AvgPool2d,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "avg_pool2d";
    isa.ensure_supported()?;
    q.quantizer(T::DTYPE)?;
    if opts.window.dilation != [1, 1] {
        return Err(invalid(OP, "dilation", opts.window.dilation, "average pooling has no dilation"));
    }
    if opts.divisor_override == Some(0) {
        return Err(invalid(OP, "divisor_override", 0, "must be non-zero"));
    }
    let (n, sp, c) = split_shape::<2>(OP, shape, input.len())?;
    let osp = opts.window.output_size(OP, sp)?;
    let oshape = out_shape(n, osp, c);
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let w = &opts.window;
    let (mut rh, mut rw) = (Vec::with_capacity(osp[0]), Vec::with_capacity(osp[1]));
    avg_ranges(sp[0], osp[0], w.kernel[0], w.stride[0], w.padding[0], &mut rh);
    avg_ranges(sp[1], osp[1], w.kernel[1], w.stride[1], w.padding[1], &mut rw);
    let ranges = [rh.as_slice(), rw.as_slice()];
    run_avg(input, out, n, sp, osp, c, ranges, opts.divisor_override, opts.count_include_pad, q, format, isa);
    Ok(oshape)
}

#[allow(clippy::too_many_arguments)]
fn run_avg<T: QElem>(
    input: &[T],
    out: &mut [T],
    n: usize,
    sp: [usize; 2],
    osp: [usize; 2],
    c: usize,
    ranges: [&[(usize, usize, usize)]; 2],
    divisor_override: Option<i64>,
    count_include_pad: bool,
    q: PerTensor,
    format: MemoryFormat,
    isa: Isa,
) {
    let ptr = SendPtr(out.as_mut_ptr());
    let pixels = n * osp[0] * osp[1];
    let window = (sp[0] / osp[0].max(1) + 1) * (sp[1] / osp[1].max(1) + 1);
    par_rows(pixels, c * window, |r0, r1| {
        let k = AvgRows {
            input,
            out: ptr,
            rows: (r0, r1),
            n_in: sp,
            n_out: osp,
            c,
            ranges,
            divisor_override,
            count_include_pad,
            q,
            format,
        };
        run_tiered(&k, isa);
    });
}

/// `quantized::adaptive_avg_pool2d` on `[N, H, W, C]` to `output_size`: window `o` along a
/// dimension covers `floor(o * in / out) .. ceil((o + 1) * in / out)`, requantized as in
/// [`avg_pool2d`] with the window size as divisor. Output parameters are the input's.
pub fn adaptive_avg_pool2d<T: QElem>(
    input: &[T],
    shape: &[usize],
    q: PerTensor,
    output_size: [usize; 2],
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "adaptive_avg_pool2d";
    isa.ensure_supported()?;
    q.quantizer(T::DTYPE)?;
    let (n, sp, c) = split_shape::<2>(OP, shape, input.len())?;
    if output_size.contains(&0) || sp.contains(&0) {
        return Err(invalid(OP, "output_size", output_size, "input and output sizes must be positive"));
    }
    let oshape = out_shape(n, output_size, c);
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let adaptive = |i: usize, o: usize| -> Vec<(usize, usize, usize)> {
        (0..o)
            .map(|j| {
                let start = j * i / o;
                let end = ((j + 1) * i).div_ceil(o);
                (start, end, end - start)
            })
            .collect()
    };
    let (rh, rw) = (adaptive(sp[0], output_size[0]), adaptive(sp[1], output_size[1]));
    run_avg(input, out, n, sp, output_size, c, [&rh, &rw], None, false, q, MemoryFormat::ChannelsLast, isa);
    Ok(oshape)
}

/// `quantized::adaptive_avg_pool1d` on `[N, L, C]`: [`adaptive_avg_pool2d`] with height 1.
pub fn adaptive_avg_pool1d<T: QElem>(
    input: &[T],
    shape: &[usize],
    q: PerTensor,
    output_size: usize,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "adaptive_avg_pool1d";
    check_len(OP, "rank of the input (N, L, C)", shape.len(), 3)?;
    adaptive_avg_pool2d(input, &[shape[0], 1, shape[1], shape[2]], q, [1, output_size], out, isa)?;
    Ok(vec![shape[0], output_size, shape[2]])
}

/// PyTorch's `nearest_idx` (no explicit scale factor).
fn nearest_idx(o: usize, n_in: usize, n_out: usize) -> usize {
    if n_out == n_in {
        o
    } else if n_out == 2 * n_in {
        o >> 1
    } else {
        let scale = n_in as f32 / n_out as f32;
        ((o as f32 * scale).floor() as usize).min(n_in - 1)
    }
}

/// `upsample_nearest2d` (`F.interpolate(mode="nearest")`) of `[N, H, W, C]` to `output_size`:
/// output `(y, x)` copies input `(nearest_idx(y), nearest_idx(x))`. Data and parameters unchanged.
pub fn upsample_nearest2d<T: QElem>(
    input: &[T],
    shape: &[usize],
    output_size: [usize; 2],
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "upsample_nearest2d";
    isa.ensure_supported()?;
    let (n, sp, c) = split_shape::<2>(OP, shape, input.len())?;
    if output_size.contains(&0) || sp.contains(&0) {
        return Err(invalid(OP, "output_size", output_size, "input and output sizes must be positive"));
    }
    let oshape = out_shape(n, output_size, c);
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let [oh, ow] = output_size;
    let ptr = SendPtr(out.as_mut_ptr());
    par_rows(n * oh, ow * c, |r0, r1| {
        for row in r0..r1 {
            let (b, y) = (row / oh, row % oh);
            let yi = nearest_idx(y, sp[0], oh);
            // SAFETY: rows are disjoint ranges of `out`.
            let o = unsafe { ptr.slice(row * ow * c, (row + 1) * ow * c) };
            for x in 0..ow {
                let xi = nearest_idx(x, sp[1], ow);
                let base = ((b * sp[0] + yi) * sp[1] + xi) * c;
                o[x * c..(x + 1) * c].copy_from_slice(&input[base..base + c]);
            }
        }
    });
    Ok(oshape)
}

/// Source coordinate and weights of one output coordinate of bilinear resampling.
#[derive(Debug, Clone, Copy)]
struct Lerp {
    i0: usize,
    step: usize,
    l0: f32,
    l1: f32,
}

/// `fused`: whether the build contracts `scale * (o + 0.5) - 0.5` into one FMA (PyTorch's NHWC
/// kernel, compiled with FMA) or rounds both steps (its NCHW kernel, compiled without).
fn lerps(n_in: usize, n_out: usize, align_corners: bool, fused: bool) -> Vec<Lerp> {
    // area_pixel_compute_scale<float> / area_pixel_compute_source_index<float>.
    let scale = if align_corners {
        if n_out > 1 { (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 }
    } else {
        n_in as f32 / n_out as f32
    };
    (0..n_out)
        .map(|o| {
            let r = if align_corners {
                scale * o as f32
            } else {
                // PyTorch's AVX2 kernels are built with FMA and GCC's default
                // -ffp-contract=fast, which contracts this into one FMA.
                let s =
                    if fused { scale.mul_add(o as f32 + 0.5, -0.5) } else { scale * (o as f32 + 0.5) - 0.5 };
                if s < 0.0 { 0.0 } else { s }
            };
            let i0 = r as usize;
            let step = usize::from(i0 < n_in - 1);
            let l1 = r - i0 as f32;
            Lerp { i0, step, l0: 1.0 - l1, l1 }
        })
        .collect()
}

struct BilinearRows<'a, T> {
    input: &'a [T],
    out: SendPtr<T>,
    rows: (usize, usize),
    n_in: [usize; 2],
    oh: usize,
    c: usize,
    lh: &'a [Lerp],
    lw: &'a [Lerp],
    zp_f: f32,
    zp: i32,
    lo: i32,
    hi: i32,
    /// Channels of each pixel computed in the vector form (the rest in the scalar form).
    vector_channels: usize,
    /// PyTorch's NCHW kernel: every product and sum rounded on its own.
    unfused: bool,
}

impl<T: QElem> Tiered for BilinearRows<'_, T> {
    #[inline(always)]
    fn run(&self) {
        let c = self.c;
        let [ih, iw] = self.n_in;
        let ow = self.lw.len();
        for row in self.rows.0..self.rows.1 {
            let (b, y) = (row / self.oh, row % self.oh);
            let h = self.lh[y];
            // SAFETY: rows are disjoint ranges of `out`.
            let o = unsafe { self.out.slice(row * ow * c, (row + 1) * ow * c) };
            for (x, w) in self.lw.iter().enumerate() {
                let p00 = ((b * ih + h.i0) * iw + w.i0) * c;
                let p01 = p00 + w.step * c;
                let p10 = p00 + h.step * iw * c;
                let p11 = p10 + w.step * c;
                let (r00, r01) = (&self.input[p00..p00 + c], &self.input[p01..p01 + c]);
                let (r10, r11) = (&self.input[p10..p10 + c], &self.input[p11..p11 + c]);
                let dst = &mut o[x * c..(x + 1) * c];
                let f = |v: T| v.to_i32() as f32;
                let q = |result: f32| {
                    // quantize_val(1.0, zp, result): zp + nearbyint(result), clamped. |result| is
                    // at most 255 + 128 (an interpolation of 8-bit values minus the zero point).
                    T::from_i32((self.zp + rne_small(result)).clamp(self.lo, self.hi))
                };
                if self.unfused {
                    for j in 0..c {
                        let top = w.l0 * f(r00[j]) + w.l1 * f(r01[j]);
                        let bottom = w.l0 * f(r10[j]) + w.l1 * f(r11[j]);
                        dst[j] = q(h.l0 * top + h.l1 * bottom - self.zp_f);
                    }
                    continue;
                }
                let vend = self.vector_channels;
                // `h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d) - zp`, contracted into FMAs as
                // PyTorch's build does: the vector loop fuses the second product of each sum...
                for j in 0..vend {
                    let top = w.l1.mul_add(f(r01[j]), w.l0 * f(r00[j]));
                    let bottom = w.l1.mul_add(f(r11[j]), w.l0 * f(r10[j]));
                    dst[j] = q(h.l1.mul_add(bottom, h.l0 * top) - self.zp_f);
                }
                // ...its scalar channel loop the first.
                for j in vend..c {
                    let top = w.l0.mul_add(f(r00[j]), w.l1 * f(r01[j]));
                    let bottom = w.l0.mul_add(f(r10[j]), w.l1 * f(r11[j]));
                    dst[j] = q(h.l0.mul_add(top, h.l1 * bottom) - self.zp_f);
                }
            }
        }
    }
}

/// `upsample_bilinear2d` (`F.interpolate(mode="bilinear", align_corners=...)`) of a quantized
/// `[N, H, W, C]` tensor: PyTorch's f32 interpolation of the raw integers, minus the zero point,
/// quantized back with scale 1 and the same zero point. Parameters unchanged.
///
/// `format` chooses the rounding of PyTorch's kernel for a tensor in that memory format (the
/// data is `[N, H, W, C]` either way). Channels-last: its NHWC kernel, built with
/// FMA contraction, vector form for the first `C - C mod 8` channels
/// ([`PYTORCH_BILINEAR_VECTOR_CHANNELS`]). Contiguous: its NCHW kernel
/// (`upsample_bilinear2d_out_frame`, built without FMA), every product and sum rounded alone.
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear2d<T: QElem>(
    format: MemoryFormat,
    input: &[T],
    shape: &[usize],
    q: PerTensor,
    output_size: [usize; 2],
    align_corners: bool,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "upsample_bilinear2d";
    isa.ensure_supported()?;
    q.quantizer(T::DTYPE)?;
    let (n, sp, c) = split_shape::<2>(OP, shape, input.len())?;
    if output_size.contains(&0) || sp.contains(&0) {
        return Err(invalid(OP, "output_size", output_size, "input and output sizes must be positive"));
    }
    let oshape = out_shape(n, output_size, c);
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let unfused = format == MemoryFormat::Contiguous;
    let (lh, lw) = (
        lerps(sp[0], output_size[0], align_corners, !unfused),
        lerps(sp[1], output_size[1], align_corners, !unfused),
    );
    let ptr = SendPtr(out.as_mut_ptr());
    let (zp_f, zp) = (q.zero_point as f32, q.zero_point as i32);
    let (lo, hi) = (T::DTYPE.min() as i32, T::DTYPE.max() as i32);
    par_rows(n * output_size[0], output_size[1] * c * 4, |r0, r1| {
        let k = BilinearRows {
            input,
            out: ptr,
            rows: (r0, r1),
            n_in: sp,
            oh: output_size[0],
            c,
            lh: &lh,
            lw: &lw,
            zp_f,
            zp,
            lo,
            hi,
            vector_channels: c - c % PYTORCH_BILINEAR_VECTOR_CHANNELS,
            unfused,
        };
        run_tiered(&k, isa);
    });
    Ok(oshape)
}
