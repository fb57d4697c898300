//! Quantized elementwise ops with PyTorch numerics: add, mul, scalar add / mul, cat, activations.
//!
//! Every function works on plain slices of quantized values ([`QElem`]: `u8` for quint8, `i8` for
//! qint8) with per-tensor parameters ([`PerTensor`]) and an explicit [`Isa`] tier, so a test can
//! run every tier. Output buffers are supplied by the caller; nothing allocates per call.
//!
//! * Binary ops ([`add`], [`mul`], [`binary`] with broadcasting) are bit-exact with
//!   [`qcore::requant::AddRequant`] and [`qcore::requant::MulRequant`] on every tier.
//! * Ops of one input (every activation, [`add_scalar`], [`mul_scalar`], the requantization
//!   inside [`cat`]) are a 256-entry lookup table ([`Lut`]) built once from the element rule and
//!   applied with a SIMD shuffle.

pub(crate) mod consts;
mod lut;
mod qelem;

use qcore::QDType;
use qcore::requant::{AddRequant, MulRequant, ScalarOp};
use rayon::prelude::*;

use crate::util::{PAR_CHUNK, SendPtr, check_len, for_chunks, invalid, numel};
use crate::{Isa, KernelError, KernelResult};
use consts::{AddConsts, MulConsts};

pub use lut::{Dequant, Lut, Unary};
pub use qcore::PerTensor;
pub use qelem::QElem;
pub(crate) use qelem::{bytes, bytes_mut};

/// Which binary op [`binary`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `quantized::add`.
    Add,
    /// `quantized::add_relu`.
    AddRelu,
    /// `quantized::mul`.
    Mul,
    /// `quantized::mul_relu`.
    MulRelu,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::AddRelu => "add_relu",
            BinaryOp::Mul => "mul",
            BinaryOp::MulRelu => "mul_relu",
        }
    }
}

/// The prepared element rule of a binary op: the qcore oracle plus the constants SIMD tiers use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BinaryPlan {
    Add { oracle: AddRequant, k: AddConsts },
    Mul { oracle: MulRequant, k: MulConsts },
}

impl BinaryPlan {
    fn new(op: BinaryOp, a: PerTensor, b: PerTensor, out: PerTensor, dtype: QDType) -> KernelResult<Self> {
        let relu = matches!(op, BinaryOp::AddRelu | BinaryOp::MulRelu);
        Ok(match op {
            BinaryOp::Add | BinaryOp::AddRelu => {
                let oracle = AddRequant::new(a.pair(), b.pair(), out.pair(), dtype, relu)?;
                let q = out.quantizer(dtype)?;
                let k = AddConsts {
                    sa: a.scale as f32,
                    pa: a.scale as f32 * -(a.zero_point as f32),
                    sb: b.scale as f32,
                    pb: b.scale as f32 * -(b.zero_point as f32),
                    inv: q.inv_scale(),
                    zp: q.zero_point(),
                    relu,
                };
                BinaryPlan::Add { oracle, k }
            }
            BinaryOp::Mul | BinaryOp::MulRelu => {
                let oracle = MulRequant::new(a.pair(), b.pair(), out.pair(), dtype, relu)?;
                let multiplier = a.scale as f32 * b.scale as f32 * (1.0f32 / out.scale as f32);
                let k = MulConsts {
                    za: a.zero_point as i32,
                    zb: b.zero_point as i32,
                    multiplier,
                    zp: out.zero_point as i32,
                    relu,
                    // |(a - za)(b - zb)| <= 255 * 255: the vector conversion cannot overflow i32,
                    // so cvtps2dq equals lrintf (NaN/Inf/huge multipliers take the scalar rule).
                    vector_ok: multiplier.is_finite() && multiplier.abs() * 65025.0 < 1.0e9,
                };
                BinaryPlan::Mul { oracle, k }
            }
        })
    }

    #[inline]
    fn apply_scalar<T: QElem>(&self, a: T, b: T) -> T {
        T::from_i32(match self {
            BinaryPlan::Add { oracle, .. } => oracle.apply(a.to_i32(), b.to_i32()),
            BinaryPlan::Mul { oracle, .. } => oracle.apply(a.to_i32(), b.to_i32()),
        })
    }

