//! Int8 convolution on channels-last (NWC / NHWC / NDHWC) u8 activations: 1-3 spatial
//! dimensions, stride, zero padding (with the activation zero point, i.e. real 0) or reflect
//! padding, dilation, groups and depthwise, with the output pipelines of [`crate::gemm`].
//!
//! Weights come in PyTorch's layout `[out_channels, in_channels / groups, *kernel]` and are packed
//! once by [`PackedConv::new`], which picks the path:
//!
//! * **depthwise** (`groups == in_channels == out_channels`): a direct kernel vectorised over
//!   channels, `Σ_taps (a - a_zp) * (w - w_zp)` in i32, any kernel size (3x3 and 5x5 included),
//!   stride, dilation and padding; padding taps are skipped (zero padding) or mirrored (reflect);
//! * **pointwise** (all kernel sizes 1, stride 1, no padding): the GEMM straight on the input
//!   rows, no copy;
//! * **implicit GEMM** (stride 1, one group, zero padding, no dilation or depth taps, input
//!   channels a multiple of 64, no weight zero points, at least 16 block rows per image): each
//!   task pads its input rows once into scratch and the GEMM reads every tap's rows from there in
//!   place (`implicit`), no im2col;
//! * otherwise **im2col**: blocks of output pixels are gathered into per-thread scratch (padding
//!   taps filled with the activation zero point) and multiplied by the packed GEMM kernel; the
//!   reduction order is `(kd, kh, kw, input channel)`.
//!
//! Every path gives the bits of the scalar oracle: PyTorch's quantized conv with exact i32
//! accumulation and FBGEMM's output requantization.

mod implicit;

use crate::gemm::{
    self, ASource, Channels, DirectA, DwJob, Output, OutputPipeline, PackedWeights, SharedEpi, SharedOut,
    WeightQParams, mul, nonzero, split_count, split_part, with_scratch,
};
use crate::small_copy::{copy_small, fill_small};
use crate::util::check_len;
use crate::{Isa, KernelError, KernelResult};
use rayon::prelude::*;

/// How the input is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingMode {
    /// With the activation zero point (PyTorch's `padding_mode="zeros"` on quantized tensors).
    Zeros,
    /// Mirrored without repeating the edge (`padding_mode="reflect"`); needs padding < input size.
    Reflect,
}

/// The geometry of a convolution. Per-axis vectors have one entry per spatial dimension (1, 2 or
/// 3), outermost first (`[D, H, W]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvParams {
    /// Input channels C.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size per axis.
    pub kernel: Vec<usize>,
    /// Stride per axis.
    pub stride: Vec<usize>,
    /// Padding per axis (both sides).
    pub padding: Vec<usize>,
    /// Dilation per axis.
    pub dilation: Vec<usize>,
    /// Groups; divides both channel counts.
    pub groups: usize,
    /// Zero or reflect padding.
    pub padding_mode: PaddingMode,
}

