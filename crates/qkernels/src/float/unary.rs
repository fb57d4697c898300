//! PyTorch's CPU float `sigmoid` bit for bit, and its `tanh` as closely as open code can
//! (`docs/NUMERICS.md`, section 12).
//!
//! ATen's `sigmoid_kernel` runs `cpu_kernel_vec`: over a contiguous run of `n` elements its vector
//! body takes the leading multiple of two vectors (`2 * Vectorized<float>::size()` elements: 32
//! in PyTorch's AVX-512 build, 16 in its AVX2 build) and computes SLEEF's `expf_u10`
//! ([`qcore::math::sigmoid_vector_lane`]); the last `n mod step` elements go to the scalar lambda
//! with the C library's `expf` ([`qcore::math::sigmoid_scalar`]). Which build PyTorch runs depends
//! on its CPU, so the split follows [`set_pytorch_cpu_capability`] (default: what PyTorch picks on
//! this CPU), never our own tier: every tier computes the same bits.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

pub use qcore::math::tanh_value;
use qcore::math::{sigmoid_scalar, sigmoid_vector_lane};

use crate::util::{SendPtr, check_len, for_chunks, invalid};
use crate::{Isa, KernelError, KernelResult};

/// The build of ATen's CPU kernels PyTorch dispatches to (`torch.backends.cpu.get_cpu_capability()`,
/// or `ATEN_CPU_CAPABILITY`), as far as it changes float sigmoid's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PytorchCpuCapability {
    /// `DEFAULT`: no AVX2. `Vectorized<float>::exp` is the C library's `expf` lane by lane, so
    /// every element takes the scalar formula.
    Default,
    /// `AVX2` (AVX2 and FMA): vectors of 8 floats, vector body in steps of 16.
    Avx2,
    /// `AVX512` (AVX-512 F, BW, DQ, VL and FMA): vectors of 16 floats, vector body in steps of 32.
    Avx512,
}

impl PytorchCpuCapability {
    /// What PyTorch picks on this CPU (`aten/src/ATen/native/DispatchStub.cpp`
    /// `compute_cpu_capability`, without `ATEN_CPU_CAPABILITY`).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::x86::has_avx512() {
                return Self::Avx512;
            }
            if crate::x86::has_avx2() {
                return Self::Avx2;
            }
        }
        Self::Default
    }

    /// The elements of one step of `cpu_kernel_vec`'s vector body (two vectors); 0 when there
    /// is no vector body.
    pub const fn vector_step(self) -> usize {
        match self {
            Self::Default => 0,
            Self::Avx2 => 16,
            Self::Avx512 => 32,
        }
    }

    /// PyTorch's name (`DEFAULT`, `AVX2`, `AVX512`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Avx2 => "AVX2",
            Self::Avx512 => "AVX512",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Default => 1,
            Self::Avx2 => 2,
            Self::Avx512 => 3,
        }
    }
}

impl FromStr for PytorchCpuCapability {
    type Err = KernelError;

    /// Parses PyTorch's names, in any case (`"AVX512"`, `"avx2"`, `"default"`).
    fn from_str(s: &str) -> KernelResult<Self> {
        match s.to_ascii_uppercase().as_str() {
            "DEFAULT" => Ok(Self::Default),
            "AVX2" => Ok(Self::Avx2),
            "AVX512" => Ok(Self::Avx512),
            _ => Err(invalid("float::PytorchCpuCapability", "name", s, "use DEFAULT, AVX2 or AVX512")),
        }
    }
}

/// The capability whose split float sigmoid reproduces; 0 = not set (detect on first use).
static CAPABILITY: AtomicU8 = AtomicU8::new(0);

/// Sets the PyTorch CPU capability whose float results sigmoid reproduces (default:
/// [`PytorchCpuCapability::detect`]) and returns the previous one.
///
/// ```
/// use qkernels::float::{PytorchCpuCapability, pytorch_cpu_capability, set_pytorch_cpu_capability};
///
/// let previous = set_pytorch_cpu_capability(PytorchCpuCapability::Avx2);
/// assert_eq!(pytorch_cpu_capability().vector_step(), 16);
/// set_pytorch_cpu_capability(previous);
/// ```
pub fn set_pytorch_cpu_capability(capability: PytorchCpuCapability) -> PytorchCpuCapability {
    let previous = pytorch_cpu_capability();
    CAPABILITY.store(capability.code(), Ordering::Relaxed);
    previous
}

/// The PyTorch CPU capability float sigmoid reproduces ([`set_pytorch_cpu_capability`]).
pub fn pytorch_cpu_capability() -> PytorchCpuCapability {
    match CAPABILITY.load(Ordering::Relaxed) {
        1 => PytorchCpuCapability::Default,
        2 => PytorchCpuCapability::Avx2,
        3 => PytorchCpuCapability::Avx512,
        _ => {
            let detected = PytorchCpuCapability::detect();
            // A concurrent `set` wins over the detected default.
            let _ = CAPABILITY.compare_exchange(0, detected.code(), Ordering::Relaxed, Ordering::Relaxed);
            detected
        }
    }
}

