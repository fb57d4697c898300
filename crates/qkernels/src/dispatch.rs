//! Instruction-set tiers, their detection, and the one place kernels choose a tier's code.
//!
//! Kernels are compiled for every tier of the target architecture and chosen at run time; the
//! crate is never built with `target-cpu=native`. `QKERNELS_ISA=scalar|avx2|avx512|avx512vnni|amx`
//! caps the tier so every path can be tested and benchmarked on one machine; a tier the CPU lacks
//! is never used.
//!
//! # Layout
//!
//! * This file: [`Isa`], the tiers of each architecture ([`Isa::tiers`], best first), their
//!   detection and the `QKERNELS_ISA` cap, the `on_tier!` macro every kernel chooses its code
//!   with, and [`run_tiered`] for kernel bodies written once and compiled per tier
//!   ([`Tiered`]).
//! * `src/x86/`: every `std::arch` intrinsic and `#[target_feature]` function for x86-64, one
//!   file per kernel family (`gemm.rs`, `elementwise.rs`, `float.rs`, `norm.rs`, `quant.rs`,
//!   `transpose.rs`), lane masks in `masks.rs`, feature detection and the per-tier runners of
//!   [`Tiered`] bodies in `mod.rs`.
//! * The generic modules (`gemm`, `elementwise`, `float`, `norm`, `pool`, `quant`, `conv`): the
//!   public API, the checks, the scalar code (the oracle every tier is tested against) and one
//!   `on_tier!` per kernel naming the scalar code and each tier's function.
//!
//! # Adding a tier to an existing architecture (e.g. x86 AVX10)
//!
//! 1. Here: a variant of [`Isa`], its entry in [`Isa::ALL`], [`Isa::name`], [`Isa::rank`],
//!    [`Isa::is_supported`] and the architecture's list in [`TIERS`] (best first), and an arm
//!    in `on_tier!` that falls back to the next lower tier's code when a kernel names none.
//! 2. `src/x86/mod.rs`: its detection; `src/x86/*.rs`: the kernels that get their own code.
//! 3. The `on_tier!` uses whose kernels gain code for the tier.
//!
//! # Adding an architecture (e.g. an aarch64 NEON tier)
//!
//! 1. Here: the variant (`Neon`), its name, rank (1, the first tier above scalar), support test
//!    and `TIERS` list under `#[cfg(target_arch = "aarch64")]`, and a `neon:` arm in `on_tier!`
//!    (optional in the macro, so kernels without NEON code keep compiling and run scalar).
//! 2. `src/aarch64/` with `mod.rs` (detection, `run_neon` for [`Tiered`] bodies, `pub(crate) mod`
//!    lines) and one file per kernel family that gets NEON code (`gemm.rs` with the gemm `Tier`
//!    impl and `#[target_feature(enable = "neon")]` block entry points and a `Kernel` constant,
//!    `elementwise.rs`, `quant.rs`, ...).
//! 3. `src/lib.rs`: `#[cfg(target_arch = "aarch64")] mod aarch64;`.
//! 4. The `on_tier!` uses that gain a `neon:` arm (and [`run_tiered`]).
//!
//! Tiers of different architectures are not ordered against each other: [`Isa::rank`] orders
//! the tiers of one architecture only (scalar is 0 everywhere).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::{KernelError, KernelResult};
use crate::util::Tiered;

/// Runs the code of one tier: `on_tier!(isa, scalar: e, avx2: e, avx512: e, avx512vnni: e, amx: e)`,
/// every tier after `scalar` optional. A tier without its own expression runs the next lower
/// tier's (`amx` -> `avx512vnni` -> `avx512` -> `avx2` -> `scalar`); tiers of other architectures
/// run `scalar`.
/// The vector expressions are evaluated in an `unsafe` block: use only behind a public entry that
/// checked `isa.ensure_supported()` (or on a tier from [`Isa::tiers`]), which is what makes the
/// tier's target features available.
macro_rules! on_tier {
    (
        $isa:expr, scalar: $scalar:expr
        $(, avx2: $avx2:expr)? $(, avx512: $avx512:expr)? $(, avx512vnni: $vnni:expr)?
        $(, amx: $amx:expr)? $(,)?
    ) => {
        match $isa {
            $crate::Isa::Scalar => $scalar,
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            $crate::Isa::Avx2 => {
                debug_assert!($crate::Isa::Avx2.is_supported());
                // SAFETY: every caller checked `isa.ensure_supported()`: AVX2 and FMA exist.
                unsafe { on_tier!(@first [$($avx2)?] [$scalar]) }
            }
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            $crate::Isa::Avx512 => {
                debug_assert!($crate::Isa::Avx512.is_supported());
                // SAFETY: as above; the tier implies AVX-512 F/BW/VL/DQ and AVX2.
                unsafe { on_tier!(@first [$($avx512)?] [$($avx2)?] [$scalar]) }
            }
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            $crate::Isa::Avx512Vnni => {
                debug_assert!($crate::Isa::Avx512Vnni.is_supported());
                // SAFETY: as above; the tier implies VNNI and everything of `avx512`.
                unsafe { on_tier!(@first [$($vnni)?] [$($avx512)?] [$($avx2)?] [$scalar]) }
            }
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            $crate::Isa::Amx => {
                debug_assert!($crate::Isa::Amx.is_supported());
                // SAFETY: as above; the tier implies AMX-INT8 (tile data permitted by the OS) and
                // everything of `avx512vnni`.
                unsafe { on_tier!(@first [$($amx)?] [$($vnni)?] [$($avx512)?] [$($avx2)?] [$scalar]) }
            }
            // Tiers of other architectures, which this CPU never supports.
            #[allow(unreachable_patterns)]
            _ => $scalar,
        }
    };
    (@first [] $($rest:tt)+) => {
        on_tier!(@first $($rest)+)
    };
    (@first [$e:expr] $($rest:tt)*) => {
        $e
    };
}

