//! Layout-converting and plain quantize / dequantize (`qkernels::quant`): every tier equals the
//! qcore oracle bit for bit (property tests over shapes, parameters and edge values), and bad
//! input is a typed error.

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qcore::{AffineQuantizer, QDType, dequantize_val, quantize_per_tensor};
use qkernels::elementwise::PerTensor;
use qkernels::quant::{self, TILE};
use qkernels::{Isa, KernelError};
use qtest::random_f32s;

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 96, ..ProptestConfig::default() }
}

fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![1e-4f64..2.0, Just(1.0), Just(0.05), Just(0.25), 1e-8f64..1e-4, 2.0f64..1e4]
}

fn qparams() -> impl Strategy<Value = PerTensor> {
    (scale(), prop_oneof![0i64..=255, Just(0), Just(127), Just(128), Just(255)])
        .prop_map(|(s, z)| PerTensor::new(s, z))
}

/// Floats at every edge the rule has: NaN, ±Inf, ±0, values past 2^31 after scaling, exact
/// ties of the scaled value (k + 0.5) / inv, subnormals, and ordinary values.
fn value(q: PerTensor) -> impl Strategy<Value = f32> {
    let s = q.scale as f32;
    prop_oneof![
        4 => (-300.0f32..300.0).prop_map(move |k| k * s),
        2 => (-300i32..300).prop_map(move |k| (k as f32 + 0.5) * s),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => prop_oneof![Just(3e38f32), Just(-3e38f32), Just(2.2e9f32), Just(-2.2e9f32)],
        1 => prop_oneof![Just(f32::MIN_POSITIVE / 4.0), Just(-1e-40f32)],
        1 => any::<f32>(),
    ]
}

fn case_values(len: std::ops::Range<usize>) -> impl Strategy<Value = (PerTensor, Vec<f32>)> {
    qparams().prop_flat_map(move |q| (Just(q), proptest::collection::vec(value(q), len.clone())))
}

fn oracle_q(q: PerTensor, x: &[f32]) -> Vec<u8> {
    let aq = AffineQuantizer::new(q.scale, q.zero_point, QDType::QUInt8).unwrap();
    x.iter().map(|&v| aq.quantize(v) as u8).collect()
}

fn oracle_dq(q: PerTensor, x: &[u8]) -> Vec<f32> {
    x.iter().map(|&v| dequantize_val(q.scale, q.zero_point, i32::from(v))).collect()
}

/// `[N, C, P]` index to channels-last index.
fn cl_index(c: usize, p: usize, b: usize, ch: usize, px: usize) -> usize {
    (b * p + px) * c + ch
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        (1usize..4, 1usize..40).prop_map(|(n, c)| vec![n, c]),
        (1usize..3, 1usize..140, 1usize..150).prop_map(|(n, c, l)| vec![n, c, l]),
        (1usize..3, 1usize..70, 1usize..12, 1usize..12).prop_map(|(n, c, h, w)| vec![n, c, h, w]),
        (1usize..2, 1usize..20, 1usize..4, 1usize..5, 1usize..6)
            .prop_map(|(n, c, d, h, w)| vec![n, c, d, h, w]),
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn quantize_u8_equals_the_oracle_on_every_tier((q, x) in case_values(0..300)) {
        let expected = oracle_q(q, &x);
        for isa in Isa::supported() {
            let mut out = vec![0u8; x.len()];
            quant::quantize_u8(&x, q, &mut out, isa).unwrap();
            prop_assert_eq!(&out, &expected, "{}", isa);
        }
    }

    #[test]
    fn dequantize_u8_equals_the_oracle_on_every_tier(
        q in qparams(),
        x in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let expected = bits(&oracle_dq(q, &x));
        for isa in Isa::supported() {
            let mut out = vec![0f32; x.len()];
            quant::dequantize_u8(&x, q, &mut out, isa).unwrap();
            prop_assert_eq!(bits(&out), expected.clone(), "{}", isa);
        }
    }

    #[test]
    fn quantize_to_channels_last_transposes_the_oracle(
        shape in shape_strategy(),
        q in qparams(),
        seed in any::<u64>(),
    ) {
        let total: usize = shape.iter().product();
        let (n, c, p) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        let mut x: Vec<f32> = random_f32s(total, seed).into_iter().map(|v| v * 300.0 * q.scale as f32).collect();
        // A few edge values at fixed places.
        for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, 0.5 * q.scale as f32].into_iter().enumerate() {
            if i * 7 < total { x[i * 7] = v; }
        }
        let flat = oracle_q(q, &x);
        let mut expected = vec![0u8; total];
        for b in 0..n {
            for ch in 0..c {
                for px in 0..p {
                    expected[cl_index(c, p, b, ch, px)] = flat[(b * c + ch) * p + px];
                }
            }
        }
        for isa in Isa::supported() {
            let mut out = vec![0u8; total];
            quant::quantize_to_channels_last(&x, &shape, q, &mut out, isa).unwrap();
            prop_assert_eq!(&out, &expected, "{} {:?}", isa, shape);
        }
    }

    #[test]
    fn dequantize_from_channels_last_transposes_the_oracle(
        shape in shape_strategy(),
        q in qparams(),
        seed in any::<u64>(),
    ) {
        let total: usize = shape.iter().product();
        let (n, c, p) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        let x = qtest::random_bytes(total, seed);
        let flat = oracle_dq(q, &x);
        let mut expected = vec![0f32; total];
        for b in 0..n {
            for ch in 0..c {
                for px in 0..p {
                    expected[(b * c + ch) * p + px] = flat[cl_index(c, p, b, ch, px)];
                }
            }
        }
        for isa in Isa::supported() {
            let mut out = vec![0f32; total];
            quant::dequantize_from_channels_last(&x, &shape, q, &mut out, isa).unwrap();
            prop_assert_eq!(bits(&out), bits(&expected), "{} {:?}", isa, shape);
        }
    }
}