/// How many leading elements of a contiguous run of `n` PyTorch's sigmoid computes with its
/// vector body under the current [`pytorch_cpu_capability`]; the rest take the scalar formula.
///
/// ```
/// use qkernels::float::{PytorchCpuCapability, set_pytorch_cpu_capability, sigmoid_vector_len};
///
/// let previous = set_pytorch_cpu_capability(PytorchCpuCapability::Avx512);
/// assert_eq!(sigmoid_vector_len(70), 64);
/// set_pytorch_cpu_capability(PytorchCpuCapability::Avx2);
/// assert_eq!(sigmoid_vector_len(70), 64);
/// assert_eq!(sigmoid_vector_len(31), 16);
/// set_pytorch_cpu_capability(previous);
/// ```
pub fn sigmoid_vector_len(n: usize) -> usize {
    match pytorch_cpu_capability().vector_step() {
        0 => 0,
        step => n - n % step,
    }
}

/// `dst[i] = sigmoid(src[i])` for `i < n` with PyTorch's split (see the module docs).
///
/// # Safety
/// `src` is valid for reading and `dst` for writing `n` floats; they are equal or disjoint.
unsafe fn sigmoid_run(src: SendPtr<f32>, dst: SendPtr<f32>, n: usize, isa: Isa) {
    let body = sigmoid_vector_len(n);
    for_chunks(body, |a, b| {
        let (s, d) = (src.offset(a).0.cast_const(), dst.offset(a).0);
        on_tier!(
            isa,
            scalar: for i in 0..b - a {
                // SAFETY: `a + i < body <= n`: inside both buffers; read before written.
                unsafe { *d.add(i) = sigmoid_vector_lane(*s.add(i)) };
            },
            avx2: crate::x86::float_math::sigmoid_avx2(s, d, b - a),
            avx512: crate::x86::float_math::sigmoid_avx512(s, d, b - a),
        )
    });
    for i in body..n {
        // SAFETY: `i < n`: inside both buffers; read before written.
        unsafe { *dst.0.add(i) = sigmoid_scalar(*src.0.add(i)) };
    }
}

/// `out = sigmoid(input)`, bit for bit PyTorch's `torch.sigmoid` on one contiguous run (a
/// contiguous tensor, or one row of a strided view such as an LSTM gate chunk) under
/// [`pytorch_cpu_capability`]. The tier changes the speed only.
///
/// ```
/// use qkernels::{Isa, float};
///
/// let x = [-1.0f32, 0.0, 2.5];
/// let mut y = [0.0f32; 3];
/// float::sigmoid(&x, &mut y, Isa::detect())?;
/// assert_eq!(y[1], 0.5);
/// # Ok::<(), qkernels::KernelError>(())
/// ```
pub fn sigmoid(input: &[f32], out: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len("sigmoid", "output length", out.len(), input.len())?;
    // SAFETY: `input` and `out` are distinct borrows of `input.len()` floats each; the input is
    // only read.
    unsafe { sigmoid_run(SendPtr(input.as_ptr().cast_mut()), SendPtr(out.as_mut_ptr()), input.len(), isa) };
    Ok(())
}

/// `x = sigmoid(x)` in place (PyTorch's `sigmoid_`), as [`sigmoid`].
///
/// ```
/// let mut x = [0.0f32, f32::INFINITY];
/// qkernels::float::sigmoid_in_place(&mut x, qkernels::Isa::Scalar)?;
/// assert_eq!(x, [0.5, 1.0]);
/// # Ok::<(), qkernels::KernelError>(())
/// ```
pub fn sigmoid_in_place(x: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    let p = SendPtr(x.as_mut_ptr());
    // SAFETY: one exclusive borrow of `x.len()` floats, read and written in place.
    unsafe { sigmoid_run(p, p, x.len(), isa) };
    Ok(())
}

/// `dst[i] = tanh_value(src[i])` for `i < n`, chunked over threads, on the tier's vector body.
///
/// # Safety
/// `src` is valid for reading and `dst` for writing `n` floats; they are the same pointer (in
/// place) or do not overlap.
unsafe fn tanh_run(src: SendPtr<f32>, dst: SendPtr<f32>, n: usize, isa: Isa) {
    for_chunks(n, |a, b| {
        let (s, d) = (src.offset(a).0.cast_const(), dst.offset(a).0);
        on_tier!(
            isa,
            scalar: for i in 0..b - a {
                // SAFETY: `a + i < n`: inside both buffers; read before written.
                unsafe { *d.add(i) = tanh_value(*s.add(i)) };
            },
            avx2: crate::x86::float_math::tanh_avx2(s, d, b - a),
            avx512: crate::x86::float_math::tanh_avx512(s, d, b - a),
        )
    });
}

/// `out = tanh(input)` element by element, equal to [`tanh_value`] on every tier (the vector
/// tiers compute in `f64` and defer to it where rounding could tell them apart).
///
/// ```
/// let mut y = [0.0f32; 2];
/// qkernels::float::tanh(&[0.0, -20.0], &mut y, qkernels::Isa::detect())?;
/// assert_eq!(y, [0.0, -1.0]);
/// # Ok::<(), qkernels::KernelError>(())
/// ```
pub fn tanh(input: &[f32], out: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len("tanh", "output length", out.len(), input.len())?;
    // SAFETY: `input` and `out` are distinct borrows of `input.len()` floats each; the input is
    // only read.
    unsafe { tanh_run(SendPtr(input.as_ptr().cast_mut()), SendPtr(out.as_mut_ptr()), input.len(), isa) };
    Ok(())
}

/// `x = tanh(x)` in place (PyTorch's `tanh_`), as [`tanh`].
pub fn tanh_in_place(x: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    let p = SendPtr(x.as_mut_ptr());
    // SAFETY: one exclusive borrow of `x.len()` floats, read and written in place.
    unsafe { tanh_run(p, p, x.len(), isa) };
    Ok(())
}
