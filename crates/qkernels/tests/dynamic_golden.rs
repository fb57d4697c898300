//! Dynamic linear against PyTorch 2.15's FBGEMM ops (`tools/golden/gen_dynamic_linear.py`), on
//! every tier: activation qparams, quantized activations, int8 and fp16 linear outputs bit for bit.

use ndarray::{ArrayD, IxDyn};
use qcore::dynamic::choose_dynamic_qparams;
use qkernels::Isa;
use qkernels::dynamic::{
    DynamicScratch, PackedF16Weights, linear_dynamic, linear_fp16, quantize_activations,
};
use qkernels::gemm::{PackedWeights, WeightQParams};
use qtest::{Fixture, assert_bits_eq, name};

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "dynamic_linear")
}

fn vec<T: qtest::Element>(fx: &Fixture, case: &str, field: &str) -> Vec<T> {
    fx.tensor::<T>(case, field).iter().copied().collect()
}

#[test]
fn qparams_match_pytorch() {
    let fx = fixture();
    let mut seen = 0;
    for case in fx.cases.iter().filter(|c| name(c).starts_with("qparams_")) {
        let n = name(case);
        let r: Vec<f32> = vec(&fx, n, "range");
        let rr = case["reduce_range"].as_bool().unwrap();
        let q = choose_dynamic_qparams(r[0], r[1], rr).unwrap();
        let (scale, zp): (Vec<f64>, Vec<i32>) = (vec(&fx, n, "scale"), vec(&fx, n, "zp"));
        assert_eq!(q.scale.to_bits(), scale[0].to_bits(), "{n}: scale {} vs {}", q.scale, scale[0]);
        assert_eq!(q.zero_point, i64::from(zp[0]), "{n}: zero point");
        seen += 1;
    }
    assert!(seen >= 30, "{seen} cases");
}

#[test]
fn quantized_activations_match_pytorch_on_every_tier() {
    let fx = fixture();
    let mut seen = 0;
    for case in fx.cases.iter().filter(|c| name(c).starts_with("act_")) {
        let n = name(case);
        let x: Vec<f32> = vec(&fx, n, "x");
        let want: Vec<u8> = vec(&fx, n, "q");
        let rr = case["reduce_range"].as_bool().unwrap();
        let (scale, zp): (Vec<f64>, Vec<i32>) = (vec(&fx, n, "scale"), vec(&fx, n, "zp"));
        for isa in Isa::supported() {
            let mut got = vec![0u8; x.len()];
            let q = quantize_activations(&x, rr, &mut got, isa).unwrap();
            assert_eq!((q.scale, q.zero_point), (scale[0], i64::from(zp[0])), "{n} on {isa}");
            assert_eq!(got, want, "{n} on {isa}");
        }
        seen += 1;
    }
    assert!(seen >= 14, "{seen} cases");
}

fn shape(case: &serde_json::Value) -> (usize, usize, usize, bool) {
    let get = |k: &str| case[k].as_u64().unwrap() as usize;
    (get("m"), get("k"), get("n"), case["relu"].as_bool().unwrap())
}

#[test]
fn int8_linear_matches_pytorch_on_every_tier() {
    let fx = fixture();
    let mut seen = 0;
    for case in fx.cases.iter().filter(|c| name(c).starts_with("lin_")) {
        let c = name(case);
        let (m, k, n, relu) = shape(case);
        let x: Vec<f32> = vec(&fx, c, "x");
        let w: Vec<i8> = vec(&fx, c, "w");
        let scales: Vec<f64> = vec(&fx, c, "w_scale");
        let zps: Vec<i32> = vec(&fx, c, "w_zp");
        let q = if case["per_channel"].as_bool().unwrap() {
            WeightQParams::PerChannel { scales, zero_points: zps }
        } else {
            WeightQParams::PerTensor { scale: scales[0], zero_point: zps[0] }
        };
        let bias: Option<Vec<f32>> = fx.has(c, "bias").then(|| vec(&fx, c, "bias"));
        let want = fx.tensor::<f32>(c, "out");
        for isa in Isa::supported() {
            let packed = PackedWeights::with_isa(&w, n, k, &q, bias.as_deref(), isa).unwrap();
            let mut out = vec![0f32; m * n];
            let mut scratch = DynamicScratch::default();
            // Twice through one scratch: the warm path must give the same bits.
            for _ in 0..2 {
                linear_dynamic(&x, m, &packed, true, relu, &mut out, &mut scratch).unwrap();
                let got = ArrayD::from_shape_vec(IxDyn(&[m, n]), out.clone()).unwrap();
                assert_bits_eq(&format!("{c} on {isa}"), "out", &got, &want);
            }
        }
        seen += 1;
    }
    assert!(seen >= 20, "{seen} cases");
}

#[test]
fn fp16_linear_matches_pytorch_on_every_tier() {
    let fx = fixture();
    let mut seen = 0;
    for case in fx.cases.iter().filter(|c| name(c).starts_with("f16_")) {
        let c = name(case);
        let (m, k, n, relu) = shape(case);
        let x: Vec<f32> = vec(&fx, c, "x");
        let w: Vec<f32> = vec(&fx, c, "w");
        let bias: Option<Vec<f32>> = fx.has(c, "bias").then(|| vec(&fx, c, "bias"));
        let want = fx.tensor::<f32>(c, "out");
        for isa in Isa::supported() {
            let packed = PackedF16Weights::with_isa(&w, n, k, bias.as_deref(), isa).unwrap();
            assert_eq!(packed.saturated(), w.iter().any(|v| v.abs() > 65504.0), "{c}");
            let mut out = vec![0f32; m * n];
            linear_fp16(&x, m, &packed, relu, &mut out).unwrap();
            let got = ArrayD::from_shape_vec(IxDyn(&[m, n]), out).unwrap();
            assert_bits_eq(&format!("{c} on {isa}"), "out", &got, &want);
        }
        seen += 1;
    }
    assert!(seen >= 10, "{seen} cases");
}
