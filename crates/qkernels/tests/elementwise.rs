//! Every quantized elementwise op on every tier in `Isa::supported()` equals the qcore scalar
//! oracle bit for bit (property tests over lengths, parameters and broadcast patterns), and bad
//! input is a typed error.
// Naive references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use qcore::requant::{AddRequant, MulRequant, ScalarOp};
use qcore::{AffineQuantizer, QDType, dequantize_val, quantize_val};
use qkernels::elementwise::{
    self, BinaryOp, CatInput, Dequant, Lut, PYTORCH_CAT_VECTOR_CHANNELS, PerTensor, QElem, Unary,
    broadcast_shape,
};
use qkernels::{Isa, KernelError};

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 96, ..ProptestConfig::default() }
}

fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![1e-4f64..2.0, Just(1.0), Just(0.05), 1e-8f64..1e-4, 2.0f64..1e4]
}

fn qparams(dtype: QDType) -> impl Strategy<Value = PerTensor> {
    (scale(), dtype.min()..=dtype.max()).prop_map(|(s, z)| PerTensor::new(s, z))
}

fn data<T: QElem>(len: usize) -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<u8>().prop_map(|b| T::from_index(usize::from(b))), len)
}

fn binary_oracle(
    op: BinaryOp,
    a: PerTensor,
    b: PerTensor,
    o: PerTensor,
    dtype: QDType,
) -> Box<dyn Fn(i32, i32) -> i32> {
    match op {
        BinaryOp::Add | BinaryOp::AddRelu => {
            let r = AddRequant::new(a.pair(), b.pair(), o.pair(), dtype, op == BinaryOp::AddRelu).unwrap();
            Box::new(move |x, y| r.apply(x, y))
        }
        BinaryOp::Mul | BinaryOp::MulRelu => {
            let r = MulRequant::new(a.pair(), b.pair(), o.pair(), dtype, op == BinaryOp::MulRelu).unwrap();
            Box::new(move |x, y| r.apply(x, y))
        }
    }
}

const OPS: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::AddRelu, BinaryOp::Mul, BinaryOp::MulRelu];

