//! 2-D convolution summed in the order of PyTorch's CPU convolution on AVX-512 CPUs.
//!
//! PyTorch 2.15 runs a float `conv2d` through oneDNN when the batch has two or more images (or
//! the input is large) and the kernel is larger than 1x1; on an AVX-512 CPU oneDNN picks its
//! `jit:avx512_core` direct kernel, which keeps the input channels in blocks of 16 (`nChw16c`).
//! One call of that kernel sums one block: every output register starts at zero and takes one
//! fused multiply-add per kernel row, kernel column and channel of the block, in that order
//! (padding taps are skipped); the first block's sum is stored plus the bias, each later block's
//! sum is added to the stored output. [`conv2d_onednn`] computes exactly that, so its outputs
//! equal PyTorch's bit for bit for those layers (`docs/NUMERICS.md` §9.1; golden
//! `tools/golden/gen_conv_order.py`). Like [`conv`](super::conv()), its bits depend on the shapes
//! only, never on the CPU, tier or thread count it runs on.

use super::conv::{ConvParams, ConvScratch, Geometry, checked_geometry, shifted_conv2d};
use crate::{Isa, KernelResult};

/// Input channels per block of [`conv2d_onednn`]: one AVX-512 register of floats, oneDNN's
/// `nChw16c` block.
pub const ONEDNN_CHANNEL_BLOCK: usize = 16;

/// 2-D convolution in NCHW (`torch.nn.functional.conv2d`, the arguments of
/// [`conv`](super::conv()) with `D = 2`) summed in oneDNN's AVX-512 order: per group, the input
/// channels in blocks of [`ONEDNN_CHANNEL_BLOCK`]; per block, one chain of fused multiply-adds
/// from 0 over (kernel y, kernel x, channel); the output is `((block 0 + bias) + block 1) + ...`.
/// PyTorch 2.15 computes these bits on an AVX-512 CPU for kernels larger than 1x1 that are not
/// depthwise (those run other oneDNN kernels), with batches of two or more images.
///
/// ```
/// use qkernels::Isa;
/// use qkernels::float::{ConvParams, ConvScratch, conv2d_onednn};
/// // One output of a 1x1 kernel over 17 channels: block 0 sums 16 of them, block 1 the last.
/// let (x, w) = (vec![1.0; 17], vec![0.5; 17]);
/// let mut out = [0.0];
/// let params = ConvParams::<2>::default();
/// let shape = conv2d_onednn(&x, &[1, 17, 1, 1], &w, &[1, 17, 1, 1], Some(&[0.25]), &params, &mut out,
///     &mut ConvScratch::default(), Isa::Scalar)?;
/// assert_eq!((shape, out), (vec![1, 1, 1, 1], [8.75]));
/// # Ok::<(), qkernels::KernelError>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv2d_onednn(
    input: &[f32],
    in_shape: &[usize],
    weight: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    params: &ConvParams<2>,
    out: &mut [f32],
    scratch: &mut ConvScratch,
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    let (oshape, geo) = checked_geometry(input, in_shape, weight, w_shape, bias, params, out, isa)?;
    if out.is_empty() {
        return Ok(oshape);
    }
    let (n, c, o, g) = (in_shape[0], in_shape[1], w_shape[0], params.groups);
    let Geometry { input: isp, output: osp, kernel: ksp, .. } = geo;
    let (cg, og) = (c / g, o / g);
    let (in_plane, out_plane): (usize, usize) = (isp.iter().product(), osp.iter().product());
    let taps: usize = ksp.iter().product();
    let (mut block_weight, mut block_sum) = (Vec::new(), vec![0.0f32; og * out_plane]);
    for gi in 0..g {
        for c0 in (0..cg).step_by(ONEDNN_CHANNEL_BLOCK) {
            let cb = ONEDNN_CHANNEL_BLOCK.min(cg - c0);
            // The block's weights as their own [og, cb, kh, kw] tensor.
            block_weight.clear();
            for row in weight[gi * og * cg * taps..(gi + 1) * og * cg * taps].chunks(cg * taps) {
                block_weight.extend_from_slice(&row[c0 * taps..(c0 + cb) * taps]);
            }
            for b in 0..n {
                let first = (b * c + gi * cg + c0) * in_plane;
                let x = &input[first..first + cb * in_plane];
                let y = &mut out[(b * o + gi * og) * out_plane..(b * o + (gi + 1) * og) * out_plane];
                // shifted_conv2d without a bias: per output, from 0 over (ky, kx, channel).
                if c0 == 0 {
                    shifted_conv2d(x, &block_weight, None, y, scratch, cb, og, geo, isa);
                    if let Some(bias) = bias {
                        for (row, &bv) in y.chunks_mut(out_plane).zip(&bias[gi * og..(gi + 1) * og]) {
                            row.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                } else {
                    shifted_conv2d(x, &block_weight, None, &mut block_sum, scratch, cb, og, geo, isa);
                    y.iter_mut().zip(&block_sum).for_each(|(v, s)| *v += s);
                }
            }
        }
    }
    Ok(oshape)
}
