//! Golden tests: quantized batch norm (`quantized::batch_norm1d/2d/3d` and `_relu`) against
//! PyTorch 2.15 fixtures (`tools/golden/gen_kernels_bn.py`, file `batch_norm`), bit for bit on
//! every supported tier, and the scalar definition ([`FusedBatchNorm::element`]) on its own.

use qkernels::Isa;
use qkernels::elementwise::PerTensor;
use qkernels::norm::{self, BatchNormParams, FusedBatchNorm};
use qtest::Fixture;
use serde_json::Value;

fn load() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "batch_norm")
}

fn qp(v: &Value) -> PerTensor {
    PerTensor::new(v[0].as_f64().expect("scale"), v[1].as_i64().expect("zero point"))
}

fn floats(fx: &Fixture, case: &str, field: &str) -> Vec<f32> {
    fx.tensor::<f32>(case, field).iter().copied().collect()
}

fn bytes(fx: &Fixture, case: &str, field: &str) -> Vec<u8> {
    fx.tensor::<u8>(case, field).iter().copied().collect()
}

#[test]
fn batch_norm_matches_pytorch_on_every_tier() {
    let fx = load();
    assert!(fx.cases.len() >= 30, "fixture has {} cases", fx.cases.len());
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let (weight, bias) = (floats(&fx, name, "weight"), floats(&fx, name, "bias"));
        let (mean, var) = (floats(&fx, name, "mean"), floats(&fx, name, "var"));
        let params = BatchNormParams {
            weight: &weight,
            bias: &bias,
            mean: &mean,
            var: &var,
            eps: case["eps"].as_f64().unwrap(),
        };
        let (in_q, out_q) = (qp(&case["in"]), qp(&case["out"]));
        let relu = case["relu"].as_bool().unwrap();
        let x = bytes(&fx, name, "x");
        let expected = bytes(&fx, name, "q");

        // The scalar definition, element by element.
        let bn = FusedBatchNorm::new(&params, in_q, out_q, relu).unwrap();
        let c = shape[1];
        for (i, (&q, &e)) in x.iter().zip(&expected).enumerate() {
            assert_eq!(bn.element(i % c, q), e, "{name}: element {i} (channel {}), input {q}", i % c);
        }

        let f = match (case["op"].as_str().unwrap(), relu) {
            ("batch_norm1d", false) => norm::batch_norm1d,
            ("batch_norm1d", true) => norm::batch_norm1d_relu,
            ("batch_norm2d", false) => norm::batch_norm2d,
            ("batch_norm2d", true) => norm::batch_norm2d_relu,
            ("batch_norm3d", false) => norm::batch_norm3d,
            ("batch_norm3d", true) => norm::batch_norm3d_relu,
            (op, _) => panic!("{name}: unknown op {op}"),
        };
        for isa in Isa::supported() {
            let mut out = vec![0u8; x.len()];
            f(&x, &shape, in_q, &params, &mut out, out_q, isa).unwrap();
            for (i, (&g, &e)) in out.iter().zip(&expected).enumerate() {
                assert_eq!(g, e, "{name} on {isa}: element {i} (channel {})", i % c);
            }
        }
    }
}

#[test]
fn crafted_cases_exercise_the_rules_they_are_named_for() {
    let fx = load();
    // The tie cases must contain elements an unfused multiply-add would round differently, in
    // the vector channels and in the scalar tail; otherwise they prove nothing about FMA.
    let mut tie_vector = 0;
    let mut tie_tail = 0;
    for case in fx.cases.iter().filter(|c| c["name"].as_str().unwrap().starts_with("tie_")) {
        let name = case["name"].as_str().unwrap();
        let (weight, bias) = (floats(&fx, name, "weight"), floats(&fx, name, "bias"));
        let in_zp = case["in"][1].as_i64().unwrap() as i32;
        let c = weight.len();
        let vend = c - c % 8;
        for (i, &q) in bytes(&fx, name, "x").iter().enumerate() {
            let ch = i % c;
            let d = (i32::from(q) - in_zp) as f32;
            let fused = weight[ch].mul_add(d, bias[ch]).round_ties_even();
            let unfused = (weight[ch] * d + bias[ch]).round_ties_even();
            if fused != unfused {
                if ch < vend {
                    tie_vector += 1;
                } else {
                    tie_tail += 1;
                }
            }
        }
    }
    assert!(tie_vector > 0 && tie_tail > 0, "vector {tie_vector}, tail {tie_tail}");
}
