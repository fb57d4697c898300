//! This CPU's peaks, measured in the same run as the benchmarks: int8 `tdpbusd` (AMX-INT8), int8
//! `vpdpbusd` (AVX-512 VNNI),
//! int8 `vpmaddubsw` (AVX2), f32 FMA, and copy bandwidth, on one and two cores. Each compute loop
//! keeps enough independent accumulators to cover the instruction latency, like the C loops in
//! `../shared/reference/ubench/`.

use std::time::Instant;

use serde::Serialize;

/// Measured peaks, per core for compute, per thread count for copy.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Peaks {
    /// int8 GOPS per core with AMX `tdpbusd`, if the CPU and OS give this process AMX tiles.
    pub int8_amx_gops: Option<f64>,
    /// int8 GOPS per core with `vpdpbusd` zmm, if the CPU has AVX-512 VNNI.
    pub int8_vnni_gops: Option<f64>,
    /// int8 GOPS per core with `vpmaddubsw` + `vpmaddwd` + `vpaddd` ymm, if the CPU has AVX2.
    pub int8_avx2_gops: Option<f64>,
    /// f32 GFLOPS per core with FMA, if the CPU has FMA.
    pub f32_fma_gflops: Option<f64>,
    /// Copy bandwidth (bytes read + written) with one thread, GB/s.
    pub copy_gbps_1t: f64,
    /// Copy bandwidth with two threads, GB/s.
    pub copy_gbps_2t: f64,
}

/// Iterations of each compute loop per timing: 15-60 ms at the expected rates, long enough for
/// the clock to settle.
const ITERATIONS: u64 = 1 << 22;

/// Measures every peak: the best of seven timings each (a peak is what the core can reach; slower
/// timings are interference from the clock ramping up or a busy neighbour).
pub fn measure() -> Peaks {
    Peaks {
        int8_amx_gops: x86::amx_gops(),
        int8_vnni_gops: x86::vnni_gops(),
        int8_avx2_gops: x86::avx2_int8_gops(),
        f32_fma_gflops: x86::fma_gflops(),
        copy_gbps_1t: copy_gbps(1),
        copy_gbps_2t: copy_gbps(2),
    }
}

impl Peaks {
    /// The higher of two measurements of each peak (taken before and after the benchmarks).
    pub fn max(self, other: Peaks) -> Peaks {
        let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Peaks {
            int8_amx_gops: best(self.int8_amx_gops, other.int8_amx_gops),
            int8_vnni_gops: best(self.int8_vnni_gops, other.int8_vnni_gops),
            int8_avx2_gops: best(self.int8_avx2_gops, other.int8_avx2_gops),
            f32_fma_gflops: best(self.f32_fma_gflops, other.f32_fma_gflops),
            copy_gbps_1t: self.copy_gbps_1t.max(other.copy_gbps_1t),
            copy_gbps_2t: self.copy_gbps_2t.max(other.copy_gbps_2t),
        }
    }
}

/// The best of seven runs of `f`, which returns the work done; result in work per nanosecond.
fn best_rate(mut f: impl FnMut() -> f64) -> f64 {
    (0..7)
        .map(|_| {
            let start = Instant::now();
            let work = f();
            work / start.elapsed().as_nanos().max(1) as f64
        })
        .fold(0.0, f64::max)
}