    /// Same-length rows, on the chosen tier.
    fn run<T: QElem>(&self, a: &[T], b: &[T], out: &mut [T], isa: Isa) {
        debug_assert!(a.len() == out.len() && b.len() == out.len());
        let done = binary_rows(self, a, b, out, isa);
        for i in done..out.len() {
            out[i] = self.apply_scalar(a[i], b[i]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// `quantized::add` (or `add_relu` when `relu`) of two tensors of the same shape:
/// `out[i] = quantize(dequantize(a[i]) + dequantize(b[i]))` by [`AddRequant`]'s rule.
pub fn add<T: QElem>(
    a: &[T],
    a_q: PerTensor,
    b: &[T],
    b_q: PerTensor,
    out: &mut [T],
    out_q: PerTensor,
    relu: bool,
    isa: Isa,
) -> KernelResult<()> {
    let op = if relu { BinaryOp::AddRelu } else { BinaryOp::Add };
    same_shape_binary(op, a, a_q, b, b_q, out, out_q, isa)
}

#[allow(clippy::too_many_arguments)]
/// `quantized::mul` (or `mul_relu` when `relu`) of two tensors of the same shape, by
/// [`MulRequant`]'s rule.
pub fn mul<T: QElem>(
    a: &[T],
    a_q: PerTensor,
    b: &[T],
    b_q: PerTensor,
    out: &mut [T],
    out_q: PerTensor,
    relu: bool,
    isa: Isa,
) -> KernelResult<()> {
    let op = if relu { BinaryOp::MulRelu } else { BinaryOp::Mul };
    same_shape_binary(op, a, a_q, b, b_q, out, out_q, isa)
}

#[allow(clippy::too_many_arguments)]
fn same_shape_binary<T: QElem>(
    op: BinaryOp,
    a: &[T],
    a_q: PerTensor,
    b: &[T],
    b_q: PerTensor,
    out: &mut [T],
    out_q: PerTensor,
    isa: Isa,
) -> KernelResult<()> {
    let name = op.name();
    isa.ensure_supported()?;
    check_len(name, "length of b", b.len(), a.len())?;
    check_len(name, "output length", out.len(), a.len())?;
    let plan = BinaryPlan::new(op, a_q, b_q, out_q, T::DTYPE)?;
    let ptr = SendPtr(out.as_mut_ptr());
    for_chunks(a.len(), |s, e| {
        // SAFETY: `for_chunks` hands out disjoint ranges within `out`, which outlives the call.
        let o = unsafe { ptr.slice(s, e) };
        plan.run(&a[s..e], &b[s..e], o, isa);
    });
    Ok(())
}

/// The broadcast shape of `a` and `b` by NumPy / PyTorch rules, or an error naming the dimension.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> KernelResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => {
                Err(KernelError::ShapeMismatch { op, what: "broadcast dimension of b", got: y, expected: x })
            }
        })
        .collect()
}

/// A binary op with PyTorch broadcasting: `a` of shape `a_shape`, `b` of shape `b_shape`, `out` of
/// their [`broadcast_shape`]. Rows where both inputs are contiguous take the vector tiers; rows
/// where one input is broadcast along the last dimension take the scalar rule (same numbers).
#[allow(clippy::too_many_arguments)]
pub fn binary<T: QElem>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    a_q: PerTensor,
    b: &[T],
    b_shape: &[usize],
    b_q: PerTensor,
    out: &mut [T],
    out_q: PerTensor,
    isa: Isa,
) -> KernelResult<()> {
    let name = op.name();
    isa.ensure_supported()?;
    check_len(name, "length of a", a.len(), numel(name, a_shape)?)?;
    check_len(name, "length of b", b.len(), numel(name, b_shape)?)?;
    let shape = broadcast_shape(name, a_shape, b_shape)?;
    let total = numel(name, &shape)?;
    check_len(name, "output length", out.len(), total)?;
    if a_shape == b_shape {
        return same_shape_binary(op, a, a_q, b, b_q, out, out_q, isa);
    }
    let plan = BinaryPlan::new(op, a_q, b_q, out_q, T::DTYPE)?;
    if total == 0 {
        return Ok(());
    }
    let rank = shape.len();
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![0; rank];
        let mut acc = 1;
        for i in (0..rank).rev() {
            let d = if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
            st[i] = if d == 1 { 0 } else { acc };
            acc *= d;
        }
        st
    };
    let (sa, sb) = (strides(a_shape), strides(b_shape));
    let inner = shape[rank - 1];
    let rows = total / inner;
    let ptr = SendPtr(out.as_mut_ptr());
    let do_rows = |r0: usize, r1: usize| {
        for r in r0..r1 {
            // Offsets of the row in a and b.
            let (mut rem, mut oa, mut ob) = (r, 0, 0);
            for i in (0..rank - 1).rev() {
                let idx = rem % shape[i];
                rem /= shape[i];
                oa += idx * sa[i];
                ob += idx * sb[i];
            }
            // SAFETY: rows are disjoint ranges of `out`, which has `rows * inner` elements.
            let o = unsafe { ptr.slice(r * inner, (r + 1) * inner) };
            match (sa[rank - 1], sb[rank - 1]) {
                (1, 1) => plan.run(&a[oa..oa + inner], &b[ob..ob + inner], o, isa),
                (x, y) => {
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = plan.apply_scalar(a[oa + j * x], b[ob + j * y]);
                    }
                }
            }
        }
    };
    let rows_per_task = (PAR_CHUNK / inner).max(1);
    if rows <= rows_per_task {
        do_rows(0, rows);
    } else {
        (0..rows.div_ceil(rows_per_task))
            .into_par_iter()
            .for_each(|t| do_rows(t * rows_per_task, ((t + 1) * rows_per_task).min(rows)));
    }
    Ok(())
}

