//! quantize_per_tensor, quantize_per_channel, dequantize and calculate_qmin_qmax against PyTorch.

use qcore::{
    IntRepr, QParams, QTensor, calculate_qmin_qmax, quantize_per_channel, quantize_per_channel_float_qparams,
    quantize_per_tensor,
};

use crate::fixture::{self, assert_bits_eq, assert_ints_eq, dtype_of, f64_of, i64_of, name};

#[test]
fn quantize_and_dequantize_match_pytorch_bit_for_bit() {
    let fx = fixture::load("quantize");
    assert!(fx.cases.len() > 300, "fixture has {} cases", fx.cases.len());
    for case in &fx.cases {
        let name = name(case);
        let x = fx.tensor::<f32>(name, "x");
        let dtype = dtype_of(&case["dtype"]);
        let q = match case["kind"].as_str() {
            Some("per_tensor") => {
                quantize_per_tensor(&x, f64_of(&case["scale"]), i64_of(&case["zero_point"]), dtype).unwrap()
            }
            Some("per_channel_float") => {
                let scales = fx.tensor::<f32>(name, "scales").into_raw_vec_and_offset().0;
                let zps = fx.tensor::<f32>(name, "zero_points").into_raw_vec_and_offset().0;
                let axis = i64_of(&case["axis"]) as usize;
                quantize_per_channel_float_qparams(&x, &scales, &zps, axis, dtype).unwrap()
            }
            _ => {
                let scales: Vec<f64> = case["scales"].as_array().unwrap().iter().map(f64_of).collect();
                let zps: Vec<i64> = case["zero_points"].as_array().unwrap().iter().map(i64_of).collect();
                let axis = i64_of(&case["axis"]) as usize;
                quantize_per_channel(&x, &scales, &zps, axis, dtype).unwrap()
            }
        };
        assert_eq!(q.dtype(), dtype);
        assert_ints_eq(name, "int_repr", &q.int_repr().to_i32(), &fx.ints(name, "q"));
        // PyTorch crashes dequantizing qint32 float-qparams tensors; those cases have no `dq`.
        if fx.has(name, "dq") {
            assert_bits_eq(name, "dequantize", &q.dequantize(), &fx.tensor::<f32>(name, "dq"));
        }
    }
}

#[test]
fn dequantize_of_raw_integers_matches_pytorch() {
    let fx = fixture::load("dequantize");
    for case in &fx.cases {
        let name = name(case);
        let ints = fx.ints(name, "q");
        let dtype = dtype_of(&case["dtype"]);
        let repr = match dtype {
            qcore::QDType::QUInt8 => IntRepr::U8(ints.mapv(|v| v as u8)),
            qcore::QDType::QInt8 => IntRepr::I8(ints.mapv(|v| v as i8)),
            qcore::QDType::QInt32 => IntRepr::I32(ints),
            qcore::QDType::QUInt4x2 => IntRepr::U4(ints.mapv(|v| v as u8)),
        };
        let qparams =
            QParams::PerTensor { scale: f64_of(&case["scale"]), zero_point: i64_of(&case["zero_point"]) };
        let q = QTensor::from_int_repr(repr, qparams).unwrap();
        assert_bits_eq(name, "dequantize", &q.dequantize(), &fx.tensor::<f32>(name, "dq"));
    }
}

#[test]
fn calculate_qmin_qmax_matches_pytorch() {
    let fx = fixture::load("qmin_qmax");
    let rows = fx.cases[0]["rows"].as_array().unwrap();
    assert!(rows.len() > 40);
    for row in rows {
        let bound = |v: &serde_json::Value| v.as_i64();
        let got = calculate_qmin_qmax(
            bound(&row["quant_min"]),
            bound(&row["quant_max"]),
            dtype_of(&row["dtype"]),
            row["reduce_range"].as_bool().unwrap(),
        )
        .unwrap();
        let expected = (i64_of(&row["expected"][0]), i64_of(&row["expected"][1]));
        assert_eq!(got, expected, "{row}");
    }
}
