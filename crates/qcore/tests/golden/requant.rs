//! The conv/linear output requantization against PyTorch's `quantized::linear` on FBGEMM.
//!
//! The fixtures use 7-bit activations so FBGEMM's int16 pair saturation cannot occur; the
//! accumulator is then exactly Σ (a - a_zp)(w - w_zp), computed here naively.

use ndarray::Array2;
use qcore::requant::{BiasTerm, ConvRequant};

use crate::fixture::{self, assert_ints_eq, f64_of, i64_of, name};

#[test]
fn linear_output_requantization_matches_fbgemm() {
    let fx = fixture::load("linear");
    assert_eq!(fx.cases.len(), 6);
    for case in &fx.cases {
        let name = name(case);
        let a = fx.ints(name, "a").into_dimensionality::<ndarray::Ix2>().unwrap();
        let w = fx.ints(name, "w").into_dimensionality::<ndarray::Ix2>().unwrap();
        let (a_scale, a_zp) = (f64_of(&case["a"][0]), i64_of(&case["a"][1]) as i32);
        let (out_scale, out_zp) = (f64_of(&case["out"][0]), i64_of(&case["out"][1]) as u8);
        let w_zp = i64_of(&case["w_zero_point"]) as i32;
        let w_scales: Vec<f64> = case["w_scales"].as_array().unwrap().iter().map(f64_of).collect();
        let per_channel = case["per_channel"].as_bool().unwrap();
        let relu = case["relu"].as_bool().unwrap();
        let bias = fx.has(name, "bias").then(|| fx.tensor::<f32>(name, "bias"));
        let mode = if per_channel { BiasTerm::Division } else { BiasTerm::Reciprocal };
        let (m, n) = (a.nrows(), w.nrows());
        let got = Array2::from_shape_fn((m, n), |(i, j)| {
            let acc: i32 = a.row(i).iter().zip(w.row(j)).map(|(&x, &y)| (x - a_zp) * (y - w_zp)).sum();
            let w_scale = if per_channel { w_scales[j] } else { w_scales[0] };
            let requant = ConvRequant::new(a_scale, w_scale, out_scale).unwrap();
            let bias_term = bias.as_ref().map_or(0.0, |b| requant.bias_term(b[j], mode));
            i32::from(requant.requantize(acc, bias_term, out_zp, relu))
        });
        assert_ints_eq(name, "linear", &got.into_dyn(), &fx.ints(name, "q"));
    }
}