impl ConvParams {
    /// A convolution with the given kernel (1-3 axes), stride 1, no padding, dilation 1, 1 group.
    pub fn new(in_channels: usize, out_channels: usize, kernel: &[usize]) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: kernel.to_vec(),
            stride: vec![1; kernel.len()],
            padding: vec![0; kernel.len()],
            dilation: vec![1; kernel.len()],
            groups: 1,
            padding_mode: PaddingMode::Zeros,
        }
    }

    /// Sets the stride per axis.
    pub fn stride(mut self, stride: &[usize]) -> Self {
        self.stride = stride.to_vec();
        self
    }

    /// Sets the padding per axis.
    pub fn padding(mut self, padding: &[usize]) -> Self {
        self.padding = padding.to_vec();
        self
    }

    /// Sets the dilation per axis.
    pub fn dilation(mut self, dilation: &[usize]) -> Self {
        self.dilation = dilation.to_vec();
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets the padding mode.
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.padding_mode = mode;
        self
    }

    /// The output size per axis for an input of `in_spatial`, or an error if the kernel does not
    /// fit the padded input.
    pub fn output_spatial(&self, in_spatial: &[usize]) -> KernelResult<Vec<usize>> {
        const OP: &str = "conv";
        check_len(OP, "input spatial dimensions", in_spatial.len(), self.kernel.len())?;
        let mut out = Vec::with_capacity(in_spatial.len());
        for (ax, &len) in in_spatial.iter().enumerate() {
            nonzero(OP, "input spatial size", len)?;
            let (k, s, p, d) = (self.kernel[ax], self.stride[ax], self.padding[ax], self.dilation[ax]);
            if self.padding_mode == PaddingMode::Reflect && p >= len {
                return Err(KernelError::InvalidArgument {
                    op: OP,
                    what: "padding",
                    value: p.to_string(),
                    reason: "reflect padding must be smaller than the input size",
                });
            }
            let span = d.checked_mul(k - 1).and_then(|x| x.checked_add(1));
            let padded = p.checked_mul(2).and_then(|p2| len.checked_add(p2));
            match (span, padded) {
                (Some(span), Some(padded)) if span <= padded => out.push((padded - span) / s + 1),
                _ => {
                    return Err(KernelError::InvalidArgument {
                        op: OP,
                        what: "input spatial size",
                        value: len.to_string(),
                        reason: "the dilated kernel is larger than the padded input",
                    });
                }
            }
        }
        Ok(out)
    }

    fn validate(&self) -> KernelResult<()> {
        const OP: &str = "PackedConv";
        let rank = self.kernel.len();
        if !(1..=3).contains(&rank) {
            return Err(KernelError::InvalidArgument {
                op: OP,
                what: "kernel dimensions",
                value: rank.to_string(),
                reason: "conv1d, conv2d and conv3d take 1, 2 or 3 kernel sizes",
            });
        }
        check_len(OP, "stride dimensions", self.stride.len(), rank)?;
        check_len(OP, "padding dimensions", self.padding.len(), rank)?;
        check_len(OP, "dilation dimensions", self.dilation.len(), rank)?;
        for ax in 0..rank {
            nonzero(OP, "kernel size", self.kernel[ax])?;
            nonzero(OP, "stride", self.stride[ax])?;
            nonzero(OP, "dilation", self.dilation[ax])?;
        }
        nonzero(OP, "input channels", self.in_channels)?;
        nonzero(OP, "output channels", self.out_channels)?;
        nonzero(OP, "groups", self.groups)?;
        for (what, c) in [("input channels", self.in_channels), ("output channels", self.out_channels)] {
            if c % self.groups != 0 {
                return Err(KernelError::InvalidArgument {
                    op: OP,
                    what: "groups",
                    value: self.groups.to_string(),
                    reason: if what == "input channels" {
                        "groups must divide the input channels"
                    } else {
                        "groups must divide the output channels"
                    },
                });
            }
        }
        Ok(())
    }

    /// The per-axis parameters as `[D, H, W]` triples (missing leading axes of size 1).
    fn axes(&self) -> [[usize; 3]; 4] {
        let lift = |v: &[usize], fill: usize| {
            let mut t = [fill; 3];
            t[3 - v.len()..].copy_from_slice(v);
            t
        };
        [lift(&self.kernel, 1), lift(&self.stride, 1), lift(&self.padding, 0), lift(&self.dilation, 1)]
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Path {
    /// `implicit`: the layer suits [`implicit::Implicit`] (channels, no weight zero points,
    /// stride 1, one group, zero padding, no dilation, no depth taps), which runs it for inputs
    /// large enough.
    Gemm {
        weights: PackedWeights,
        pointwise: bool,
        implicit: bool,
    },
    Depthwise {
        channels: Channels,
        weights: Vec<i32>,
        cpad: usize,
    },
}

/// A convolution with packed weights, for one [`Isa`] tier.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedConv {
    params: ConvParams,
    isa: Isa,
    path: Path,
}