/// `quantized::add_scalar` (`add_scalar_relu` when `relu`): `input + c`. PyTorch moves the zero
/// point instead of touching the data when it can ([`ScalarOp::add_scalar`]); the returned
/// parameters are the output's, and `out` holds its data.
pub fn add_scalar<T: QElem>(
    input: &[T],
    in_q: PerTensor,
    c: f64,
    relu: bool,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<PerTensor> {
    let plan = ScalarOp::add_scalar(in_q.scale, in_q.zero_point, c, T::DTYPE, relu)?;
    scalar_op("add_scalar", plan, input, out, isa)
}

/// `quantized::mul_scalar` (`mul_scalar_relu` when `relu`): `input * c`, by
/// [`ScalarOp::mul_scalar`]. Returns the output parameters; `out` holds the data.
pub fn mul_scalar<T: QElem>(
    input: &[T],
    in_q: PerTensor,
    c: f64,
    relu: bool,
    out: &mut [T],
    isa: Isa,
) -> KernelResult<PerTensor> {
    let plan = ScalarOp::mul_scalar(in_q.scale, in_q.zero_point, c, T::DTYPE, relu)?;
    scalar_op("mul_scalar", plan, input, out, isa)
}

fn scalar_op<T: QElem>(
    op: &'static str,
    plan: ScalarOp,
    input: &[T],
    out: &mut [T],
    isa: Isa,
) -> KernelResult<PerTensor> {
    isa.ensure_supported()?;
    check_len(op, "output length", out.len(), input.len())?;
    let lut = Lut::from_fn(|q: T| T::from_i32(plan.apply(q.to_i32())));
    lut.apply(input, out, isa)?;
    Ok(PerTensor::new(plan.scale, plan.zero_point))
}

/// A unary op: `out = op(input)` element by element, PyTorch's numbers. `out_q` must be what
/// PyTorch would produce: see [`Unary::output_qparams`].
///
/// ReLU, ReLU6 and hardtanh are integer clamps and run as such. The other ops build their
/// 256-entry table on every call (256 evaluations of the float op, a few microseconds for the
/// transcendental ones); a layer that runs many times should build it once with [`Lut::unary`]
/// and call [`Lut::apply`].
pub fn unary<T: QElem>(
    op: Unary,
    input: &[T],
    in_q: PerTensor,
    out: &mut [T],
    out_q: PerTensor,
    isa: Isa,
) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len(op.name(), "output length", out.len(), input.len())?;
    if let Some((lo, hi)) = op.integer_clamp::<T>(in_q, out_q)? {
        let ptr = SendPtr(out.as_mut_ptr());
        for_chunks(input.len(), |s, e| {
            // SAFETY: disjoint ranges of `out`, which outlives the call.
            let o = unsafe { ptr.slice(s, e) };
            clamp(&input[s..e], o, lo, hi, isa);
        });
        return Ok(());
    }
    Lut::unary(op, in_q, out_q)?.apply(input, out, isa)
}

/// The channels PyTorch's channels-last `cat` kernel (`qcat_nhwc_kernel`, AVX2 build) handles
/// with vectors: the last `C mod 8` channels of each input take its scalar loop.
pub const PYTORCH_CAT_VECTOR_CHANNELS: usize = 8;

/// One input of [`cat`]: its data, shape and parameters.
#[derive(Debug, Clone, Copy)]
pub struct CatInput<'a, T> {
    /// The values, row-major.
    pub data: &'a [T],
    /// The shape.
    pub shape: &'a [usize],
    /// Its parameters.
    pub q: PerTensor,
}