/// Copies 64 MiB per thread with `copy_from_slice` (memcpy), counting bytes read plus written.
fn copy_gbps(threads: usize) -> f64 {
    const BYTES: usize = 64 << 20;
    let mut buffers: Vec<(Vec<u8>, Vec<u8>)> =
        (0..threads).map(|_| (vec![1u8; BYTES], vec![0u8; BYTES])).collect();
    best_rate(|| {
        std::thread::scope(|scope| {
            for (src, dst) in buffers.iter_mut() {
                scope.spawn(move || dst.copy_from_slice(std::hint::black_box(src)));
            }
        });
        (2 * BYTES * threads) as f64
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::{ITERATIONS, best_rate};

    /// Independent accumulators per loop: more than latency x throughput on current x86 cores.
    const ACCUMULATORS: usize = 12;

    pub fn vnni_gops() -> Option<f64> {
        let supported = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
        // SAFETY: the features the function is compiled for were detected on this CPU just above.
        supported.then(|| best_rate(|| unsafe { vnni_loop(ITERATIONS) }))
    }

    pub fn amx_gops() -> Option<f64> {
        // Asking whether the tier is supported also asks the OS for the tile state.
        let supported = qkernels::Isa::Amx.is_supported();
        // SAFETY: AMX-TILE and AMX-INT8 were detected and the tile state granted just above.
        supported.then(|| best_rate(|| unsafe { amx_loop(ITERATIONS / 8) }))
    }

    /// `tdpbusd` on four accumulator tiles of 16 x 64 bytes: 16 x 16 x 64 u8 x s8 multiply-adds
    /// per instruction (the tiles hold whatever `ldtilecfg` leaves: zeros).
    ///
    /// # Safety
    /// The CPU has AMX-INT8 and the OS granted this process the tile data.
    unsafe fn amx_loop(n: u64) -> f64 {
        /// Palette 1, tiles 0..8 of 16 rows x 64 bytes.
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        // SAFETY: the caller guarantees AMX; the configuration is 64 valid, aligned bytes; the
        // loop touches only tile registers, released at the end.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
            for _ in 0..black_box(n) {
                std::arch::asm!(
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "tdpbusd tmm2, tmm5, tmm6",
                    "tdpbusd tmm3, tmm5, tmm7",
                    options(nostack, nomem),
                );
            }
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
        (n as usize * 4 * 16 * 16 * 64 * 2) as f64
    }

    pub fn avx2_int8_gops() -> Option<f64> {
        let supported = is_x86_feature_detected!("avx2");
        // SAFETY: AVX2 was detected on this CPU just above.
        supported.then(|| best_rate(|| unsafe { maddubs_loop(ITERATIONS) }))
    }

    pub fn fma_gflops() -> Option<f64> {
        let supported = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        supported.then(|| best_rate(|| unsafe { fma_loop(ITERATIONS) }))
    }

    /// `vpdpbusd` zmm: 64 u8 x s8 multiply-adds per instruction; returns the operations done.
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn vnni_loop(n: u64) -> f64 {
        let (a, b) = (_mm512_set1_epi32(black_box(0x0101_0101)), _mm512_set1_epi32(black_box(0x0102_0304)));
        let mut acc = [_mm512_setzero_si512(); ACCUMULATORS];
        for _ in 0..n {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        black_box(acc);
        (n as usize * ACCUMULATORS * 64 * 2) as f64
    }

    /// AVX2 `vpmaddubsw` + `vpmaddwd(ones)` + `vpaddd`: 32 u8 x s8 multiply-adds per triple. The
    /// weights are read with volatile loads, as a kernel loads them, so the multiply cannot be
    /// hoisted out of the loop (it does not depend on the accumulator).
    #[target_feature(enable = "avx2")]
    fn maddubs_loop(n: u64) -> f64 {
        let a = _mm256_set1_epi32(black_box(0x0101_0101));
        let weights = [_mm256_set1_epi32(black_box(0x0102_0304)); ACCUMULATORS];
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); ACCUMULATORS];
        for _ in 0..n {
            for (c, w) in acc.iter_mut().zip(&weights) {
                // SAFETY: `w` is a reference into a live local array, so the pointer is valid and aligned.
                let w = unsafe { std::ptr::read_volatile(w) };
                *c = _mm256_add_epi32(*c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), ones));
            }
        }
        black_box(acc);
        (n as usize * ACCUMULATORS * 32 * 2) as f64
    }

    /// `vfmadd` ymm: 8 f32 multiply-adds per instruction (ymm and zmm reach the same rate on Zen 4).
    #[target_feature(enable = "avx2,fma")]
    fn fma_loop(n: u64) -> f64 {
        let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
        let mut acc = [_mm256_setzero_ps(); ACCUMULATORS];
        for _ in 0..n {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        black_box(acc);
        (n as usize * ACCUMULATORS * 8 * 2) as f64
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn amx_gops() -> Option<f64> {
        None
    }
    pub fn vnni_gops() -> Option<f64> {
        None
    }
    pub fn avx2_int8_gops() -> Option<f64> {
        None
    }
    pub fn fma_gflops() -> Option<f64> {
        None
    }
}
