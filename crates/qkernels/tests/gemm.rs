//! GEMM: every tier this CPU supports against the scalar oracle, bit for bit (proptest over
//! shapes, zero points and scales; a fixed battery of edge shapes; thread-count invariance), and
//! typed errors for bad input.

mod gemm_common;

use gemm_common::{Rng, appends, dequant_f32, gemm_acc, requant_u8, scales_and_zps};
use proptest::prelude::*;
use qkernels::gemm::{Output, OutputKind, PackedWeights, WeightQParams, gemm};
use qkernels::{Isa, KernelError};

/// One GEMM problem with its quantization parameters.
#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    w: Vec<i8>,
    q: WeightQParams,
    bias: Option<Vec<f32>>,
    a_scale: f64,
    a_zp: u8,
    out_scale: f64,
    out_zp: u8,
    relu: bool,
    /// A u8 output range (`OutputPipeline::with_range`), checked in addition to the plain output.
    range: (u8, u8),
}

impl Case {
    fn random(rng: &mut Rng, m: usize, n: usize, k: usize, a_max: u8, w_range: (i8, i8), w_zp: bool) -> Self {
        let per_channel = rng.next().is_multiple_of(2);
        let q = if per_channel {
            let scales = (0..n).map(|_| 0.001 + (rng.next() % 1000) as f64 * 1e-5).collect();
            let zero_points = (0..n).map(|_| if w_zp { (rng.next() % 41) as i32 - 20 } else { 0 }).collect();
            WeightQParams::PerChannel { scales, zero_points }
        } else {
            let zero_point = if w_zp { (rng.next() % 255) as i32 - 127 } else { 0 };
            WeightQParams::PerTensor { scale: 0.002 + (rng.next() % 100) as f64 * 1e-4, zero_point }
        };
        Self {
            m,
            n,
            k,
            a: rng.u8s(m * k, a_max),
            w: rng.i8s(n * k, w_range.0, w_range.1),
            q,
            bias: (!rng.next().is_multiple_of(3)).then(|| rng.f32s(n, 3.0)),
            a_scale: 0.01 + (rng.next() % 100) as f64 * 1e-3,
            a_zp: (rng.next() % 256) as u8,
            out_scale: 0.05 + (rng.next() % 100) as f64 * 0.01 * (k as f64).sqrt(),
            out_zp: (rng.next() % 256) as u8,
            relu: rng.next().is_multiple_of(2),
            range: {
                let (x, y) = ((rng.next() % 256) as u8, (rng.next() % 256) as u8);
                (x.min(y), x.max(y))
            },
        }
    }

    fn acc(&self) -> Vec<i32> {
        let (_, zps, _) = scales_and_zps(&self.q, self.n);
        gemm_acc(&self.a, self.m, self.k, &self.w, self.n, self.a_zp, &zps)
    }

    /// Runs every output kind on `isa` and compares with the oracle.
    fn check(&self, isa: Isa) -> Result<(), String> {
        let w = PackedWeights::with_isa(&self.w, self.n, self.k, &self.q, self.bias.as_deref(), isa).unwrap();
        assert_eq!(w.isa(), isa);
        let acc = self.acc();
        let len = self.m * self.n;
        let ctx =
            |what: &str| format!("{what} on {isa}: m={} n={} k={} {:?}", self.m, self.n, self.k, self.q);

        let p = w.output_i32(self.a_zp);
        let mut got = vec![0i32; len];
        gemm(&self.a, self.m, &w, &p, Output::I32(&mut got)).unwrap();
        if got != acc {
            return Err(ctx("i32"));
        }

        let p = w.output_u8(self.a_scale, self.a_zp, self.out_scale, self.out_zp, self.relu).unwrap();
        assert_eq!(p.kind(), OutputKind::U8);
        let mut got = vec![0u8; len];
        gemm(&self.a, self.m, &w, &p, Output::U8(&mut got)).unwrap();
        let oracle = |relu| {
            let (q, bias) = (&self.q, self.bias.as_deref());
            requant_u8(&acc, self.n, q, bias, self.a_scale, self.out_scale, self.out_zp, relu)
        };
        let want = oracle(self.relu);
        if got != want {
            let i = got.iter().zip(&want).position(|(g, e)| g != e).unwrap();
            return Err(format!("{} at {i}: got {} want {} (acc {})", ctx("u8"), got[i], want[i], acc[i]));
        }
        if !appends(&want, |out| gemm(&self.a, self.m, &w, &p, out).unwrap()) {
            return Err(ctx("u8 appended"));
        }

        // The range replaces the ReLU floor: the oracle without ReLU, clamped.
        let (lo, hi) = self.range;
        let p = w.output_u8(self.a_scale, self.a_zp, self.out_scale, self.out_zp, self.relu).unwrap();
        let p = p.with_range(lo, hi).unwrap();
        assert_eq!(p.range(), (lo, hi));
        let mut got = vec![0u8; len];
        gemm(&self.a, self.m, &w, &p, Output::U8(&mut got)).unwrap();
        let want = oracle(false);
        if let Some(i) = got.iter().zip(&want).position(|(&g, &e)| g != e.clamp(lo, hi)) {
            return Err(format!(
                "{} at {i}: got {} want {}",
                ctx("u8 in [{lo}, {hi}]"),
                got[i],
                want[i].clamp(lo, hi)
            ));
        }

        let p = w.output_f32(self.a_scale, self.a_zp, self.relu).unwrap();
        let mut got = vec![0f32; len];
        gemm(&self.a, self.m, &w, &p, Output::F32(&mut got)).unwrap();
        let want = dequant_f32(&acc, self.n, &self.q, self.bias.as_deref(), self.a_scale, self.relu);
        if got.iter().map(|x| x.to_bits()).ne(want.iter().map(|x| x.to_bits())) {
            return Err(ctx("f32"));
        }
        Ok(())
    }
}

