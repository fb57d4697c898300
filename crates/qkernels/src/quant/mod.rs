//! Per-tensor quint8 quantize and dequantize, plain and layout-converting.
//!
//! The graph layer keeps quantized activations channels-last (`N, spatial..., C`: NLC, NHWC,
//! NDHWC) while its public API takes and returns NCHW f32. These kernels convert between the two
//! in one pass:
//!
//! * [`quantize_to_channels_last`]: NCHW-ordered f32 to channels-last u8.
//! * [`dequantize_from_channels_last`]: channels-last u8 to NCHW-ordered f32.
//! * [`quantize_u8`] / [`dequantize_u8`]: the same element rules on slices, no transpose.
//!
//! Every value is exactly qcore's: quantize is [`qcore::AffineQuantizer::quantize`] (FBGEMM's AVX2
//! rule, with its NaN / ±Inf behaviour and the wrapping zero-point add, `docs/NUMERICS.md` 2.1),
//! dequantize is [`qcore::dequantize_val`] (`f32(scale) * f32(q - zero_point)`), on every tier.
//!
//! The layout conversion goes through tiles of up to [`TILE`] channels by 256 or more pixels (16 KiB
//! of bytes): each channel's run of pixels is (de)quantized with the tier's vectors into the tile,
//! and the tile is transposed, 16 x 16 bytes at a time with SSE2 unpacks on the vector tiers. Large tensors are split over rayon by pixel ranges.

mod transpose;

use qcore::{AffineQuantizer, QDType};
use rayon::prelude::*;

use crate::elementwise::PerTensor;
use crate::util::{PAR_CHUNK, SendPtr, check_len, for_chunks, invalid, numel};
use crate::{Isa, KernelResult};

/// At most this many channels per tile of the layout-converting kernels (and at least this many
/// pixels).
pub const TILE: usize = 64;

/// Bytes of quantized values per tile: 64 channels by 256 pixels, or fewer channels by more pixels.
const TILE_BYTES: usize = 16384;

/// The prepared dequantize rule: `f32(scale) * f32(q - zero_point)`.
#[derive(Debug, Clone, Copy)]
struct Dequantizer {
    scale: f32,
    zero_point: i32,
}

impl Dequantizer {
    fn new(q: PerTensor) -> KernelResult<Self> {
        // The same checks as quantize: a scale PyTorch could hold for a quint8 tensor.
        let checked = q.quantizer(QDType::QUInt8)?;
        Ok(Self { scale: q.scale as f32, zero_point: checked.zero_point() })
    }

    #[inline]
    fn apply(self, q: u8) -> f32 {
        self.scale * (i32::from(q) - self.zero_point) as f32
    }
}

/// Quantizes `input` into `out` on the chosen tier (lengths already checked equal).
fn quantize_run(q: &AffineQuantizer, input: &[f32], out: &mut [u8], isa: Isa) {
    let (inv, zp) = (q.inv_scale(), q.zero_point());
    let done = on_tier!(
        isa,
        scalar: 0,
        avx2: crate::x86::quant::avx2::quantize(inv, zp, input, out),
        avx512: crate::x86::quant::avx512::quantize(inv, zp, input, out),
    );
    for (o, &x) in out[done..].iter_mut().zip(&input[done..]) {
        *o = q.quantize(x) as u8;
    }
}

/// Dequantizes `input` into `out` on the chosen tier (lengths already checked equal).
fn dequantize_run(d: Dequantizer, input: &[u8], out: &mut [f32], isa: Isa) {
    let (scale, zp) = (d.scale, d.zero_point);
    let done = on_tier!(
        isa,
        scalar: 0,
        avx2: crate::x86::quant::avx2::dequantize(scale, zp, input, out),
        avx512: crate::x86::quant::avx512::dequantize(scale, zp, input, out),
    );
    for (o, &q) in out[done..].iter_mut().zip(&input[done..]) {
        *o = d.apply(q);
    }
}