/// `quantized::cat` (`cat_relu` when `relu`) along `dim`: every input requantized to `out_q`,
/// element by element `quantize(dequantize(q))` ([`Dequant`] chooses PyTorch's general path, plain
/// dequantize, or its channels-last `dim == 1` path, FMA dequantize for all but the last
/// [`PYTORCH_CAT_VECTOR_CHANNELS`] of each input, which must then be the innermost dimension `dim`
/// of every input). An input whose parameters equal the output's is copied. Returns the output
/// shape.
pub fn cat<T: QElem>(
    inputs: &[CatInput<'_, T>],
    dim: usize,
    out: &mut [T],
    out_q: PerTensor,
    relu: bool,
    dequant: Dequant,
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "cat";
    isa.ensure_supported()?;
    let first = inputs.first().ok_or_else(|| invalid(OP, "inputs", 0, "cat needs at least one input"))?;
    let rank = first.shape.len();
    if dim >= rank {
        return Err(invalid(OP, "dim", dim, "must be less than the rank of the inputs"));
    }
    let mut shape = first.shape.to_vec();
    shape[dim] = 0;
    for input in inputs {
        check_len(OP, "rank of an input", input.shape.len(), rank)?;
        for (i, (&d, &e)) in input.shape.iter().zip(first.shape).enumerate() {
            if i != dim {
                check_len(OP, "size of a non-cat dimension", d, e)?;
            }
        }
        check_len(OP, "length of an input", input.data.len(), numel(OP, input.shape)?)?;
        input.q.quantizer(T::DTYPE)?;
        shape[dim] += input.shape[dim];
    }
    out_q.quantizer(T::DTYPE)?;
    let total = numel(OP, &shape)?;
    check_len(OP, "output length", out.len(), total)?;
    let outer: usize = shape[..dim].iter().product();
    let row: usize = shape[dim..].iter().product();
    let mut offset = 0;
    for input in inputs {
        let chunk = input.data.len() / outer.max(1);
        if chunk == 0 {
            continue;
        }
        let lut = Lut::requantize(input.q, out_q, relu, dequant)?;
        // PyTorch's channels-last kernel rounds the last `C mod 8` channels of each input with its
        // scalar loop: plain dequantize, `quantize_val`.
        let (body, tail) = match dequant {
            Dequant::Fma => (
                chunk - chunk % PYTORCH_CAT_VECTOR_CHANNELS,
                Some(Lut::requantize(input.q, out_q, relu, Dequant::Plain)?),
            ),
            Dequant::Plain => (chunk, None),
        };
        for o in 0..outer {
            let dst = &mut out[o * row + offset..o * row + offset + chunk];
            let src = &input.data[o * chunk..(o + 1) * chunk];
            lut.apply(&src[..body], &mut dst[..body], isa)?;
            if let Some(tail) = &tail {
                tail.apply(&src[body..], &mut dst[body..], isa)?;
            }
        }
        offset += chunk;
    }
    Ok(shape)
}

/// `f::<true>(args)` for qint8 elements `T`, `f::<false>(args)` for quint8: the vector routines
/// take the signedness as a const parameter.
macro_rules! by_sign {
    ($t:ty, $($f:ident)::+ ($($arg:expr),* $(,)?)) => {
        if <$t as QElem>::SIGNED { $($f)::+::<true>($($arg),*) } else { $($f)::+::<false>($($arg),*) }
    };
}

/// Runs the vector tier of `plan` over a prefix of the rows; returns how many elements it wrote
/// (the caller finishes the rest with the scalar rule).
fn binary_rows<T: QElem>(plan: &BinaryPlan, a: &[T], b: &[T], out: &mut [T], isa: Isa) -> usize {
    let (a, b, o) = (bytes(a), bytes(b), bytes_mut(out));
    match plan {
        BinaryPlan::Add { k, .. } => on_tier!(
            isa,
            scalar: 0,
            avx2: by_sign!(T, crate::x86::elementwise::avx2::add(k, a, b, o)),
            avx512: by_sign!(T, crate::x86::elementwise::avx512::add(k, a, b, o)),
        ),
        BinaryPlan::Mul { k, .. } if !k.vector_ok => 0,
        BinaryPlan::Mul { k, .. } => on_tier!(
            isa,
            scalar: 0,
            avx2: by_sign!(T, crate::x86::elementwise::avx2::mul(k, a, b, o)),
            avx512: by_sign!(T, crate::x86::elementwise::avx512::mul(k, a, b, o)),
        ),
    }
}

/// `out[i] = min(max(input[i], lo), hi)` on the chosen tier.
fn clamp<T: QElem>(input: &[T], out: &mut [T], lo: T, hi: T, isa: Isa) {
    let (src, dst, l, h) = (bytes(input), bytes_mut(out), lo.index() as u8, hi.index() as u8);
    let done = on_tier!(
        isa,
        scalar: 0,
        avx2: by_sign!(T, crate::x86::elementwise::avx2::clamp(src, dst, l, h)),
        avx512: by_sign!(T, crate::x86::elementwise::avx512::clamp(src, dst, l, h)),
    );
    for (o, &x) in out[done..].iter_mut().zip(&input[done..]) {
        *o = x.max(lo).min(hi);
    }
}