fn check_all_tiers(case: &Case) {
    for isa in Isa::supported() {
        case.check(isa).unwrap_or_else(|e| panic!("{e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_tier_matches_the_oracle(
        m in 1usize..40, n in 1usize..80, k in 1usize..200, seed in any::<u64>(),
        full_range in any::<bool>(), w_zp in any::<bool>(),
    ) {
        let mut rng = Rng(seed | 1);
        let (a_max, w_range) = if full_range { (255, (-128, 127)) } else { (127, (-64, 63)) };
        let case = Case::random(&mut rng, m, n, k, a_max, w_range, w_zp);
        for isa in Isa::supported() {
            prop_assert!(case.check(isa).is_ok(), "{:?}", case.check(isa));
        }
    }
}

/// Edge shapes: 1-element dimensions, every K remainder, N and M tails of every tile width.
#[test]
fn battery_of_edge_shapes_on_every_tier() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let shapes = [
        (1, 1, 1),
        (1, 1, 2),
        (1, 1, 3),
        (1, 1, 4),
        (1, 1, 5),
        (2, 3, 7),
        (8, 32, 64),
        (9, 33, 65),
        (7, 31, 63),
        (16, 17, 1),
        (1, 100, 300),
        (33, 1, 129),
        (17, 64, 576),
        (5, 48, 256),
        (64, 96, 130),
        // AMX tiles (K >= 128, N >= 32): one and two row tiles, row tails, partial K steps.
        (16, 32, 128),
        (31, 33, 191),
        (48, 64, 256),
        (70, 100, 129),
        (32, 32, 323),
    ];
    for &(m, n, k) in &shapes {
        for w_zp in [false, true] {
            check_all_tiers(&Case::random(&mut rng, m, n, k, 255, (-128, 127), w_zp));
            check_all_tiers(&Case::random(&mut rng, m, n, k, 127, (-128, 127), w_zp));
            check_all_tiers(&Case::random(&mut rng, m, n, k, 255, (-64, 63), w_zp));
        }
    }
}

/// Extreme values: activations 255 and weights -128/127, where a `vpmaddubsw` pair would
/// saturate (the AVX2 tier must take its exact path), and large accumulators.
#[test]
fn saturating_pairs_are_exact_on_every_tier() {
    let (m, n, k) = (11, 37, 260);
    let a = vec![255u8; m * k];
    let w: Vec<i8> = (0..n * k).map(|i| if i % 3 == 0 { 127 } else { -128 }).collect();
    for a_zp in [0u8, 255, 128] {
        let case = Case {
            m,
            n,
            k,
            a: a.clone(),
            w: w.clone(),
            q: WeightQParams::per_tensor(0.001),
            bias: None,
            a_scale: 0.02,
            a_zp,
            out_scale: 5.0,
            out_zp: 128,
            relu: false,
            range: (100, 140),
        };
        check_all_tiers(&case);
    }
}

/// The same bits for 1, 2 and 3 threads, with shapes that split rows, panels and neither.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng(42);
    for &(m, n, k) in &[(300, 64, 256), (20, 512, 300), (9, 40, 1000), (1, 1000, 2048)] {
        let case = Case::random(&mut rng, m, n, k, 255, (-128, 127), true);
        let acc = case.acc();
        for isa in Isa::supported() {
            let w = PackedWeights::with_isa(&case.w, n, k, &case.q, case.bias.as_deref(), isa).unwrap();
            let p = w.output_u8(case.a_scale, case.a_zp, case.out_scale, case.out_zp, case.relu).unwrap();
            let pi = w.output_i32(case.a_zp);
            let mut first: Option<Vec<u8>> = None;
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![0u8; m * n];
                let mut raw = vec![0i32; m * n];
                pool.install(|| {
                    gemm(&case.a, m, &w, &p, Output::U8(&mut out)).unwrap();
                    gemm(&case.a, m, &w, &pi, Output::I32(&mut raw)).unwrap();
                });
                assert_eq!(raw, acc, "{isa} {threads} threads {m}x{n}x{k}");
                match &first {
                    None => first = Some(out),
                    Some(f) => assert_eq!(&out, f, "{isa} {threads} threads {m}x{n}x{k}"),
                }
            }
        }
    }
}

