//! Dynamic quantization kernels (`qkernels::dynamic`): every tier equals the scalar tier and the
//! qcore oracle bit for bit (property tests over odd shapes, all-zero and constant inputs), the
//! warm scratch path equals the cold one, and bad input is a typed error.

use proptest::prelude::*;
use qcore::dynamic::{DynamicQuantizer, choose_dynamic_qparams, min_max};
use qkernels::dynamic::{
    DynamicScratch, PackedF16Weights, linear_dynamic, linear_fp16, quantize_activations,
};
use qkernels::gemm::{PackedWeights, WeightQParams};
use qkernels::{Isa, KernelError};
use qtest::random_f32s;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// The sizes the brief of every dimension covers: 1, 7, 33, 257.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(7), Just(33), Just(257)]
}

/// Input data: random, all zero, constant, or tiny.
fn data(len: usize, seed: u64, kind: u8) -> Vec<f32> {
    match kind {
        0 => vec![0.0; len],
        1 => vec![-0.375; len],
        2 => random_f32s(len, seed).into_iter().map(|v| v * 1e-6).collect(),
        _ => random_f32s(len, seed).into_iter().map(|v| v * 3.0 + 0.5).collect(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(cfg(128))]

    #[test]
    fn activation_quantizer_equals_the_oracle_on_every_tier(
        len in 0usize..300, seed in any::<u64>(), kind in 0u8..4, rr in any::<bool>()
    ) {
        let x = data(len, seed, kind);
        let (lo, hi) = min_max(&x).unwrap();
        let q = choose_dynamic_qparams(lo, hi, rr).unwrap();
        let dq = DynamicQuantizer::new(q).unwrap();
        let want: Vec<u8> = x.iter().map(|&v| dq.quantize(v)).collect();
        for isa in Isa::supported() {
            let mut got = vec![0u8; len];
            let gq = quantize_activations(&x, rr, &mut got, isa).unwrap();
            prop_assert_eq!(gq, q, "{}", isa);
            prop_assert_eq!(&got, &want, "{}", isa);
        }
    }
}

proptest! {
    #![proptest_config(cfg(24))]

    #[test]
    fn int8_linear_every_tier_equals_scalar(
        m in dim(), k in dim(), n in dim(), seed in any::<u64>(), kind in 0u8..4,
        per_channel in any::<bool>(), relu in any::<bool>(), has_bias in any::<bool>(), rr in any::<bool>()
    ) {
        let x = data(m * k, seed, kind);
        let w: Vec<i8> = qtest::random_bytes(n * k, seed ^ 1).into_iter().map(|b| b as i8).collect();
        let q = if per_channel {
            WeightQParams::PerChannel {
                scales: (0..n).map(|j| 0.001 + j as f64 * 1e-4).collect(),
                zero_points: (0..n).map(|j| (j % 5) as i32 - 2).collect(),
            }
        } else {
            WeightQParams::PerTensor { scale: 0.0123, zero_point: 3 }
        };
        let bias: Option<Vec<f32>> = has_bias.then(|| random_f32s(n, seed ^ 2));
        let run = |isa: Isa| {
            let packed = PackedWeights::with_isa(&w, n, k, &q, bias.as_deref(), isa).unwrap();
            let mut out = vec![0f32; m * n];
            let mut scratch = DynamicScratch::default();
            let qa = linear_dynamic(&x, m, &packed, rr, relu, &mut out, &mut scratch).unwrap();
            // The warm scratch gives the same bits.
            let mut again = vec![0f32; m * n];
            linear_dynamic(&x, m, &packed, rr, relu, &mut again, &mut scratch).unwrap();
            assert_eq!(bits(&out), bits(&again));
            (qa, out)
        };
        let (q0, want) = run(Isa::Scalar);
        for isa in Isa::supported() {
            let (qa, got) = run(isa);
            prop_assert_eq!(qa, q0);
            prop_assert_eq!(bits(&got), bits(&want), "{}", isa);
        }
    }

    #[test]
    fn fp16_linear_every_tier_equals_scalar(
        m in dim(), k in prop_oneof![dim(), Just(513usize), Just(1030)], n in dim(), seed in any::<u64>(),
        kind in 0u8..4, relu in any::<bool>(), has_bias in any::<bool>()
    ) {
        let x = data(m * k, seed, kind);
        let w: Vec<f32> = random_f32s(n * k, seed ^ 3);
        let bias: Option<Vec<f32>> = has_bias.then(|| random_f32s(n, seed ^ 4));
        let run = |isa: Isa| {
            let packed = PackedF16Weights::with_isa(&w, n, k, bias.as_deref(), isa).unwrap();
            let mut out = vec![0f32; m * n];
            linear_fp16(&x, m, &packed, relu, &mut out).unwrap();
            out
        };
        let want = run(Isa::Scalar);
        for isa in Isa::supported() {
            prop_assert_eq!(bits(&run(isa)), bits(&want), "{}", isa);
        }
    }
}

#[test]
fn a_scratch_moves_between_weights() {
    let x = random_f32s(3 * 7, 9);
    let q = WeightQParams::per_tensor(0.01);
    let w1 = PackedWeights::new(&[1i8; 5 * 7], 5, 7, &q, None).unwrap();
    let w2 = PackedWeights::new(&[-3i8; 5 * 7], 5, 7, &q, Some(&[1.0; 5])).unwrap();
    let mut shared = DynamicScratch::default();
    for w in [&w1, &w2, &w1] {
        let (mut a, mut b) = (vec![0f32; 15], vec![0f32; 15]);
        linear_dynamic(&x, 3, w, true, false, &mut a, &mut shared).unwrap();
        linear_dynamic(&x, 3, w, true, false, &mut b, &mut DynamicScratch::default()).unwrap();
        assert_eq!(bits(&a), bits(&b));
    }
}

#[test]
fn empty_input_is_an_empty_output() {
    let w = PackedWeights::new(&[1i8; 4], 2, 2, &WeightQParams::per_tensor(0.5), None).unwrap();
    let q = linear_dynamic(&[], 0, &w, true, false, &mut [], &mut DynamicScratch::default()).unwrap();
    assert_eq!((q.scale, q.zero_point), (0.1, 0));
    let f = PackedF16Weights::new(&[1.0; 4], 2, 2, None).unwrap();
    linear_fp16(&[], 0, &f, false, &mut []).unwrap();
}

#[test]
fn bad_input_is_a_typed_error() {
    let w = PackedWeights::new(&[1i8; 4], 2, 2, &WeightQParams::per_tensor(0.5), None).unwrap();
    let mut s = DynamicScratch::default();
    let mut out = [0f32; 2];
    let err = linear_dynamic(&[1.0; 3], 1, &w, true, false, &mut out, &mut s).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. } | KernelError::InvalidArgument { .. }), "{err}");
    assert!(linear_dynamic(&[1.0; 2], 1, &w, true, false, &mut [0f32; 3], &mut s).is_err());
    for isa in Isa::supported() {
        let err = quantize_activations(&[1.0, f32::NAN], false, &mut [0u8; 2], isa).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        let many = [f32::INFINITY; 40];
        assert!(quantize_activations(&many, false, &mut [0u8; 40], isa).is_err());
    }
    assert!(PackedF16Weights::new(&[1.0; 3], 2, 2, None).is_err());
    assert!(PackedF16Weights::new(&[1.0; 4], 2, 2, Some(&[0.0])).is_err());
    let f = PackedF16Weights::new(&[1.0; 4], 2, 2, None).unwrap();
    assert!(linear_fp16(&[1.0; 3], 1, &f, false, &mut [0f32; 2]).is_err());
}

/// Large enough for the fp16 GEMM to split its panels between threads: the same bits as the
/// scalar code at 1, 2 and 3 threads on every tier.
#[test]
fn fp16_linear_splits_between_threads_without_changing_bits() {
    let (m, k, n) = (33, 1030, 200);
    let x = random_f32s(m * k, 1);
    let w = random_f32s(n * k, 2);
    let bias = random_f32s(n, 3);
    let run = |isa: Isa| {
        let packed = PackedF16Weights::with_isa(&w, n, k, Some(&bias), isa).unwrap();
        let mut out = vec![0f32; m * n];
        linear_fp16(&x, m, &packed, false, &mut out).unwrap();
        out
    };
    let want = run(Isa::Scalar);
    for threads in [1, 2, 3] {
        let pool = qtest::thread_pool(threads);
        for isa in Isa::supported() {
            assert_eq!(bits(&pool.install(|| run(isa))), bits(&want), "{isa}, {threads} threads");
        }
    }
}
