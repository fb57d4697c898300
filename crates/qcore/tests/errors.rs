//! Bad input gets a `QError` that names the function, the value and the fix, never a panic.

use ndarray::{Array2, array};
use qcore::fake_quant::check_fake_quant_range;
use qcore::requant::{AddRequant, ConvRequant, MulRequant, ScalarOp};
use qcore::{
    IntRepr, QDType, QError, QParams, QTensor, calculate_qmin_qmax, quantize_per_channel,
    quantize_per_channel_float_qparams, quantize_per_tensor,
};

#[test]
fn invalid_scales_are_rejected_everywhere_with_the_value() {
    let x = array![1.0f32, 2.0];
    for (scale, reason) in [
        (0.0, "positive"),
        (-0.5, "positive"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "overflows f32"),
        (1e300, "overflows f32"),
        (1e-60, "underflows"),
        (2e-39, "reciprocal overflows"),
    ] {
        let err = quantize_per_tensor(&x, scale, 0, QDType::QUInt8).unwrap_err();
        assert!(matches!(err, QError::InvalidScale { context: "quantize_per_tensor", .. }), "{err}");
        assert!(err.to_string().contains(reason), "{scale}: {err}");
        let err = quantize_per_channel(&x, &[0.1, scale], &[0, 0], 0, QDType::QInt8).unwrap_err();
        assert!(matches!(err, QError::InvalidScale { context: "quantize_per_channel", .. }), "{err}");
        assert!(ConvRequant::new(0.1, scale, 0.1).is_err());
        assert!(AddRequant::new((scale, 0), (0.1, 0), (0.1, 0), QDType::QUInt8, false).is_err());
        assert!(MulRequant::new((0.1, 0), (0.1, 0), (scale, 0), QDType::QUInt8, false).is_err());
        assert!(ScalarOp::add_scalar(scale, 0, 1.0, QDType::QUInt8, false).is_err());
        assert!(ScalarOp::mul_scalar(scale, 0, 1.0, QDType::QUInt8, false).is_err());
    }
}

#[test]
fn zero_points_outside_the_dtype_are_rejected() {
    let x = array![1.0f32];
    for (dtype, zp) in
        [(QDType::QUInt8, -1), (QDType::QUInt8, 256), (QDType::QInt8, 128), (QDType::QInt8, -129)]
    {
        let err = quantize_per_tensor(&x, 0.1, zp, dtype).unwrap_err();
        assert!(
            matches!(err, QError::ZeroPointOutOfRange { zero_point, dtype: d, .. } if zero_point == zp && d == dtype),
            "{err}"
        );
        assert!(err.to_string().contains(&zp.to_string()) && err.to_string().contains(dtype.torch_name()));
    }
    let err = quantize_per_tensor(&x, 0.1, i64::from(i32::MAX) + 1, QDType::QInt32).unwrap_err();
    assert!(matches!(err, QError::ZeroPointOutOfRange { .. }), "{err}");
    assert!(AddRequant::new((0.1, 0), (0.1, 300), (0.1, 0), QDType::QUInt8, false).is_err());
}