/// `torch.quantize_per_tensor(input, scale, zero_point, torch.quint8)` on a slice:
/// `out[i] = AffineQuantizer::quantize(input[i])`.
///
/// Errors: `out` of another length, an invalid scale or a zero point outside [0, 255], an
/// unsupported tier.
pub fn quantize_u8(input: &[f32], q: PerTensor, out: &mut [u8], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len("quantize_u8", "output length", out.len(), input.len())?;
    let quantizer = q.quantizer(QDType::QUInt8)?;
    let ptr = SendPtr(out.as_mut_ptr());
    for_chunks(input.len(), |s, e| {
        // SAFETY: `for_chunks` hands out disjoint ranges within `out`, which outlives the call.
        let o = unsafe { ptr.slice(s, e) };
        quantize_run(&quantizer, &input[s..e], o, isa);
    });
    Ok(())
}

/// `Tensor.dequantize()` of a per-tensor quint8 slice: `out[i] = f32(scale) * f32(input[i] -
/// zero_point)`, bit for bit [`qcore::dequantize_val`].
///
/// Errors: `out` of another length, an invalid scale or a zero point outside [0, 255], an
/// unsupported tier.
pub fn dequantize_u8(input: &[u8], q: PerTensor, out: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len("dequantize_u8", "output length", out.len(), input.len())?;
    let d = Dequantizer::new(q)?;
    let ptr = SendPtr(out.as_mut_ptr());
    for_chunks(input.len(), |s, e| {
        // SAFETY: disjoint ranges of `out`, which outlives the call.
        let o = unsafe { ptr.slice(s, e) };
        dequantize_run(d, &input[s..e], o, isa);
    });
    Ok(())
}

/// `(N, C, P)`: batch, channels and pixels (the product of the spatial sizes) of a logical
/// `[N, C, spatial...]` shape, after checking the tier, the rank, the element count and that the
/// input and output buffers hold that many elements.
fn ncp(
    op: &'static str,
    shape: &[usize],
    input_len: usize,
    out_len: usize,
    isa: Isa,
) -> KernelResult<(usize, usize, usize)> {
    isa.ensure_supported()?;
    if shape.len() < 2 {
        return Err(invalid(op, "shape", shape, "must have rank 2 or more: [N, C, spatial...]"));
    }
    let total = numel(op, shape)?;
    check_len(op, "input length", input_len, total)?;
    check_len(op, "output length", out_len, total)?;
    Ok((shape[0], shape[1], shape[2..].iter().product()))
}

/// Tile geometry for `c` channels: (channels per tile, pixels per tile). A tile holds at most
/// [`TILE_BYTES`] bytes, and at least 64 pixels, so that few channels still give long runs.
fn tile_dims(c: usize) -> (usize, usize) {
    let cb = c.min(TILE);
    (cb, (TILE_BYTES / cb).max(TILE) / 64 * 64)
}

/// Runs `f(tile, n, p0, p1)` over every batch index and pixel range of at most `pb` pixels, on one
/// thread for small tensors, otherwise split evenly over the rayon threads; each task gets its own
/// tile buffer of [`TILE_BYTES`] bytes.
fn par_tiles(n: usize, p: usize, c: usize, pb: usize, f: impl Fn(&mut [u8], usize, usize, usize) + Sync) {
    let per_n = p.div_ceil(pb);
    let units = n * per_n;
    let run = |u0: usize, u1: usize| {
        let mut tile = vec![0u8; TILE_BYTES.max(pb)];
        for u in u0..u1 {
            let (b, t) = (u / per_n, u % per_n);
            f(&mut tile, b, t * pb, ((t + 1) * pb).min(p));
        }
    };
    let threads = rayon::current_num_threads();
    if n * p * c <= PAR_CHUNK || threads == 1 || units <= 1 {
        run(0, units);
    } else {
        let part = units.div_ceil(threads);
        (0..units.div_ceil(part)).into_par_iter().for_each(|t| run(t * part, ((t + 1) * part).min(units)));
    }
}

