//! Implicit-GEMM convolution (no im2col, `Kernel::implicit` on every tier): stride 1, one group,
//! input channels a multiple of 64.
//!
//! Each task copies the input rows its output rows need into a scratch slab padded with the
//! activation zero point, `row_len = W + 2 * pad_w` pixels per row. The window of output pixel
//! `(y, x)` of the task starts at slab pixel `v = y * row_len + x`, and its tap `(ky, kx)` at
//! `v + ky * row_len + kx`: the same offset for every pixel, so each 64-channel step of K is read
//! from the slab in place (`ImplicitRows`). The vector tiers address each output pixel's row; AMX
//! loads tiles of 16 consecutive padded pixels `C` bytes apart and drops the `kw - 1` past each
//! output row's end. The reduction order is im2col's `(kh, kw, input channel)`, with the same
//! packed weights, so the sums are the same exact integers.

use rayon::prelude::*;

use crate::gemm::kernel::{IMPLICIT_STEP as STEP, ImplicitFn, ImplicitRows, padded_rows};
use crate::gemm::{Epi, OutPtr, PackedWeights, RowsAt, SharedEpi, SharedOut, split_part, with_scratch};
use crate::small_copy::{copy_small, fill_small};

/// Rows of an AMX tile: every block has at least this many.
const MIN_ROWS: usize = 16;

/// The geometry of an implicit-GEMM convolution over `images` channels-last images.
pub(super) struct Implicit<'a> {
    pub input: &'a [u8],
    pub images: usize,
    pub c: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub pad: [usize; 2],
    pub za: u8,
}

/// True if `c` input channels make whole 64-byte K steps.
pub(super) fn channels_fit(c: usize) -> bool {
    c.is_multiple_of(STEP)
}

impl Implicit<'_> {
    /// True if each image has at least one AMX tile of padded rows.
    pub(super) fn fits(&self) -> bool {
        self.padded_rows(self.out_hw[0]) >= MIN_ROWS
    }

    fn row_len(&self) -> usize {
        self.in_hw[1] + 2 * self.pad[1]
    }

    /// The padded pixels spanned by `n` output rows.
    fn padded_rows(&self, n: usize) -> usize {
        padded_rows(n, self.row_len(), self.out_hw[1])
    }

    /// Fills `slab` with the padded input rows of output rows `y0..y0 + n` of image `b`.
    fn fill_slab(&self, b: usize, y0: usize, n: usize, slab: &mut Vec<u8>) {
        let (c, len) = (self.c, self.row_len());
        let [ih, iw] = self.in_hw;
        let slab_rows = n + self.kernel[0] - 1;
        slab.resize(slab_rows * len * c, 0);
        let (left, right) = (self.pad[1] * c, (self.pad[1] + iw) * c);
        for (r, dst) in slab.chunks_exact_mut(len * c).enumerate() {
            let iy = (y0 + r).checked_sub(self.pad[0]).filter(|&iy| iy < ih);
            match iy {
                Some(iy) => {
                    let src = &self.input[((b * ih + iy) * iw) * c..][..iw * c];
                    fill_small(&mut dst[..left], self.za);
                    copy_small(&mut dst[left..right], src);
                    fill_small(&mut dst[right..], self.za);
                }
                None => fill_small(dst, self.za),
            }
        }
    }

    /// Runs the convolution with `w` (packed in `(kh, kw, input channel)` order) through
    /// `implicit`, into `out` (`[images, out_h, out_w, w.n()]`), split over the current rayon pool.
    ///
    /// # Safety
    /// `self.fits()`; `channels_fit(c)`; `implicit` is the kernel `w` runs on this CPU; `w` has no
    /// weight zero points and K = `kh * kw * c`; `out` holds the output's elements of `epi`'s kind;
    /// `epi` belongs to `w`.
    pub(super) unsafe fn run(&self, w: &PackedWeights, implicit: ImplicitFn, epi: Epi, out: OutPtr) {
        let [oh, ow] = self.out_hw;
        let [kh, kw] = self.kernel;
        let (c, len, n) = (self.c, self.row_len(), w.n());
        let step_offsets: Vec<usize> = (0..kh * kw)
            .flat_map(|t| (0..c / STEP).map(move |s| ((t / kw) * len + t % kw) * c + s * STEP))
            .collect();
        let conv = ImplicitRows { step_offsets: &step_offsets, row_len: len, row_valid: ow };
        let split = self.split(w);
        let (out, epi) = (SharedOut(out), SharedEpi(epi));
        let task = |i: usize| {
            let (b, rest) =
                (i / (split.row_parts * split.panel_parts), i % (split.row_parts * split.panel_parts));
            let r = split_part(split.units, split.row_parts, 1, rest / split.panel_parts);
            let panels = split_part(w.panels_per_group(), split.panel_parts, 1, rest % split.panel_parts);
            // The last part of an image takes the rows past the last whole unit.
            let (y0, y1) = (r.start * split.unit, if r.end == split.units { oh } else { r.end * split.unit });
            with_scratch(|s| {
                self.fill_slab(b, y0, y1 - y0, &mut s.a);
                let rows = RowsAt {
                    a: s.a.as_ptr(),
                    lda: c,
                    rows: (y1 - y0) * ow,
                    row_bytes: w.k(),
                    rowsums: std::ptr::null(),
                };
                let blk = w.block(0, panels, rows, out.get().wrapping_add((b * oh + y0) * ow * n), n);
                // SAFETY: the slab holds `y1 - y0 + kh - 1` padded rows of `len` pixels, so the
                // last step of the last padded row (`padded_rows - 1 + (kh - 1) * len + kw - 1`
                // pixels in, 64 bytes of a pixel's C) ends at the slab's end; the block has at
                // least 16 padded rows (`fits`, `unit`); its output rows and panels are this
                // task's, disjoint from every other task's; the rest is the caller's contract.
                unsafe { implicit(&blk, epi.get(), &conv) }
            })
        };
        let tasks = self.images * split.row_parts * split.panel_parts;
        if tasks == 1 {
            task(0);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    /// How [`Self::run`] splits the work over the current rayon pool: each image's output rows
    /// in `row_parts` runs of whole `unit`s (the fewest output rows that make 16 padded rows),
    /// times `panel_parts` runs of weight panels.
    fn split(&self, w: &PackedWeights) -> Split {
        let oh = self.out_hw[0];
        let unit = (1..=oh).find(|&r| self.padded_rows(r) >= MIN_ROWS).unwrap_or(oh);
        let units = oh / unit;
        let threads = rayon::current_num_threads();
        let macs = self.images * oh * self.out_hw[1] * w.n() * w.k();
        let (row_parts, panel_parts) = if threads <= 1 || macs < 1 << 21 {
            (1, 1)
        } else if self.images * units >= threads * 8 {
            // Rows, several runs per thread when there are many, so that a worker that wakes
            // late still takes its share.
            ((threads * 4).div_ceil(self.images).clamp(1, units), 1)
        } else if w.panels_per_group() >= threads && self.images < threads {
            // Few rows: each thread its part of the weights (the slab copied once per part).
            (1, threads)
        } else {
            (threads.div_ceil(self.images).clamp(1, units), 1)
        };
        Split { unit, units, row_parts, panel_parts }
    }
}

/// The parts of [`Implicit::run`]'s work: per image, `row_parts x panel_parts` tasks.
struct Split {
    unit: usize,
    units: usize,
    row_parts: usize,
    panel_parts: usize,
}