#[test]
fn per_channel_parameters_must_match_the_axis() {
    let x = Array2::<f32>::zeros((3, 4));
    let err = quantize_per_channel(&x, &[0.1; 4], &[0; 3], 0, QDType::QInt8).unwrap_err();
    assert_eq!(
        err,
        QError::ChannelCountMismatch {
            context: "quantize_per_channel",
            what: "scales",
            got: 4,
            axis: 0,
            expected: 3
        }
    );
    let err = quantize_per_channel(&x, &[0.1; 4], &[0; 3], 1, QDType::QInt8).unwrap_err();
    assert!(
        matches!(err, QError::ChannelCountMismatch { what: "zero_points", got: 3, expected: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("give one per channel"));
    let err = quantize_per_channel(&x, &[0.1; 3], &[0; 3], 2, QDType::QInt8).unwrap_err();
    assert_eq!(err, QError::AxisOutOfRange { context: "quantize_per_channel", axis: 2, ndim: 2 });
    assert!(err.to_string().contains("2-D"));
    let err = quantize_per_channel(&x, &[0.1; 3], &[0, 300, 0], 0, QDType::QInt8).unwrap_err();
    assert!(matches!(err, QError::ZeroPointOutOfRange { zero_point: 300, .. }), "{err}");
}

#[test]
fn accessors_of_the_other_scheme_are_errors() {
    let pt = quantize_per_tensor(&array![1.0f32], 0.1, 0, QDType::QUInt8).unwrap();
    assert!(matches!(pt.q_per_channel_scales(), Err(QError::WrongQScheme { actual: "per tensor", .. })));
    assert!(pt.q_per_channel_zero_points().is_err() && pt.q_per_channel_axis().is_err());
    let pc = quantize_per_channel(&array![1.0f32], &[0.1], &[0], 0, QDType::QInt8).unwrap();
    let err = pc.q_scale().unwrap_err();
    assert!(err.to_string().contains("use q_per_channel_scales"), "{err}");
    assert!(pc.q_zero_point().is_err());
}

#[test]
fn from_int_repr_validates_its_parameters() {
    let repr = IntRepr::U8(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 3])));
    let bad_axis = QParams::PerChannel { scales: vec![0.1; 3], zero_points: vec![0; 3], axis: 5 };
    assert!(matches!(
        QTensor::from_int_repr(repr.clone(), bad_axis),
        Err(QError::AxisOutOfRange { axis: 5, .. })
    ));
    let bad_zp = QParams::PerTensor { scale: 0.1, zero_point: -3 };
    assert!(matches!(QTensor::from_int_repr(repr.clone(), bad_zp), Err(QError::ZeroPointOutOfRange { .. })));
    let ok = QParams::PerChannel { scales: vec![0.1; 3], zero_points: vec![0; 3], axis: 1 };
    assert_eq!(QTensor::from_int_repr(repr, ok).unwrap().q_per_channel_axis(), Ok(1));
}

#[test]
fn quant_ranges_and_fake_quant_parameters_are_checked() {
    let err = calculate_qmin_qmax(Some(1), Some(10), QDType::QUInt8, false).unwrap_err();
    assert!(err.to_string().contains("must include 0"), "{err}");
    let err = calculate_qmin_qmax(Some(-300), Some(10), QDType::QInt8, false).unwrap_err();
    assert!(err.to_string().contains("dtype's own range"), "{err}");
    let err = check_fake_quant_range("fake_quantize_per_tensor_affine", 300, 0, 255).unwrap_err();
    assert!(matches!(err, QError::InvalidFakeQuantParams { zero_point: 300, .. }), "{err}");
}

#[test]
fn functions_that_take_one_dtype_name_it() {
    let w = quantize_per_tensor(&array![0.5f32, -0.5], 0.01, 0, QDType::QInt8).unwrap();
    let err = w.check_dtype("conv2d input", QDType::QUInt8).unwrap_err();
    assert_eq!(
        err,
        QError::UnsupportedDType { context: "conv2d input", dtype: QDType::QInt8, expected: QDType::QUInt8 }
    );
    assert!(err.to_string().contains("quantize it with dtype=torch.quint8"), "{err}");
    assert!(w.check_dtype("linear weight", QDType::QInt8).is_ok());
}

#[test]
fn float_qparams_reject_non_finite_zero_points_and_negative_scales() {
    let x = array![[1.0f32], [2.0]];
    let err =
        quantize_per_channel_float_qparams(&x, &[0.1, 0.1], &[0.0, f32::NAN], 0, QDType::QUInt8).unwrap_err();
    assert!(matches!(err, QError::InvalidFloatZeroPoint { zero_point, .. } if zero_point.is_nan()), "{err}");
    let err =
        quantize_per_channel_float_qparams(&x, &[0.1, -0.1], &[0.0, 0.0], 0, QDType::QUInt8).unwrap_err();
    assert!(err.to_string().contains("finite and >= 0"), "{err}");
    let err = quantize_per_channel_float_qparams(&x, &[0.1], &[0.0], 0, QDType::QUInt8).unwrap_err();
    assert!(matches!(err, QError::ChannelCountMismatch { got: 1, expected: 2, .. }), "{err}");
    // A zero scale is PyTorch's documented special case (inverse 1), not an error.
    let q = quantize_per_channel_float_qparams(&x, &[0.0, 0.5], &[1.0, 0.0], 0, QDType::QUInt8).unwrap();
    assert_eq!(q.int_repr().to_i32().into_raw_vec_and_offset().0, [2, 4]);
    assert!(q.q_per_channel_scales().is_err() && q.q_per_channel_axis() == Ok(0));
}