/// Quantizes an NCHW-ordered f32 tensor of logical shape `shape` (`[N, C, spatial...]`, rank 2 or
/// more) into channels-last quint8: `out` is `[N, spatial..., C]`, so the value of `input[n, c, p]`
/// lands at `out[(n * P + p) * C + c]` (`P` the number of pixels). A rank-2 `[N, C]` tensor (and
/// any with one channel or one pixel) has the same order in both layouts and is a plain
/// [`quantize_u8`].
///
/// Values are exactly [`qcore::AffineQuantizer::quantize`]'s on every tier.
///
/// Errors: a rank below 2, `input` or `out` whose length is not the shape's element count, an
/// invalid scale or zero point, an unsupported tier.
pub fn quantize_to_channels_last(
    input: &[f32],
    shape: &[usize],
    q: PerTensor,
    out: &mut [u8],
    isa: Isa,
) -> KernelResult<()> {
    const OP: &str = "quantize_to_channels_last";
    let (n, c, p) = ncp(OP, shape, input.len(), out.len(), isa)?;
    if c <= 1 || p <= 1 {
        return quantize_u8(input, q, out, isa);
    }
    let quantizer = q.quantizer(QDType::QUInt8)?;
    let (_, pb) = tile_dims(c);
    let ptr = SendPtr(out.as_mut_ptr());
    par_tiles(n, p, c, pb, |tile, b, p0, p1| {
        let w = p1 - p0;
        // SAFETY: the pixels [p0, p1) of image b are `out[(b*P + p0)*C .. (b*P + p1)*C]`, a range
        // no other tile writes; `out` outlives the call.
        let dst = unsafe { ptr.slice((b * p + p0) * c, (b * p + p1) * c) };
        for c0 in (0..c).step_by(TILE) {
            let cb = (c - c0).min(TILE);
            for j in 0..cb {
                let src = &input[(b * c + c0 + j) * p + p0..][..w];
                quantize_run(&quantizer, src, &mut tile[j * pb..j * pb + w], isa);
            }
            transpose::bytes(&tile[..cb * pb], pb, cb, w, &mut dst[c0..], c, isa);
        }
    });
    Ok(())
}

/// Dequantizes a channels-last quint8 tensor (`[N, spatial..., C]`) of logical shape `shape`
/// (`[N, C, spatial...]`, rank 2 or more) into NCHW-ordered f32: `out[(n * C + c) * P + p] =
/// dequantize(input[(n * P + p) * C + c])`. Values are exactly [`qcore::dequantize_val`]'s on every
/// tier. A tensor with one channel or one pixel is a plain [`dequantize_u8`].
///
/// Errors: a rank below 2, `input` or `out` whose length is not the shape's element count, an
/// invalid scale or zero point, an unsupported tier.
pub fn dequantize_from_channels_last(
    input: &[u8],
    shape: &[usize],
    q: PerTensor,
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<()> {
    const OP: &str = "dequantize_from_channels_last";
    let (n, c, p) = ncp(OP, shape, input.len(), out.len(), isa)?;
    if c <= 1 || p <= 1 {
        return dequantize_u8(input, q, out, isa);
    }
    let d = Dequantizer::new(q)?;
    let (_, pb) = tile_dims(c);
    let ptr = SendPtr(out.as_mut_ptr());
    par_tiles(n, p, c, pb, |tile, b, p0, p1| {
        let w = p1 - p0;
        let src = &input[(b * p + p0) * c..(b * p + p1) * c];
        for c0 in (0..c).step_by(TILE) {
            let cb = (c - c0).min(TILE);
            transpose::bytes(&src[c0..], c, w, cb, &mut tile[..cb * pb], pb, isa);
            for j in 0..cb {
                let start = (b * c + c0 + j) * p + p0;
                // SAFETY: pixels [p0, p1) of channel c0 + j of image b: a range of `out` no other
                // tile or channel writes; `out` outlives the call.
                let o = unsafe { ptr.slice(start, start + w) };
                dequantize_run(d, &tile[j * pb..j * pb + w], o, isa);
            }
        }
    });
    Ok(())
}