/// The round trip through channels-last equals qcore's tensor-level quantize and dequantize.
#[test]
fn round_trip_equals_qcore_tensors() {
    let shape = [2usize, 70, 9, 11];
    let total: usize = shape.iter().product();
    let x: Vec<f32> = random_f32s(total, 7).into_iter().map(|v| v * 4.0).collect();
    let q = PerTensor::new(0.0173, 131);
    let qt = quantize_per_tensor(
        &ArrayD::from_shape_vec(IxDyn(&shape), x.clone()).unwrap(),
        q.scale,
        q.zero_point,
        QDType::QUInt8,
    )
    .unwrap();
    let expected: Vec<f32> = qt.dequantize().iter().copied().collect();
    for isa in Isa::supported() {
        let mut cl = vec![0u8; total];
        quant::quantize_to_channels_last(&x, &shape, q, &mut cl, isa).unwrap();
        let mut back = vec![0f32; total];
        quant::dequantize_from_channels_last(&cl, &shape, q, &mut back, isa).unwrap();
        assert_eq!(bits(&back), bits(&expected), "{isa}");
    }
}

/// Tensors large enough to be split over threads equal the single-threaded scalar result.
#[test]
fn parallel_split_is_invisible() {
    let q = PerTensor::new(0.02, 3);
    for shape in [vec![1usize, 3, 224, 224], vec![2, 64, 56, 56], vec![1, 1 << 18], vec![3, TILE + 1, 1000]] {
        let total: usize = shape.iter().product();
        let x: Vec<f32> = random_f32s(total, 11).into_iter().map(|v| v * 3.0).collect();
        let pool1 = qtest::thread_pool(1);
        let mut serial = vec![0u8; total];
        pool1.install(|| quant::quantize_to_channels_last(&x, &shape, q, &mut serial, Isa::Scalar)).unwrap();
        let mut serial_f = vec![0f32; total];
        pool1
            .install(|| quant::dequantize_from_channels_last(&serial, &shape, q, &mut serial_f, Isa::Scalar))
            .unwrap();
        let pool4 = qtest::thread_pool(4);
        for isa in Isa::supported() {
            let mut out = vec![0u8; total];
            pool4.install(|| quant::quantize_to_channels_last(&x, &shape, q, &mut out, isa)).unwrap();
            assert_eq!(out, serial, "{isa} {shape:?}");
            let mut f = vec![0f32; total];
            pool4.install(|| quant::dequantize_from_channels_last(&out, &shape, q, &mut f, isa)).unwrap();
            assert_eq!(bits(&f), bits(&serial_f), "{isa} {shape:?}");
        }
    }
}

/// The rule's edge values, one by one, on every tier (the table of docs/NUMERICS.md 2.1).
#[test]
fn edge_values_follow_fbgemm() {
    let cases: &[(f64, i64, f32, u8)] = &[
        (1.0, 0, f32::NAN, 255),
        (1.0, 128, f32::NAN, 0),
        (1.0, 127, f32::INFINITY, 255),
        (1.0, 128, f32::INFINITY, 0),
        (1.0, 200, f32::NEG_INFINITY, 0),
        (1.0, 5, 2.5, 7),
        (1.0, 5, 3.5, 9),
        (1.0, 5, -2.5, 3),
        (1.0, 10, 2.2e9, 255),
        (1e-3, 255, 1e30, 0),
    ];
    for isa in Isa::supported() {
        for &(s, z, x, e) in cases {
            // Put the value at every position of a 70-element vector so each lane and the tail see it.
            for pos in [0usize, 7, 8, 15, 31, 33, 63, 69] {
                let mut v = vec![0.0f32; 70];
                v[pos] = x;
                let mut out = vec![0u8; 70];
                quant::quantize_u8(&v, PerTensor::new(s, z), &mut out, isa).unwrap();
                assert_eq!(out[pos], e, "{isa}: scale {s} zp {z} x {x} at {pos}");
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let q = PerTensor::new(0.1, 3);
    let isa = Isa::Scalar;
    let mut out = vec![0u8; 6];
    let err = quant::quantize_to_channels_last(&[0.0; 6], &[6], q, &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "shape", .. }), "{err}");
    let err = quant::quantize_to_channels_last(&[0.0; 5], &[1, 2, 3], q, &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "input length", .. }), "{err}");
    let err = quant::quantize_to_channels_last(&[0.0; 6], &[1, 2, 3], q, &mut out[..5], isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "output length", .. }), "{err}");
    let err = quant::quantize_u8(&[0.0; 6], PerTensor::new(0.0, 0), &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::Quant(_)), "{err}");
    let err = quant::quantize_u8(&[0.0; 6], PerTensor::new(0.1, 256), &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::Quant(_)), "{err}");
    let mut f = vec![0f32; 6];
    let err = quant::dequantize_from_channels_last(&out, &[1, 2, 4], q, &mut f, isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err}");
    let err = quant::dequantize_u8(&out, PerTensor::new(f64::NAN, 0), &mut f, isa).unwrap_err();
    assert!(matches!(err, KernelError::Quant(_)), "{err}");
    let err = quant::dequantize_u8(&out, q, &mut f[..2], isa).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err}");
    // Empty tensors are fine.
    quant::quantize_to_channels_last(&[], &[0, 3, 4], q, &mut [], isa).unwrap();
    quant::dequantize_from_channels_last(&[], &[2, 0, 4], q, &mut [], isa).unwrap();
}
