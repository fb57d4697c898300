//! Quantized add / mul / add_scalar / mul_scalar and fake quantization against PyTorch.

use ndarray::{ArrayD, Axis, Zip};
use qcore::fake_quant::{fake_quantize_per_channel, fake_quantize_per_tensor};
use qcore::requant::{AddRequant, MulRequant, ScalarOp};
use serde_json::Value;

use crate::fixture::{self, assert_bits_eq, assert_ints_eq, dtype_of, f64_of, i64_of, name};

fn pair(v: &Value) -> (f64, i64) {
    (f64_of(&v[0]), i64_of(&v[1]))
}

/// Elements PyTorch computes in its vector body: every fixture tensor of this length or more
/// has them first, and its remaining elements go through the scalar tail.
const VECTOR_BODY: usize = 256;

#[test]
fn add_and_mul_match_pytorch() {
    let fx = fixture::load("binary");
    let mut tail_off_by_one = 0;
    let mut checked = 0;
    for case in fx.cases.iter().filter(|c| !c["op"].as_str().unwrap().contains("scalar")) {
        let name = name(case);
        let op = case["op"].as_str().unwrap();
        let dtype = dtype_of(&case["dtype"]);
        let (a, b, out) = (pair(&case["a"]), pair(&case["b"]), pair(&case["out"]));
        let relu = op.ends_with("_relu");
        let apply: Box<dyn Fn(i32, i32) -> i32> = if op.starts_with("add") {
            let r = AddRequant::new(a, b, out, dtype, relu).unwrap();
            Box::new(move |x, y| r.apply(x, y))
        } else {
            let r = MulRequant::new(a, b, out, dtype, relu).unwrap();
            Box::new(move |x, y| r.apply(x, y))
        };
        let got = Zip::from(&fx.ints(name, "a")).and(&fx.ints(name, "b")).map_collect(|&x, &y| apply(x, y));
        let expected = fx.ints(name, "q");
        let body = |t: &ArrayD<i32>| t.slice_axis(Axis(0), (0..VECTOR_BODY).into()).to_owned();
        assert_ints_eq(name, op, &body(&got), &body(&expected));
        // The scalar tail dequantizes without FMA (NUMERICS.md): at most 1 apart.
        for (g, e) in got.iter().zip(expected.iter()).skip(VECTOR_BODY) {
            assert!((g - e).abs() <= 1, "{name}: tail element {g} vs PyTorch {e}");
            tail_off_by_one += usize::from(g != e);
        }
        checked += 1;
    }
    assert_eq!(checked, 48, "2 dtypes x 3 parameter sets x 2 lengths x 4 ops");
    println!("add/mul scalar-tail elements off by one: {tail_off_by_one}");
}

#[test]
fn add_scalar_and_mul_scalar_match_pytorch() {
    let fx = fixture::load("binary");
    let mut checked = 0;
    for case in fx.cases.iter().filter(|c| c["op"].as_str().unwrap().contains("scalar")) {
        let name = name(case);
        let op = case["op"].as_str().unwrap();
        let dtype = dtype_of(&case["dtype"]);
        let (scale, zero_point) = pair(&case["a"]);
        let c = f64_of(&case["c"]);
        let relu = op.ends_with("_relu");
        let plan = if op.starts_with("add") {
            ScalarOp::add_scalar(scale, zero_point, c, dtype, relu)
        } else {
            ScalarOp::mul_scalar(scale, zero_point, c, dtype, relu)
        }
        .unwrap();
        let (out_scale, out_zero_point) = pair(&case["out"]);
        assert_eq!(plan.scale.to_bits(), out_scale.to_bits(), "{name}: scale {} vs {out_scale}", plan.scale);
        assert_eq!(plan.zero_point, out_zero_point, "{name}: zero point");
        let got = fx.ints(name, "a").mapv(|q| plan.apply(q));
        assert_ints_eq(name, op, &got, &fx.ints(name, "q"));
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn fake_quantize_matches_pytorch_values_and_gradient_masks() {
    let fx = fixture::load("fake_quant");
    for case in &fx.cases {
        let name = name(case);
        let x = fx.tensor::<f32>(name, "x");
        let (qmin, qmax) = (i64_of(&case["quant_min"]), i64_of(&case["quant_max"]));
        let (mut y, mut mask) = (ArrayD::<f32>::zeros(x.raw_dim()), ArrayD::<f32>::zeros(x.raw_dim()));
        if case["kind"] == "per_tensor" {
            let (scale, zp) = (f64_of(&case["scale"]) as f32, i64_of(&case["zero_point"]));
            Zip::from(&mut y).and(&mut mask).and(&x).for_each(|y, m, &v| {
                let fq = fake_quantize_per_tensor(v, scale, zp, qmin, qmax);
                (*y, *m) = (fq.value, f32::from(u8::from(fq.mask)));
            });
        } else {
            let axis = Axis(i64_of(&case["axis"]) as usize);
            let scales = case["scales"].as_array().unwrap();
            let zps = case["zero_points"].as_array().unwrap();
            for (c, ((mut y, mut m), x)) in
                y.axis_iter_mut(axis).zip(mask.axis_iter_mut(axis)).zip(x.axis_iter(axis)).enumerate()
            {
                let (scale, zp) = (f64_of(&scales[c]) as f32, i64_of(&zps[c]));
                Zip::from(&mut y).and(&mut m).and(&x).for_each(|y, m, &v| {
                    let fq = fake_quantize_per_channel(v, scale, zp, qmin, qmax);
                    (*y, *m) = (fq.value, f32::from(u8::from(fq.mask)));
                });
            }
        }
        assert_bits_eq(name, "fake_quant", &y, &fx.tensor::<f32>(name, "y"));
        assert_bits_eq(name, "mask", &mask, &fx.tensor::<f32>(name, "mask"));
    }
}
