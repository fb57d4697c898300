//! Every `std::arch` intrinsic and `#[target_feature]` function of the crate, for x86-64: AVX2 +
//! FMA, AVX-512 F/BW/VL/DQ, AVX-512 VNNI and AMX-INT8. The generic modules hold the scalar code and the
//! public API; `crate::dispatch` chooses between these functions and the scalar ones.
//!
//! Nothing here reads the tier: each function is compiled for one set of target features and is
//! only called, by `on_tier!`, on a CPU that has them.

pub(crate) mod amx;
#[cfg(qkernels_emulate_amx)]
mod amx_emulated;
pub(crate) mod dynamic;
pub(crate) mod elementwise;
pub(crate) mod float;
pub(crate) mod float_math;
pub(crate) mod gemm;
pub(crate) mod masks;
pub(crate) mod norm;
pub(crate) mod quant;
pub(crate) mod transpose;

use crate::util::Tiered;

/// True if the CPU has AVX2 and FMA (the `avx2` tier).
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// True if the CPU has AVX-512 F, BW, VL and DQ on top of the `avx2` tier (the `avx512` tier).
pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

/// True if the CPU has VNNI on top of the `avx512` tier (the `avx512vnni` tier).
pub(crate) fn has_avx512vnni() -> bool {
    has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// True if the CPU has AMX-TILE and AMX-INT8 on top of the `avx512vnni` tier and the OS lets
/// this process use the tile data (the `amx` tier). On Linux the process asks for that state
/// once (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, process-wide, every thread); other
/// systems do not get the tier.
pub(crate) fn has_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| {
        // The software model of the tiles (`amx_emulated`) stands in for the CPU's.
        if cfg!(qkernels_emulate_amx) {
            return has_avx512vnni();
        }
        // CPUID leaf 7, sub-leaf 0, EDX: bit 24 AMX-TILE, bit 25 AMX-INT8.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = leaf7.edx >> 24 & 1 == 1 && leaf7.edx >> 25 & 1 == 1;
        cpu && has_avx512vnni() && request_tile_data()
    })
}

/// Asks the kernel for the AMX tile-data state; true if granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no memory of
    // ours; a kernel without AMX support returns an error, which means "no".
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Other systems: the tile state is never requested, so the tier is not used.
#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// True if the CPU has F16C (`vcvtph2ps`), which the `avx2` tier's fp16 GEMM needs.
pub(crate) fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("f16c")
}

/// True if the CPU has AVX-512 VBMI (`vpermi2b`), which the `avx512vnni` tier's table lookup
/// uses when present.
pub(crate) fn has_avx512vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// A hint to fetch the cache line of `p` into L1; `p` may point anywhere (prefetches never fault).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    // SAFETY: prefetch is a hint that never faults, whatever the address; SSE is baseline on x86-64.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) };
}

/// `k.run()` compiled with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn run_avx2<K: Tiered>(k: &K) {
    k.run();
}

/// `k.run()` compiled with AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) fn run_avx512<K: Tiered>(k: &K) {
    k.run();
}
