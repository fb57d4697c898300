//! Quantized batch norm (`qkernels::norm`): every tier equals a naive reference written from
//! PyTorch's `compute_fused_params` and `q_batch_norm_kernel` (property tests over channel
//! counts, row counts, statistics and parameters, including NaN, infinite and huge folded
//! scales), the rayon split is invisible, and bad input is a typed error.

use proptest::prelude::*;
use qkernels::elementwise::PerTensor;
use qkernels::norm::{self, BatchNormParams, FusedBatchNorm};
use qkernels::{Isa, KernelError};

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 128, ..ProptestConfig::default() }
}

/// The reference, transcribed: folded parameters without FMA, then per element the vector rule
/// (`fma`, FBGEMM's quantize with scale 1) for the first `C - C mod 8` channels and the scalar
/// rule (`fma`, `lrintf`, i64) for the rest.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[u8],
    c: usize,
    w: &[f32],
    b: &[f32],
    m: &[f32],
    v: &[f32],
    eps: f64,
    iq: PerTensor,
    oq: PerTensor,
    relu: bool,
) -> Vec<u8> {
    let mut alpha = vec![0f32; c];
    let mut beta = vec![0f32; c];
    for ch in 0..c {
        let inv_sigma = (1.0 / ((v[ch] + eps as f32).sqrt() as f64)) as f32;
        alpha[ch] = ((inv_sigma * w[ch]) as f64 * (iq.scale / oq.scale)) as f32;
        beta[ch] = ((b[ch] - m[ch] * inv_sigma * w[ch]) as f64 / oq.scale) as f32;
    }
    let (izp, ozp) = (iq.zero_point as i32, oq.zero_point as i32);
    let vend = c - c % 8;
    x.iter()
        .enumerate()
        .map(|(i, &q)| {
            let ch = i % c;
            let y = alpha[ch].mul_add((i32::from(q) - izp) as f32, beta[ch]);
            let r = if ch < vend {
                let t = if y.is_nan() || y > 2_147_483_520.0 { 2_147_483_520.0 } else { y };
                // cvtps2dq: out of range gives i32::MIN.
                let r = if t < -2_147_483_648.0 { i32::MIN } else { t.round_ties_even() as i32 };
                r.wrapping_add(ozp).clamp(0, 255)
            } else {
                let l = y.round_ties_even();
                let l = if l.is_nan() || l.abs() >= 9.2e18 { i64::MIN } else { l as i64 };
                (i64::from(ozp) + l).clamp(0, 255) as i32
            };
            (if relu { r.max(ozp) } else { r }) as u8
        })
        .collect()
}

fn stat() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -3.0f32..3.0,
        1 => Just(0.0f32),
        1 => prop_oneof![Just(1e6f32), Just(-1e6f32), Just(1e-20f32)],
    ]
}

fn var() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => 0.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(-1.0f32), // NaN inv_sigma
        1 => Just(1e-30f32),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    c: usize,
    rows: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    eps: f64,
    iq: PerTensor,
    oq: PerTensor,
    relu: bool,
    x: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..80, 1usize..12).prop_flat_map(|(c, rows)| {
        let vecf = |s: BoxedStrategy<f32>| proptest::collection::vec(s, c);
        (
            vecf(stat().boxed()),
            vecf(stat().boxed()),
            vecf(stat().boxed()),
            vecf(var().boxed()),
            prop_oneof![Just(1e-5f64), Just(0.0), 1e-6f64..0.5],
            (prop_oneof![1e-3f64..0.5, Just(1.0)], 0i64..=255),
            (prop_oneof![1e-3f64..0.5, Just(1.0), Just(1e-7)], prop_oneof![0i64..=255, Just(128), Just(200)]),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), c * rows),
        )
            .prop_map(move |(w, b, m, v, eps, iq, oq, relu, x)| Case {
                c,
                rows,
                w,
                b,
                m,
                v,
                eps,
                iq: PerTensor::new(iq.0, iq.1),
                oq: PerTensor::new(oq.0, oq.1),
                relu,
                x,
            })
    })
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn every_tier_equals_the_reference(k in case()) {
        let expected = reference(&k.x, k.c, &k.w, &k.b, &k.m, &k.v, k.eps, k.iq, k.oq, k.relu);
        let params = BatchNormParams { weight: &k.w, bias: &k.b, mean: &k.m, var: &k.v, eps: k.eps };
        let bn = FusedBatchNorm::new(&params, k.iq, k.oq, k.relu).unwrap();
        let by_element: Vec<u8> = k.x.iter().enumerate().map(|(i, &q)| bn.element(i % k.c, q)).collect();
        prop_assert_eq!(&by_element, &expected);
        let f = if k.relu { norm::batch_norm2d_relu } else { norm::batch_norm2d };
        // The rows as [1, C, rows, 1] for 2d, [1, C, rows] for 1d.
        for isa in Isa::supported() {
            let mut out = vec![0u8; k.x.len()];
            f(&k.x, &[1, k.c, k.rows, 1], k.iq, &params, &mut out, k.oq, isa).unwrap();
            prop_assert_eq!(&out, &expected, "2d on {}", isa);
            let f1 = if k.relu { norm::batch_norm1d_relu } else { norm::batch_norm1d };
            let mut out1 = vec![0u8; k.x.len()];
            f1(&k.x, &[1, k.c, k.rows], k.iq, &params, &mut out1, k.oq, isa).unwrap();
            prop_assert_eq!(&out1, &expected, "1d on {}", isa);
        }
    }
}