impl PackedConv {
    /// Packs `weights` (`[out_channels, in_channels / groups, *kernel]` row-major qint8) for
    /// [`Isa::active`].
    pub fn new(
        params: ConvParams,
        weights: &[i8],
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
    ) -> KernelResult<Self> {
        Self::with_isa(params, weights, qparams, bias, Isa::active())
    }

    /// As [`PackedConv::new`], for an explicit tier (an error if this CPU lacks it).
    pub fn with_isa(
        params: ConvParams,
        weights: &[i8],
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> KernelResult<Self> {
        const OP: &str = "PackedConv";
        params.validate()?;
        isa.ensure_supported()?;
        let taps = params.kernel.iter().try_fold(1usize, |acc, &k| mul(OP, "kernel size", acc, k))?;
        let g = params.groups;
        let (cg, ocg) = (params.in_channels / g, params.out_channels / g);
        let k = mul(OP, "K (kernel x input channels per group)", taps, cg)?;
        let oc = params.out_channels;
        check_len(OP, "weight length", weights.len(), mul(OP, "weight length", oc, k)?)?;
        let depthwise = g == params.in_channels && g == oc;
        let path = if depthwise {
            let channels = Channels::new(OP, weights, oc, taps, qparams, bias)?;
            let cpad = oc.div_ceil(16) * 16;
            let mut dw = vec![0i32; taps * cpad];
            for c in 0..oc {
                for t in 0..taps {
                    dw[t * cpad + c] = i32::from(weights[c * taps + t]) - channels.w_zp[c];
                }
            }
            Path::Depthwise { channels, weights: dw, cpad }
        } else {
            // [oc][ic][tap] -> [oc][tap][ic]: the im2col reduction order.
            let mut perm = vec![0i8; weights.len()];
            for o in 0..oc {
                for ic in 0..cg {
                    for t in 0..taps {
                        perm[o * k + t * cg + ic] = weights[(o * cg + ic) * taps + t];
                    }
                }
            }
            let weights = PackedWeights::grouped(OP, &perm, g, ocg, k, qparams, bias, isa)?;
            let pointwise = params.kernel.iter().all(|&x| x == 1)
                && params.stride.iter().all(|&x| x == 1)
                && params.padding.iter().all(|&x| x == 0);
            let [kernel, stride, pad, dilation] = params.axes();
            // The implicit GEMM needs whole 64-byte K steps and no row sums (no weight zero
            // points).
            let implicit = !pointwise
                && implicit::channels_fit(cg)
                && !weights.has_w_zp()
                && g == 1
                && params.padding_mode == PaddingMode::Zeros
                && kernel[0] == 1
                && pad[0] == 0
                && stride == [1; 3]
                && dilation == [1; 3];
            Path::Gemm { weights, pointwise, implicit }
        };
        Ok(Self { params, isa, path })
    }

    /// The geometry.
    pub fn params(&self) -> &ConvParams {
        &self.params
    }

    /// The tier every call runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// True if the depthwise kernel runs this convolution.
    pub fn is_depthwise(&self) -> bool {
        matches!(self.path, Path::Depthwise { .. })
    }

    /// True if the implicit-GEMM path (no im2col: tiles read from padded input rows) runs this
    /// convolution for inputs whose output spans at least 16 padded pixels per image (one AMX
    /// tile; with fewer, im2col does).
    pub fn is_implicit(&self) -> bool {
        matches!(self.path, Path::Gemm { implicit: true, .. })
    }

    /// True if the pointwise (no im2col) path runs this convolution.
    pub fn is_pointwise(&self) -> bool {
        matches!(self.path, Path::Gemm { pointwise: true, .. })
    }

    fn channels(&self) -> &Channels {
        match &self.path {
            Path::Gemm { weights, .. } => &weights.channels,
            Path::Depthwise { channels, .. } => channels,
        }
    }

    /// A u8 output stage (see [`PackedWeights::output_u8`]).
    pub fn output_u8(
        &self,
        a_scale: f64,
        a_zero_point: u8,
        out_scale: f64,
        out_zero_point: u8,
        relu: bool,
    ) -> KernelResult<OutputPipeline> {
        self.channels().output_u8(a_scale, a_zero_point, out_scale, out_zero_point, relu)
    }

    /// An f32 output stage (see [`PackedWeights::output_f32`]).
    pub fn output_f32(&self, a_scale: f64, a_zero_point: u8, relu: bool) -> KernelResult<OutputPipeline> {
        self.channels().output_f32(a_scale, a_zero_point, relu)
    }

    /// An i32 output stage (see [`PackedWeights::output_i32`]).
    pub fn output_i32(&self, a_zero_point: u8) -> OutputPipeline {
        self.channels().output_i32(a_zero_point)
    }

    /// Runs the convolution on `input`, `[batch, *in_spatial, in_channels]` channels-last u8 with
    /// the activation zero point of `pipeline`, into `out`, `[batch, *out_spatial, out_channels]`
    /// (see [`ConvParams::output_spatial`]). Split over the current rayon pool.
    pub fn run(
        &self,
        input: &[u8],
        batch: usize,
        in_spatial: &[usize],
        pipeline: &OutputPipeline,
        mut out: Output<'_>,
    ) -> KernelResult<()> {
        const OP: &str = "conv";
        nonzero(OP, "batch", batch)?;
        let p = &self.params;
        let out_spatial = p.output_spatial(in_spatial)?;
        let pixels_in = in_spatial.iter().try_fold(batch, |acc, &x| mul(OP, "input size", acc, x))?;
        let pixels_out = out_spatial.iter().try_fold(batch, |acc, &x| mul(OP, "output size", acc, x))?;
        check_len(OP, "input length", input.len(), mul(OP, "input length", pixels_in, p.in_channels)?)?;
        let out_len = mul(OP, "output length", pixels_out, p.out_channels)?;
        pipeline.check(OP, self.channels(), &mut out, out_len)?;
        let [kernel, stride, pad, dilation] = p.axes();
        let lift = |v: &[usize]| {
            let mut t = [1; 3];
            t[3 - v.len()..].copy_from_slice(v);
            t
        };
        let (in3, out3) = (lift(in_spatial), lift(&out_spatial));
        let reflect = p.padding_mode == PaddingMode::Reflect;
        let za = pipeline.activation_zero_point();
        match &self.path {
            Path::Depthwise { weights, cpad, .. } => {
                let kernel_kind = gemm::kernel_for(self.isa, || false);
                let job = DwJob {
                    input: input.as_ptr(),
                    in_dims: in3,
                    c: p.in_channels,
                    out_dims: out3,
                    kernel,
                    stride,
                    pad,
                    dilation,
                    reflect,
                    weights: weights.as_ptr(),
                    cpad: *cpad,
                    a_zp: i32::from(za),
                    out: out.ptr(),
                };
                let job = SharedJob(job);
                let epi = SharedEpi(pipeline.epi());
                let threads = rayon::current_num_threads();
                let work = pixels_out * p.out_channels * kernel.iter().product::<usize>();
                // Several chunks per thread: a worker that wakes late still takes its share.
                let parts = if work < 1 << 18 || threads <= 1 { 1 } else { threads * 8 };
                let chunks = split_count(pixels_out, parts, 1);
                let run = |i: usize| {
                    let pixels = split_part(pixels_out, chunks, 1, i);
                    with_scratch(|s| {
                        // SAFETY: the input and output lengths were checked against the geometry,
                        // the weights hold taps x cpad entries, the pipeline belongs to these
                        // weights, the tier was checked at packing; chunks are disjoint pixels.
                        unsafe { kernel_kind.depthwise(job.get(), epi.get(), pixels, &mut s.taps) }
                    })
                };
                if chunks == 1 {
                    run(0);
                } else {
                    (0..chunks).into_par_iter().for_each(run);
                }
            }
            Path::Gemm { weights, pointwise, implicit: may_implicit } => {
                let cg = p.in_channels / p.groups;
                let kernel_kind = weights.kernel(|| za < 128 && gemm::all_7bit(input));
                let out_ptr = SharedOut(out.ptr());
                let geometry = implicit::Implicit {
                    input,
                    images: batch * in3[0],
                    c: p.in_channels,
                    in_hw: [in3[1], in3[2]],
                    out_hw: [out3[1], out3[2]],
                    kernel: [kernel[1], kernel[2]],
                    pad: [pad[1], pad[2]],
                    za,
                };
                if *may_implicit && geometry.fits() {
                    // SAFETY: the geometry fits; at packing the layer was checked to have whole
                    // 64-byte channel steps, stride 1, one group and no depth taps (so K = kh *
                    // kw * C) and weights without zero points; the kernel is theirs; the input
                    // length was checked above, the output and the pipeline against the weights.
                    unsafe { geometry.run(weights, kernel_kind.implicit, pipeline.epi(), out_ptr.get()) };
                } else if *pointwise {
                    let src = DirectA { a: input.as_ptr(), lda: p.in_channels, group_stride: cg };
                    // SAFETY: `input` holds pixels_out rows of C bytes (stride 1, no padding, so
                    // pixels_out == pixels_in), each group reads its `cg` channels; `out` holds
                    // pixels_out rows of out_channels; pipeline and tier were checked.
                    unsafe {
                        gemm::run_gemm(
                            weights,
                            kernel_kind,
                            pixels_out,
                            &src,
                            pipeline,
                            out_ptr.get(),
                            p.out_channels,
                        )
                    };
                } else {
                    let src = Im2col {
                        input: input.as_ptr(),
                        input_len: input.len(),
                        c: p.in_channels,
                        cg,
                        in3,
                        out3,
                        kernel,
                        stride,
                        pad,
                        dilation,
                        reflect,
                        za,
                    };
                    // SAFETY: the im2col source writes K = taps x cg bytes per row into scratch from
                    // pixels inside the checked input; `out` holds pixels_out rows of out_channels.
                    unsafe {
                        gemm::run_gemm(
                            weights,
                            kernel_kind,
                            pixels_out,
                            &src,
                            pipeline,
                            out_ptr.get(),
                            p.out_channels,
                        )
                    };
                }
            }
        }
        // SAFETY: the output was checked for `out_len` elements, and every path above writes
        // all of them: the depthwise chunks and the GEMM rows cover every output pixel, each
        // with all of its channels.
        unsafe { out.written(out_len) };
        Ok(())
    }
}

/// A depthwise job shared read-only by the threads of one call.
struct SharedJob(DwJob);
// SAFETY: the job's pointers are only read (input, weights) or written at disjoint pixels (out),
// and the buffers outlive the parallel section.
unsafe impl Sync for SharedJob {}

impl SharedJob {
    fn get(&self) -> &DwJob {
        &self.0
    }
}

/// The im2col rows of one group: output pixel `r` -> `[(kd, kh, kw, ic)]` input values.
struct Im2col {
    input: *const u8,
    input_len: usize,
    c: usize,
    cg: usize,
    in3: [usize; 3],
    out3: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dilation: [usize; 3],
    reflect: bool,
    za: u8,
}

// SAFETY: the input is only read, and it outlives every parallel section that uses the source.
unsafe impl Sync for Im2col {}

impl ASource for Im2col {
    /// The scratch rows are `lda` bytes apart and every byte of them is initialized.
    fn row_bytes(&self, _k: usize, lda: usize) -> usize {
        lda
    }