#[test]
fn the_active_tier_packs_by_default() {
    let w = PackedWeights::new(&[1, 2, 3], 1, 3, &WeightQParams::per_tensor(0.1), None).unwrap();
    assert_eq!(w.isa(), Isa::active());
    assert_eq!((w.n(), w.k()), (1, 3));
    assert!(w.weights_7bit());
}

#[test]
fn bad_input_is_a_typed_error() {
    let q = WeightQParams::per_tensor(0.1);
    let w8 = vec![1i8; 12];
    let shape = |e: KernelError| matches!(e, KernelError::ShapeMismatch { .. });
    let invalid = |e: KernelError| matches!(e, KernelError::InvalidArgument { .. });
    for isa in Isa::supported() {
        // Packing.
        assert!(shape(PackedWeights::with_isa(&w8, 3, 5, &q, None, isa).unwrap_err()));
        assert!(invalid(PackedWeights::with_isa(&[], 0, 4, &q, None, isa).unwrap_err()));
        assert!(invalid(PackedWeights::with_isa(&[], 3, 0, &q, None, isa).unwrap_err()));
        assert!(shape(PackedWeights::with_isa(&w8, 3, 4, &q, Some(&[0.0; 2]), isa).unwrap_err()));
        let bad_zp = WeightQParams::PerTensor { scale: 0.1, zero_point: 200 };
        assert!(invalid(PackedWeights::with_isa(&w8, 3, 4, &bad_zp, None, isa).unwrap_err()));
        let bad_scale = WeightQParams::per_tensor(-1.0);
        assert!(matches!(
            PackedWeights::with_isa(&w8, 3, 4, &bad_scale, None, isa),
            Err(KernelError::Quant(_))
        ));
        let short = WeightQParams::per_channel(vec![0.1; 2]);
        assert!(shape(PackedWeights::with_isa(&w8, 3, 4, &short, None, isa).unwrap_err()));

        let w = PackedWeights::with_isa(&w8, 3, 4, &q, None, isa).unwrap();
        let p = w.output_u8(0.1, 3, 0.2, 4, false).unwrap();
        assert!(matches!(w.output_u8(f64::NAN, 3, 0.2, 4, false), Err(KernelError::Quant(_))));
        assert!(matches!(w.output_u8(0.1, 3, 0.0, 4, false), Err(KernelError::Quant(_))));
        // A range that is empty, or on a pipeline that is not u8.
        assert!(invalid(p.clone().with_range(9, 8).unwrap_err()));
        assert!(invalid(w.output_i32(3).with_range(0, 255).unwrap_err()));
        assert!(invalid(w.output_f32(0.1, 3, false).unwrap().with_range(0, 6).unwrap_err()));
        let a = vec![7u8; 8];
        let mut out = vec![0u8; 6];
        // A of the wrong length for m x k, M = 0.
        assert!(shape(gemm(&a[..7], 2, &w, &p, Output::U8(&mut out)).unwrap_err()));
        assert!(invalid(gemm(&[], 0, &w, &p, Output::U8(&mut [])).unwrap_err()));
        // Output of the wrong size or element type.
        assert!(shape(gemm(&a, 2, &w, &p, Output::U8(&mut out[..5])).unwrap_err()));
        assert!(shape(gemm(&a, 2, &w, &p, Output::U8(&mut [0u8; 7])).unwrap_err()));
        assert!(invalid(gemm(&a, 2, &w, &p, Output::I32(&mut [0i32; 6])).unwrap_err()));
        assert!(invalid(gemm(&a, 2, &w, &w.output_i32(3), Output::AppendU8(&mut Vec::new())).unwrap_err()));
        // A pipeline of other weights (K mismatch between weights and pipeline).
        let other = PackedWeights::with_isa(&w8, 2, 6, &q, None, isa).unwrap();
        let po = other.output_u8(0.1, 3, 0.2, 4, false).unwrap();
        assert!(invalid(gemm(&a, 2, &w, &po, Output::U8(&mut out)).unwrap_err()));
        // K of A that does not match the packed weights.
        assert!(shape(gemm(&a, 1, &other, &po, Output::U8(&mut out[..2])).unwrap_err()));
        gemm(&a, 2, &w, &p, Output::U8(&mut out)).unwrap();
        // acc = (7 - 3) * 1 * 4 = 16; 16 * (0.1 * 0.1 / 0.2) = 0.8 -> 1; + 4.
        assert_eq!(out, vec![5u8; 6]);
    }
}

/// Output scales that drive the requantized value past i16 and past i32 (cvtps2dq's
/// out-of-range result): the saturating pack and the ReLU floor on every tier.
#[test]
fn extreme_output_scales_saturate_like_qcore() {
    let mut rng = Rng(0xDEADBEEF);
    for out_scale in [1e-12, 1e-7, 1e-4, 1e3] {
        for relu in [false, true] {
            let mut case = Case::random(&mut rng, 9, 40, 70, 255, (-128, 127), false);
            case.out_scale = out_scale;
            case.relu = relu;
            case.bias = Some(rng.f32s(40, 1e4));
            check_all_tiers(&case);
        }
    }
}
