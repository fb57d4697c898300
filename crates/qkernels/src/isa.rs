//! Instruction-set tiers: detected once at run time, optionally forced lower with `QKERNELS_ISA`.
//!
//! Kernels are compiled for every tier and chosen at run time; the crate is never built with
//! `target-cpu=native`. `QKERNELS_ISA=scalar|avx2|avx512|avx512vnni` caps the tier so every path
//! can be tested and benchmarked on one machine; a tier the CPU lacks is never used.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::{KernelError, KernelResult};

/// A tier of kernels, from plain Rust to AVX-512 VNNI. Ordered: a higher tier needs every feature
/// of the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust; every target, the reference the others are tested against.
    Scalar,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512 F, BW, VL and DQ (x86-64).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`) (x86-64).
    Avx512Vnni,
}

impl Isa {
    /// Every tier, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni];

    /// The name `QKERNELS_ISA` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// True if this CPU can run the tier.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best tier this CPU supports.
    pub fn detect() -> Isa {
        Isa::ALL.into_iter().rev().find(|isa| isa.is_supported()).unwrap_or(Isa::Scalar)
    }

    /// The tiers this CPU supports, lowest first: what a test battery runs every kernel on.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_supported()).collect()
    }

    /// The tier kernels use in this process: the detected one, capped by `QKERNELS_ISA` when set.
    /// Read once. A malformed `QKERNELS_ISA` is reported on stderr once and ignored.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| match std::env::var("QKERNELS_ISA") {
            Ok(value) => match value.parse::<Isa>() {
                Ok(cap) => cap.min(Isa::detect()),
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
        if self.is_supported() { Ok(self) } else { Err(KernelError::IsaUnsupported { isa: self }) }
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
        assert!(err.to_string().contains("scalar|avx2|avx512|avx512vnni"), "{err}");
    }

    #[test]
    fn detection_is_consistent() {
        let supported = Isa::supported();
        assert_eq!(supported[0], Isa::Scalar);
        assert_eq!(*supported.last().unwrap(), Isa::detect());
        assert!(Isa::active() <= Isa::detect());
        assert!(supported.windows(2).all(|w| w[0] < w[1]));
    }
}
