//! AVX-512 lane masks the x86 tiers share.

use std::arch::x86_64::{__mmask16, __mmask64};

/// The mask of the first `n.min(16)` lanes.
#[inline(always)]
pub(crate) fn mask16(n: usize) -> __mmask16 {
    if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 }
}

/// The mask of the first `n.min(64)` lanes.
#[inline(always)]
pub(crate) fn mask64(n: usize) -> __mmask64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}