/// A tier of kernels: plain Rust, or one architecture's vector extension. The tiers of one
/// architecture are ranked ([`Isa::rank`]): a higher tier needs every feature of the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust; every target, the reference the others are tested against.
    Scalar,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512 F, BW, VL and DQ (x86-64).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`) (x86-64).
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`) for the int8 GEMM, on top of `Avx512Vnni` (x86-64 Linux: the
    /// process asks the kernel for the tile state once).
    Amx,
}

/// The tiers of the target architecture, best first; scalar last.
#[cfg(target_arch = "x86_64")]
pub(crate) const TIERS: &[Isa] = &[Isa::Amx, Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Scalar];
/// The tiers of the target architecture, best first; scalar last.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const TIERS: &[Isa] = &[Isa::Scalar];

impl Isa {
    /// Every tier of every architecture, lowest first within each architecture.
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni, Isa::Amx];

    /// The name `QKERNELS_ISA` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// The position among the tiers of its architecture: 0 for scalar, higher for a tier that
    /// needs more. Compares tiers of one architecture only.
    pub const fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
            Isa::Avx512Vnni => 3,
            Isa::Amx => 4,
        }
    }

    /// True if this CPU can run the tier.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::x86::has_avx512(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => crate::x86::has_avx512vnni(),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => crate::x86::has_amx(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The tiers this CPU supports, best first (scalar last).
    pub fn tiers() -> Vec<Isa> {
        TIERS.iter().copied().filter(|isa| isa.is_supported()).collect()
    }

    /// The best tier this CPU supports.
    pub fn detect() -> Isa {
        TIERS.iter().copied().find(|isa| isa.is_supported()).unwrap_or(Isa::Scalar)
    }

    /// The tiers this CPU supports, lowest first: what a test battery runs every kernel on.
    pub fn supported() -> Vec<Isa> {
        let mut tiers = Isa::tiers();
        tiers.reverse();
        tiers
    }

    /// The best tier this CPU supports that `cap` allows: one of `cap`'s architecture ranked at
    /// most as high, or scalar when `cap` is a tier of another architecture.
    pub fn capped(cap: Isa) -> Isa {
        if !TIERS.contains(&cap) {
            return Isa::Scalar;
        }
        TIERS
            .iter()
            .copied()
            .find(|isa| isa.rank() <= cap.rank() && isa.is_supported())
            .unwrap_or(Isa::Scalar)
    }

    /// The tier kernels use in this process: the detected one, capped by `QKERNELS_ISA` when set
    /// ([`Isa::capped`]). Read once. A malformed `QKERNELS_ISA` is reported on stderr once and
    /// ignored.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| match std::env::var("QKERNELS_ISA") {
            Ok(value) => match value.parse::<Isa>() {
                Ok(cap) => Isa::capped(cap),
                Err(err) => {
                    eprintln!("qkernels: ignoring QKERNELS_ISA: {err}");
                    Isa::detect()
                }
            },
            Err(_) => Isa::detect(),
        })
    }

    /// Checks that the CPU can run this tier, for callers that choose a tier explicitly.
    pub fn ensure_supported(self) -> KernelResult<Isa> {
        if self.is_supported() { Ok(self) } else { Err(KernelError::IsaUnsupported { isa: self.name() }) }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = KernelError;

    fn from_str(s: &str) -> KernelResult<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| KernelError::UnknownIsa { name: s.to_string() })
    }
}

/// Runs `k`'s body compiled for `isa`, which the caller has checked is supported.
pub(crate) fn run_tiered<K: Tiered>(k: &K, isa: Isa) {
    on_tier!(
        isa,
        scalar: k.run(),
        avx2: crate::x86::run_avx2(k),
        avx512: crate::x86::run_avx512(k),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert_eq!(" AVX2 ".parse::<Isa>().unwrap(), Isa::Avx2);
        let err = "sse9".parse::<Isa>().unwrap_err();
        assert!(err.to_string().contains("scalar|avx2|avx512|avx512vnni|amx"), "{err}");
        let err = Isa::ALL.into_iter().find(|isa| !isa.is_supported()).map(|isa| isa.ensure_supported());
        if let Some(Err(err)) = err {
            assert!(err.to_string().contains("does not support the"), "{err}");
        }
    }

    #[test]
    fn detection_is_consistent() {
        let tiers = Isa::tiers();
        assert_eq!(*tiers.last().unwrap(), Isa::Scalar);
        assert_eq!(tiers[0], Isa::detect());
        assert!(tiers.windows(2).all(|w| w[0].rank() > w[1].rank()));
        assert!(tiers.iter().all(|isa| TIERS.contains(isa) && isa.is_supported()));
        assert_eq!(Isa::supported().first(), Some(&Isa::Scalar));
        assert!(Isa::active().rank() <= Isa::detect().rank());
    }

    #[test]
    fn the_cap_picks_the_best_supported_tier_at_or_below_it() {
        for cap in Isa::ALL {
            let got = Isa::capped(cap);
            assert!(got.is_supported(), "{cap} -> {got}");
            if TIERS.contains(&cap) {
                assert!(got.rank() <= cap.rank(), "{cap} -> {got}");
                let better = Isa::tiers().into_iter().find(|t| t.rank() <= cap.rank());
                assert_eq!(Some(got), better, "{cap}");
            } else {
                assert_eq!(got, Isa::Scalar, "{cap}");
            }
        }
        assert_eq!(Isa::capped(Isa::Scalar), Isa::Scalar);
    }
}