fn check_same_shape<T: QElem>(
    a: &[T],
    b: &[T],
    qa: PerTensor,
    qb: PerTensor,
    qo: PerTensor,
) -> Result<(), TestCaseError> {
    for op in OPS {
        let oracle = binary_oracle(op, qa, qb, qo, T::DTYPE);
        let expected: Vec<i32> = a.iter().zip(b).map(|(x, y)| oracle(x.to_i32(), y.to_i32())).collect();
        for isa in Isa::supported() {
            let mut out = vec![T::default(); a.len()];
            let relu = matches!(op, BinaryOp::AddRelu | BinaryOp::MulRelu);
            match op {
                BinaryOp::Add | BinaryOp::AddRelu => elementwise::add(a, qa, b, qb, &mut out, qo, relu, isa),
                _ => elementwise::mul(a, qa, b, qb, &mut out, qo, relu, isa),
            }
            .unwrap();
            let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
            prop_assert_eq!(&got, &expected, "{:?} on {}", op, isa);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn add_mul_u8_equal_oracle_on_every_tier(
        (a, b) in (0usize..300).prop_flat_map(|n| (data::<u8>(n), data::<u8>(n))),
        qa in qparams(QDType::QUInt8), qb in qparams(QDType::QUInt8), qo in qparams(QDType::QUInt8),
    ) {
        check_same_shape(&a, &b, qa, qb, qo)?;
    }

    #[test]
    fn add_mul_i8_equal_oracle_on_every_tier(
        (a, b) in (0usize..300).prop_flat_map(|n| (data::<i8>(n), data::<i8>(n))),
        qa in qparams(QDType::QInt8), qb in qparams(QDType::QInt8), qo in qparams(QDType::QInt8),
    ) {
        check_same_shape(&a, &b, qa, qb, qo)?;
    }

    #[test]
    fn broadcast_binary_equals_oracle(
        shape in proptest::collection::vec(1usize..6, 1..4),
        mask in proptest::collection::vec(any::<bool>(), 4),
        drop_leading in 0usize..2,
        seed in any::<u64>(),
        qa in qparams(QDType::QUInt8), qb in qparams(QDType::QUInt8), qo in qparams(QDType::QUInt8),
    ) {
        // b: some dimensions of a set to 1, possibly with leading dimensions dropped.
        let mut b_shape: Vec<usize> = shape.iter().zip(&mask).map(|(&d, &m)| if m { 1 } else { d }).collect();
        let drop = drop_leading.min(b_shape.len() - 1);
        b_shape.drain(..drop);
        let (na, nb): (usize, usize) = (shape.iter().product(), b_shape.iter().product());
        let mut state = seed;
        let mut next = || { state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (state >> 56) as u8 };
        let a: Vec<u8> = (0..na).map(|_| next()).collect();
        let b: Vec<u8> = (0..nb).map(|_| next()).collect();
        let out_shape = broadcast_shape("test", &shape, &b_shape).unwrap();
        prop_assert_eq!(&out_shape, &shape);
        // Strides of b within the output.
        let rank = shape.len();
        let pad = rank - b_shape.len();
        for op in OPS {
            let oracle = binary_oracle(op, qa, qb, qo, QDType::QUInt8);
            let oracle2 = binary_oracle(op, qb, qa, qo, QDType::QUInt8);
            let mut expected = vec![0i32; na];
            let mut expected2 = vec![0i32; na];
            for i in 0..na {
                let (mut rem, mut bi, mut stride) = (i, 0, 1);
                let mut idx = vec![0; rank];
                for d in (0..rank).rev() { idx[d] = rem % shape[d]; rem /= shape[d]; }
                for d in (pad..rank).rev() {
                    let bd = b_shape[d - pad];
                    if bd != 1 { bi += idx[d] * stride; }
                    stride *= bd;
                }
                expected[i] = oracle(i32::from(a[i]), i32::from(b[bi]));
                expected2[i] = oracle2(i32::from(b[bi]), i32::from(a[i]));
            }
            for isa in Isa::supported() {
                let mut out = vec![0u8; na];
                elementwise::binary(op, &a, &shape, qa, &b, &b_shape, qb, &mut out, qo, isa).unwrap();
                let got: Vec<i32> = out.iter().map(|&v| i32::from(v)).collect();
                prop_assert_eq!(&got, &expected, "{:?} on {}, b {:?}", op, isa, b_shape);
                // And with the operands swapped (a broadcast instead of b).
                let mut out2 = vec![0u8; na];
                elementwise::binary(op, &b, &b_shape, qb, &a, &shape, qa, &mut out2, qo, isa).unwrap();
                let got2: Vec<i32> = out2.iter().map(|&v| i32::from(v)).collect();
                prop_assert_eq!(&got2, &expected2, "{:?} swapped on {}, b {:?}", op, isa, b_shape);
            }
        }
    }

    #[test]
    fn scalar_ops_equal_oracle(
        a in (0usize..200).prop_flat_map(data::<u8>),
        q in qparams(QDType::QUInt8),
        c in prop_oneof![-50.0f64..50.0, Just(0.0), -1e4f64..1e4],
        relu in any::<bool>(),
    ) {
        for isa in Isa::supported() {
            let mut out = vec![0u8; a.len()];
            let got_q = elementwise::add_scalar(&a, q, c, relu, &mut out, isa).unwrap();
            let plan = ScalarOp::add_scalar(q.scale, q.zero_point, c, QDType::QUInt8, relu).unwrap();
            prop_assert_eq!(got_q, PerTensor::new(plan.scale, plan.zero_point));
            let expected: Vec<u8> = a.iter().map(|&x| plan.apply(i32::from(x)) as u8).collect();
            prop_assert_eq!(&out, &expected, "add_scalar on {}", isa);
            let got_q = elementwise::mul_scalar(&a, q, c, relu, &mut out, isa).unwrap();
            let plan = ScalarOp::mul_scalar(q.scale, q.zero_point, c, QDType::QUInt8, relu).unwrap();
            prop_assert_eq!(got_q, PerTensor::new(plan.scale, plan.zero_point));
            let expected: Vec<u8> = a.iter().map(|&x| plan.apply(i32::from(x)) as u8).collect();
            prop_assert_eq!(&out, &expected, "mul_scalar on {}", isa);
        }
    }

    #[test]
    fn unary_ops_equal_their_element_rule_on_every_tier(
        x in (0usize..400).prop_flat_map(data::<i8>),
        q in qparams(QDType::QInt8),
        oq in qparams(QDType::QInt8),
        slope in -2.0f32..2.0,
        (lo, hi) in (-10.0f32..10.0, 0.0f32..10.0).prop_map(|(a, d)| (a, a + d)),
    ) {
        let ops = [
            Unary::Relu, Unary::Relu6, Unary::Hardtanh { min: lo, max: hi }, Unary::Hardswish, Unary::Hardsigmoid,
            Unary::Sigmoid, Unary::Tanh, Unary::Threshold { threshold: lo, value: hi }, Unary::LeakyRelu { negative_slope: slope }, Unary::Elu { alpha: 1.3, scale: 1.0, input_scale: 1.0 },
        ];
        for op in ops {
            let out_q = if op.output_qparams_free() { oq } else { op.output_qparams(q, QDType::QInt8) };
            let lut = Lut::<i8>::unary(op, q, out_q).unwrap();
            // Element rule, independently written: dequantize (FMA form) -> f32 op -> quantize.
            let s = q.scale as f32;
            let deq = |v: i8| s.mul_add(f32::from(v), s * -(q.zero_point as f32));
            let quant = AffineQuantizer::new(out_q.scale, out_q.zero_point, QDType::QInt8).unwrap();
            let qv = |x: f32| quantize_val(q.scale, q.zero_point, x, QDType::QInt8);
            for v in i8::MIN..=i8::MAX {
                let x = deq(v);
                let expected = match op {
                    Unary::Relu => i32::from(v).max(q.zero_point as i32),
                    Unary::Relu6 => i32::from(v).max(q.zero_point as i32).min(qv(6.0)),
                    Unary::Hardtanh { min, max } => i32::from(v).max(qv(min)).min(qv(max)),
                    Unary::LeakyRelu { negative_slope } => {
                        quant.quantize(x * if x > 0.0 { 1.0 } else { negative_slope })
                    }
                    // Output scale 1/256: the inverse is exact, so the vector quantize is this.
                    Unary::Hardsigmoid => quant.quantize((x + 3.0).clamp(0.0, 6.0) / 6.0),
                    // Ops with transcendental functions or a double-rounded inverse scale: the
                    // golden fixtures decide; here only the bounds and monotonicity below.
                    _ => i32::from(lut.get(v)),
                };
                prop_assert_eq!(i32::from(lut.get(v)), expected, "{:?} at {}", op, v);
            }
            if matches!(op, Unary::Sigmoid | Unary::Hardsigmoid | Unary::Tanh | Unary::Hardtanh { .. } | Unary::Relu | Unary::Relu6) {
                // Monotone non-decreasing in the dequantized input.
                let mut vals: Vec<i8> = (i8::MIN..=i8::MAX).collect();
                vals.sort_by(|a, b| deq(*a).total_cmp(&deq(*b)));
                prop_assert!(vals.windows(2).all(|w| lut.get(w[0]) <= lut.get(w[1])), "{:?} monotone", op);
            }
            let expected: Vec<i8> = x.iter().map(|&v| lut.get(v)).collect();
            for isa in Isa::supported() {
                let mut out = vec![0i8; x.len()];
                elementwise::unary(op, &x, q, &mut out, out_q, isa).unwrap();
                prop_assert_eq!(&out, &expected, "{:?} on {}", op, isa);
                let mut out2 = vec![0i8; x.len()];
                lut.apply(&x, &mut out2, isa).unwrap();
                prop_assert_eq!(&out2, &expected, "{:?} via Lut::apply on {}", op, isa);
            }
        }
    }

    #[test]
    fn lut_apply_equals_table_on_every_tier(table in proptest::collection::vec(any::<u8>(), 256), x in (0usize..1000).prop_flat_map(data::<u8>)) {
        let lut = Lut::<u8>::from_fn(|v| table[usize::from(v)]);
        let expected: Vec<u8> = x.iter().map(|&v| table[usize::from(v)]).collect();
        for isa in Isa::supported() {
            let mut out = vec![0u8; x.len()];
            lut.apply(&x, &mut out, isa).unwrap();
            prop_assert_eq!(&out, &expected, "{}", isa);
        }
    }

    #[test]
    fn cat_equals_dequantize_then_quantize(
        dim in 0usize..3,
        sizes in proptest::collection::vec(0usize..4, 1..4),
        base in proptest::collection::vec(1usize..5, 3),
        qs in proptest::collection::vec(qparams(QDType::QUInt8), 4),
        relu in any::<bool>(),
        fma in any::<bool>(),
    ) {
        let shapes: Vec<Vec<usize>> = sizes.iter().map(|&s| { let mut sh = base.clone(); sh[dim] = s; sh }).collect();
        let datas: Vec<Vec<u8>> = shapes.iter().enumerate()
            .map(|(i, s)| (0..s.iter().product::<usize>()).map(|j| (j * 37 + i * 11) as u8).collect()).collect();
        let inputs: Vec<CatInput<'_, u8>> = (0..shapes.len()).map(|i| CatInput { data: &datas[i], shape: &shapes[i], q: qs[i] }).collect();
        let out_q = qs[3];
        let mut out_shape = base.clone();
        out_shape[dim] = sizes.iter().sum();
        let total: usize = out_shape.iter().product();
        // Reference: element by element through the dequantize / quantize rules.
        let outer: usize = base[..dim].iter().product();
        let inner: usize = base[dim + 1..].iter().product();
        let quant = AffineQuantizer::new(out_q.scale, out_q.zero_point, QDType::QUInt8).unwrap();
        let mut expected = Vec::with_capacity(total);
        for o in 0..outer {
            for (i, d) in datas.iter().enumerate() {
                let chunk = sizes[i] * inner;
                // The FMA kernel leaves the last `chunk mod 8` values to PyTorch's scalar loop.
                let vector_end = chunk - chunk % PYTORCH_CAT_VECTOR_CHANNELS;
                for (j, &v) in d[o * chunk..(o + 1) * chunk].iter().enumerate() {
                    let q = qs[i];
                    let fma = fma && j < vector_end;
                    let x = if fma {
                        let s = q.scale as f32;
                        s.mul_add(f32::from(v), s * -(q.zero_point as f32))
                    } else {
                        dequantize_val(q.scale, q.zero_point, i32::from(v))
                    };
                    let x = if relu { x.max(0.0) } else { x };
                    let y = if fma {
                        let t = x * (1.0 / out_q.scale) as f32;
                        let t = if t.is_nan() || t > 2_147_483_520.0 { 2_147_483_520.0 } else { t };
                        qcore::cvt_f32_to_i32_x86(t).wrapping_add(out_q.zero_point as i32).clamp(0, 255)
                    } else {
                        quant.quantize(x)
                    };
                    expected.push(y as u8);
                }
            }
        }
        let dequant = if fma { Dequant::Fma } else { Dequant::Plain };
        for isa in Isa::supported() {
            let mut out = vec![0u8; total];
            let shape = elementwise::cat(&inputs, dim, &mut out, out_q, relu, dequant, isa).unwrap();
            prop_assert_eq!(&shape, &out_shape);
            prop_assert_eq!(&out, &expected, "{}", isa);
        }
    }
}

#[test]
fn large_tensors_split_across_threads_give_the_same_bytes() {
    let n = 300_001;
    let a: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
    let b: Vec<u8> = (0..n).map(|i| (i * 13 % 253) as u8).collect();
    let (qa, qb, qo) = (PerTensor::new(0.05, 3), PerTensor::new(0.02, 200), PerTensor::new(0.07, 100));
    let r = AddRequant::new(qa.pair(), qb.pair(), qo.pair(), QDType::QUInt8, false).unwrap();
    let expected: Vec<u8> = a.iter().zip(&b).map(|(&x, &y)| r.apply(x.into(), y.into()) as u8).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for isa in Isa::supported() {
        let mut out = vec![0u8; n];
        pool.install(|| elementwise::add(&a, qa, &b, qb, &mut out, qo, false, isa)).unwrap();
        assert_eq!(out, expected, "{isa}");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let isa = Isa::Scalar;
    let q = PerTensor::new(0.1, 0);
    let a = [1u8; 8];
    let mut out = [0u8; 8];
    let short = [0u8; 7];
    assert!(matches!(
        elementwise::add(&a, q, &short, q, &mut out, q, false, isa),
        Err(KernelError::ShapeMismatch { what: "length of b", got: 7, expected: 8, .. })
    ));
    assert!(matches!(
        elementwise::mul(&a, q, &a, q, &mut out[..3], q, false, isa),
        Err(KernelError::ShapeMismatch { what: "output length", .. })
    ));
    // Non-broadcastable shapes.
    let err = elementwise::binary(BinaryOp::Add, &a, &[2, 4], q, &a[..6], &[2, 3], q, &mut out, q, isa)
        .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::ShapeMismatch { what: "broadcast dimension of b", got: 3, expected: 4, .. }
        ),
        "{err}"
    );
    // Shape and data length disagree.
    assert!(elementwise::binary(BinaryOp::Add, &a, &[3, 3], q, &a, &[8], q, &mut out, q, isa).is_err());
    // Qparams PyTorch refuses: zero scale, NaN scale, zero point out of range.
    for bad in [
        PerTensor::new(0.0, 0),
        PerTensor::new(f64::NAN, 0),
        PerTensor::new(0.1, 256),
        PerTensor::new(0.1, -1),
    ] {
        assert!(matches!(
            elementwise::add(&a, bad, &a, q, &mut out, q, false, isa),
            Err(KernelError::Quant(_))
        ));
        assert!(matches!(
            elementwise::mul(&a, q, &a, q, &mut out, bad, false, isa),
            Err(KernelError::Quant(_))
        ));
        assert!(matches!(
            elementwise::add_scalar(&a, bad, 1.0, false, &mut out, isa),
            Err(KernelError::Quant(_))
        ));
        assert!(elementwise::unary(Unary::Hardswish, &a, q, &mut out, bad, isa).is_err());
    }
    let i8q = PerTensor::new(0.1, 128);
    let b = [0i8; 8];
    let mut ob = [0i8; 8];
    assert!(matches!(elementwise::add(&b, i8q, &b, q, &mut ob, q, false, isa), Err(KernelError::Quant(_))));
    // Sigmoid's output parameters are fixed; relu keeps the input's.
    let err = elementwise::unary(Unary::Sigmoid, &a, q, &mut out, q, isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "output qparams", .. }), "{err}");
    assert!(elementwise::unary(Unary::Relu, &a, q, &mut out, PerTensor::new(0.2, 0), isa).is_err());
    assert!(elementwise::unary(Unary::Hardtanh { min: 2.0, max: 1.0 }, &a, q, &mut out, q, isa).is_err());
    // cat: no inputs, dim out of range, mismatched non-cat dimension, wrong output length.
    let x = [0u8; 6];
    let i1 = CatInput { data: &x, shape: &[2, 3], q };
    let i2 = CatInput { data: &x, shape: &[3, 2], q };
    assert!(elementwise::cat::<u8>(&[], 0, &mut out, q, false, Dequant::Plain, isa).is_err());
    assert!(elementwise::cat(&[i1], 2, &mut out, q, false, Dequant::Plain, isa).is_err());
    assert!(matches!(
        elementwise::cat(&[i1, i2], 0, &mut [0u8; 12], q, false, Dequant::Plain, isa),
        Err(KernelError::ShapeMismatch { what: "size of a non-cat dimension", .. })
    ));
    assert!(matches!(
        elementwise::cat(&[i1, i1], 1, &mut [0u8; 11], q, false, Dequant::Plain, isa),
        Err(KernelError::ShapeMismatch { what: "output length", got: 11, expected: 12, .. })
    ));
    // A tier the CPU lacks (only checkable where some tier is missing).
    if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.is_supported()) {
        assert!(matches!(
            elementwise::add(&a, q, &a, q, &mut out, q, false, missing),
            Err(KernelError::IsaUnsupported { .. })
        ));
    }
}