    fn rows(&self, g: usize, r0: usize, rows: usize, kq: usize, buf: &mut Vec<u8>) -> (*const u8, usize) {
        use crate::gemm::tap_coord;
        let lda = kq * 4;
        if buf.len() < rows * lda {
            buf.resize(rows * lda, 0);
        }
        let [od, oh, ow] = self.out3;
        let [id, ih, iw] = self.in3;
        let (cg, c) = (self.cg, self.c);
        let [_, _, kw_len] = self.kernel;
        // With one group and no dilation along W, the taps of one kernel row are one run of
        // `kw * c` input bytes whenever the row lies inside the input.
        let runs = cg == c && self.dilation[2] == 1;
        const MAX_ROWS: usize = 64;
        let nrows = self.kernel[0] * self.kernel[1];
        let mut kernel_rows = [None; MAX_ROWS];
        let mut cached = None;
        let (mut b, rest) = (r0 / (od * oh * ow), r0 % (od * oh * ow));
        let (mut z, mut y, mut x) = (rest / (oh * ow), rest / ow % oh, rest % ow);
        let mut i = 0;
        while i < rows {
            if x == ow {
                x = 0;
                y += 1;
                if y == oh {
                    y = 0;
                    z += 1;
                    if z == od {
                        z = 0;
                        b += 1;
                    }
                }
            }
            let row = &mut buf[i * lda..i * lda + lda];
            // The kernel columns kx_lo..kx_hi of this pixel fall inside the input (one run of
            // input pixels from column x_lo); the others are zero padding, or mirrored (reflect,
            // left to the general path).
            let xs = (x * self.stride[2]) as isize - self.pad[2] as isize;
            let kx_lo = (-xs).clamp(0, kw_len as isize) as usize;
            let kx_hi = (iw as isize - xs).clamp(0, kw_len as isize) as usize;
            let whole = kx_lo == 0 && kx_hi == kw_len;
            // The first input column of a kernel row that lies wholly inside the input.
            let x0 = whole.then_some(xs as usize);
            if runs && nrows <= MAX_ROWS && kx_lo < kx_hi && (whole || !self.reflect) {
                let x_lo = (xs + kx_lo as isize) as usize;
                // The input rows of this output row's kernel rows, computed once per output row.
                if cached != Some((b, z, y)) {
                    cached = Some((b, z, y));
                    let mut r = 0;
                    for kd in 0..self.kernel[0] {
                        let zi =
                            tap_coord(z, kd, self.stride[0], self.pad[0], self.dilation[0], id, self.reflect);
                        for kh in 0..self.kernel[1] {
                            let yi = tap_coord(
                                y,
                                kh,
                                self.stride[1],
                                self.pad[1],
                                self.dilation[1],
                                ih,
                                self.reflect,
                            );
                            kernel_rows[r] = zi.zip(yi).map(|(zi, yi)| ((b * id + zi) * ih + yi) * iw * c);
                            r += 1;
                        }
                    }
                }
                let len = kw_len * c;
                if whole && len <= WIDE_MOVE {
                    // This pixel and the next ones of its output row whose kernel columns all
                    // lie inside the input (up to the block's end), kernel row by kernel row.
                    let x_end = ((iw + self.pad[2] - kw_len) / self.stride[2] + 1).min(ow);
                    let span = (x_end - x).min(rows - i);
                    self.interior_runs(&kernel_rows[..nrows], x_lo, &mut buf[i * lda..(i + span) * lda], lda);
                    i += span;
                    x += span;
                    continue;
                }
                let (lo, hi) = (kx_lo * c, kx_hi * c);
                for (r, dst) in kernel_rows[..nrows].iter().zip(row.chunks_exact_mut(len)) {
                    match r {
                        Some(base) if whole => {
                            // SAFETY: pixels x_lo..x_lo + kw of an input row inside the input
                            // (tap_coord returned its coordinates), each with `c` channels.
                            let src =
                                unsafe { std::slice::from_raw_parts(self.input.add(base + x_lo * c), len) };
                            copy_small(dst, src);
                        }
                        Some(base) => {
                            // SAFETY: pixels x_lo..x_lo + (kx_hi - kx_lo) of an input row inside
                            // the input (tap_coord returned its coordinates; the columns lie in
                            // 0..iw by construction), each with `c` channels.
                            let src = unsafe {
                                std::slice::from_raw_parts(self.input.add(base + x_lo * c), hi - lo)
                            };
                            copy_small(&mut dst[lo..hi], src);
                            fill_small(&mut dst[..lo], self.za);
                            fill_small(&mut dst[hi..], self.za);
                        }
                        None => fill_small(dst, self.za),
                    }
                }
                i += 1;
                x += 1;
                continue;
            }
            let mut pos = 0;
            for kd in 0..self.kernel[0] {
                let zi = tap_coord(z, kd, self.stride[0], self.pad[0], self.dilation[0], id, self.reflect);
                for kh in 0..self.kernel[1] {
                    let yi =
                        tap_coord(y, kh, self.stride[1], self.pad[1], self.dilation[1], ih, self.reflect);
                    if let (true, Some(zi), Some(yi), Some(x0)) = (runs, zi, yi, x0) {
                        let off = (((b * id + zi) * ih + yi) * iw + x0) * c;
                        let len = kw_len * c;
                        // SAFETY: pixels (b, zi, yi, x0..x0 + kw) lie in the input (tap_coord
                        // returns in-range rows, and x0 + kw <= iw), each with `c` channels.
                        let src = unsafe { std::slice::from_raw_parts(self.input.add(off), len) };
                        copy_small(&mut row[pos..pos + len], src);
                        pos += len;
                        continue;
                    }
                    for kw in 0..kw_len {
                        let xi =
                            tap_coord(x, kw, self.stride[2], self.pad[2], self.dilation[2], iw, self.reflect);
                        let dst = &mut row[pos..pos + cg];
                        match (zi, yi, xi) {
                            (Some(zi), Some(yi), Some(xi)) => {
                                let off = (((b * id + zi) * ih + yi) * iw + xi) * c + g * cg;
                                // SAFETY: (b, zi, yi, xi) is a pixel of the input (tap_coord
                                // returns in-range coordinates), which holds `c` channels, and
                                // g * cg + cg <= c.
                                let src = unsafe { std::slice::from_raw_parts(self.input.add(off), cg) };
                                copy_small(dst, src);
                            }
                            _ => fill_small(dst, self.za),
                        }
                        pos += cg;
                    }
                }
            }
            i += 1;
            x += 1;
        }
        (buf.as_ptr(), lda)
    }
}

/// The width of the fixed moves of [`Im2col::interior_runs`].
const WIDE_MOVE: usize = 32;

impl Im2col {
    /// Fills `rows` (im2col rows `lda` bytes apart) for consecutive output pixels of one output
    /// row whose kernel columns all lie inside the input (one group, no dilation along W), the
    /// first pixel's starting at input column `x0`; `kernel_rows[r]` is the offset of kernel row
    /// `r`'s input row, or `None` for a padding row. Kernel row by kernel row, each run of
    /// `kw * c <= WIDE_MOVE` bytes is one fixed `WIDE_MOVE`-byte move where that stays inside the
    /// row and the input: the bytes it writes past its run belong to later runs of the same row,
    /// written after it, or to the row's padding past K (multiplied by zero weights).
    fn interior_runs(&self, kernel_rows: &[Option<usize>], x0: usize, rows: &mut [u8], lda: usize) {
        let c = self.c;
        let len = self.kernel[2] * c;
        let step = self.stride[2] * c;
        for (r, kernel_row) in kernel_rows.iter().enumerate() {
            let slot = r * len;
            let wide = slot + WIDE_MOVE <= lda;
            let dst = rows[slot..].chunks_mut(lda);
            match *kernel_row {
                Some(base) => {
                    for (j, dst) in dst.enumerate() {
                        let at = base + x0 * c + j * step;
                        if wide && at + WIDE_MOVE <= self.input_len {
                            // SAFETY: `WIDE_MOVE` bytes at `at` lie inside the input (checked).
                            let run =
                                unsafe { self.input.add(at).cast::<[u8; WIDE_MOVE]>().read_unaligned() };
                            dst[..WIDE_MOVE].copy_from_slice(&run);
                        } else {
                            // SAFETY: the run's `len` bytes are pixels inside the input row
                            // (the pixel's kernel columns lie inside the input).
                            let run = unsafe { std::slice::from_raw_parts(self.input.add(at), len) };
                            copy_small(&mut dst[..len], run);
                        }
                    }
                }
                None => dst.for_each(|dst| fill_small(&mut dst[..len], self.za)),
            }
        }
    }
}