#[test]
fn rank_two_and_five_shapes_and_the_parallel_split() {
    let c = 45;
    let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.03).collect();
    let b: Vec<f32> = (0..c).map(|i| (i as f32 - 20.0) * 0.1).collect();
    let m: Vec<f32> = (0..c).map(|i| (i % 7) as f32 * 0.2).collect();
    let v: Vec<f32> = (0..c).map(|i| 0.1 + (i % 5) as f32).collect();
    let params = BatchNormParams { weight: &w, bias: &b, mean: &m, var: &v, eps: 1e-5 };
    let (iq, oq) = (PerTensor::new(0.031, 117), PerTensor::new(0.027, 64));
    let shape = [3, c, 4, 20, 21];
    let total: usize = shape.iter().product();
    let x = qtest::random_bytes(total, 5);
    let expected = reference(&x, c, &w, &b, &m, &v, 1e-5, iq, oq, true);
    let pool = qtest::thread_pool(4);
    for isa in Isa::supported() {
        let mut out = vec![0u8; total];
        pool.install(|| norm::batch_norm3d_relu(&x, &shape, iq, &params, &mut out, oq, isa)).unwrap();
        assert_eq!(out, expected, "3d on {isa}");
        let mut out = vec![0u8; 7 * c];
        norm::batch_norm1d(&x[..7 * c], &[7, c], iq, &params, &mut out, oq, isa).unwrap();
        assert_eq!(out, reference(&x[..7 * c], c, &w, &b, &m, &v, 1e-5, iq, oq, false), "1d on {isa}");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let z = [0f32; 4];
    let params = BatchNormParams { weight: &z, bias: &z, mean: &z, var: &z, eps: 1e-5 };
    let q = PerTensor::new(0.1, 3);
    let x = [0u8; 8];
    let mut out = [0u8; 8];
    let isa = Isa::Scalar;
    let err = norm::batch_norm2d(&x, &[2, 4, 1], q, &params, &mut out, q, isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "rank of the input", .. }), "{err}");
    let err = norm::batch_norm1d(&x, &[1, 4, 3], q, &params, &mut out, q, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "input length", .. }), "{err}");
    let err = norm::batch_norm1d(&x, &[2, 4], q, &params, &mut out[..7], q, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "output length", .. }), "{err}");
    let err = norm::batch_norm1d(&x, &[4, 2], q, &params, &mut out, q, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "weight length", .. }), "{err}");
    let short = BatchNormParams { var: &z[..3], ..params };
    let err = norm::batch_norm1d(&x, &[2, 4], q, &short, &mut out, q, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "var length", .. }), "{err}");
    let err = norm::batch_norm3d(&x, &[1, 4, 1, 2, 1], q, &params, &mut out, PerTensor::new(0.1, 300), isa)
        .unwrap_err();
    assert!(matches!(err, KernelError::Quant(_)), "{err}");
    let err = norm::batch_norm3d(&x, &[1, 4, 1, 2, 1], PerTensor::new(-1.0, 0), &params, &mut out, q, isa)
        .unwrap_err();
    assert!(matches!(err, KernelError::Quant(_)), "{err}");
    let bn = FusedBatchNorm::new(&params, q, q, false).unwrap();
    let err = bn.run(&x[..7], &mut out[..7], isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "input length", .. }), "{err}");
    // Empty tensors are fine.
    norm::batch_norm2d(&[], &[0, 4, 2, 2], q, &params, &mut [], q, isa).unwrap();
}

/// Folded values at every edge of the two rules, in vector and tail channels, on every tier:
/// with unit scales, eps 0, var 1 and mean 0, alpha is the weight and beta the bias, so an input
/// of 1 (zero point 0) gives `y = weight` (for infinite and NaN weights beta is NaN, and so is y).
#[test]
fn edge_values_in_vector_and_tail_channels() {
    let ys = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3e9,
        -3e9,
        1e19,
        -1e19,
        9.223372e18,
        2_147_483_520.0,
        2_147_483_648.0,
        -2_147_483_648.0,
        1e9,
        -1e9,
        2.5,
        -0.5,
        254.5,
        0.0,
    ];
    for c in [ys.len(), 7, 8, 9, 23] {
        let w: Vec<f32> = (0..c).map(|i| ys[i % ys.len()]).collect();
        let z = vec![0f32; c];
        let v = vec![1f32; c];
        let params = BatchNormParams { weight: &w, bias: &z, mean: &z, var: &v, eps: 0.0 };
        let x = vec![1u8; 3 * c];
        for zp in [0i64, 100, 128, 255] {
            for relu in [false, true] {
                let (iq, oq) = (PerTensor::new(1.0, 0), PerTensor::new(1.0, zp));
                let bn = FusedBatchNorm::new(&params, iq, oq, relu).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(bn.alpha()), bits(&w), "alpha is the weight");
                let expected = reference(&x, c, &w, &z, &z, &v, 0.0, iq, oq, relu);
                for isa in Isa::supported() {
                    let mut out = vec![0u8; x.len()];
                    bn.run(&x, &mut out, isa).unwrap();
                    assert_eq!(out, expected, "c {c} zp {zp} relu {relu} on {isa}");
                }
            }
        }
    }
    // The rules disagree where PyTorch's do: NaN and +Inf give 255 (zero point below 128) in a
    // vector channel, 0 in a tail channel.
    let w = [f32::NAN; 9];
    let z = [0f32; 9];
    let v = [1f32; 9];
    let params = BatchNormParams { weight: &w, bias: &z, mean: &z, var: &v, eps: 0.0 };
    let bn = FusedBatchNorm::new(&params, PerTensor::new(1.0, 0), PerTensor::new(1.0, 3), false).unwrap();
    assert_eq!((bn.element(0, 1), bn.element(8, 1)), (255, 0));
}
