//! Golden tests: quantized add / mul / cat / activations against fixtures produced by PyTorch 2.15
//! with the fbgemm engine (`tools/golden/gen_elementwise.py`), on every supported tier.
// Naive references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

mod elementwise_common;

use elementwise_common::{Fixture, compare, load, name, qp, u8s, usizes};
use qkernels::Isa;
use qkernels::elementwise::{self, BinaryOp, CatInput, Dequant, QElem, Unary};
use serde_json::Value;

/// PyTorch's AVX-512 vector body covers the first 256 of the 300 elements of a binary case.
const VECTOR_BODY: usize = 256;

fn get<T: QElem>(fx: &Fixture, case: &str, field: &str) -> Vec<T> {
    u8s(fx, case, field).into_iter().map(|b| T::from_index(usize::from(b))).collect()
}

fn to_i32<T: QElem>(v: &[T]) -> Vec<i32> {
    v.iter().map(|x| x.to_i32()).collect()
}

fn binary_case<T: QElem>(fx: &Fixture, case: &Value) -> usize {
    let name = name(case);
    let op = match case["op"].as_str().unwrap() {
        "add" => BinaryOp::Add,
        "add_relu" => BinaryOp::AddRelu,
        "mul" => BinaryOp::Mul,
        "mul_relu" => BinaryOp::MulRelu,
        other => panic!("{other}"),
    };
    let (a, b): (Vec<T>, Vec<T>) = (get(fx, name, "a"), get(fx, name, "b"));
    let (sa, sb) = (usizes(&case["a_shape"]), usizes(&case["b_shape"]));
    let expected = to_i32(&get::<T>(fx, name, "q"));
    let mut off = 0;
    for isa in Isa::supported() {
        let mut out = vec![T::default(); expected.len()];
        elementwise::binary(
            op,
            &a,
            &sa,
            qp(&case["a"]),
            &b,
            &sb,
            qp(&case["b"]),
            &mut out,
            qp(&case["out"]),
            isa,
        )
        .unwrap();
        let got = to_i32(&out);
        if sa == sb {
            // The vector body exactly; the scalar tail (no FMA in PyTorch) within 1.
            assert_eq!(got[..VECTOR_BODY], expected[..VECTOR_BODY], "{name} on {isa}: vector body");
            off += compare(name, &got[VECTOR_BODY..], &expected[VECTOR_BODY..], 1);
        } else {
            // Broadcast operands go through TensorIterator's scalar loop in PyTorch.
            off += compare(name, &got, &expected, 1);
        }
    }
    off
}

#[test]
fn binary_ops_match_pytorch() {
    let fx = load("elementwise");
    let (mut checked, mut off) = (0, 0);
    for case in fx
        .cases
        .iter()
        .filter(|c| matches!(c["op"].as_str().unwrap(), "add" | "add_relu" | "mul" | "mul_relu"))
    {
        off += match case["dtype"].as_str().unwrap() {
            "quint8" => binary_case::<u8>(&fx, case),
            _ => binary_case::<i8>(&fx, case),
        };
        checked += 1;
    }
    assert_eq!(checked, 2 * 3 * 4 + 2 * 3 * 2, "binary cases");
    println!("binary: {checked} cases, {off} tail/broadcast elements off by one");
}

fn cat_case<T: QElem>(fx: &Fixture, case: &Value) {
    let name = name(case);
    let shapes: Vec<Vec<usize>> = case["shapes"].as_array().unwrap().iter().map(usizes).collect();
    let datas: Vec<Vec<T>> = (0..shapes.len()).map(|i| get(fx, name, &format!("x{i}"))).collect();
    let qs: Vec<_> = case["inputs"].as_array().unwrap().iter().map(qp).collect();
    let inputs: Vec<CatInput<'_, T>> =
        (0..shapes.len()).map(|i| CatInput { data: &datas[i], shape: &shapes[i], q: qs[i] }).collect();
    let expected = to_i32(&get::<T>(fx, name, "q"));
    let dequant = if case["nhwc"].as_bool().unwrap() { Dequant::Fma } else { Dequant::Plain };
    for isa in Isa::supported() {
        let mut out = vec![T::default(); expected.len()];
        let dim = case["dim"].as_u64().unwrap() as usize;
        let relu = case["relu"].as_bool().unwrap();
        elementwise::cat(&inputs, dim, &mut out, qp(&case["out"]), relu, dequant, isa).unwrap();
        assert_eq!(to_i32(&out), expected, "{name} on {isa}");
    }
}

#[test]
fn cat_matches_pytorch() {
    let fx = load("elementwise");
    let mut checked = 0;
    for case in fx.cases.iter().filter(|c| c["op"] == "cat") {
        match case["dtype"].as_str().unwrap() {
            "quint8" => cat_case::<u8>(&fx, case),
            _ => cat_case::<i8>(&fx, case),
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * (3 * 2 + 1));
}

fn unary_op(case: &Value) -> Unary {
    let f = |k: &str| case[k].as_f64().unwrap() as f32;
    match case["op"].as_str().unwrap() {
        "relu" => Unary::Relu,
        "relu6" => Unary::Relu6,
        "hardtanh" => Unary::Hardtanh { min: f("min"), max: f("max") },
        "hardswish" => Unary::Hardswish,
        "sigmoid" => Unary::Sigmoid,
        "tanh" => Unary::Tanh,
        "leaky_relu" => Unary::LeakyRelu { negative_slope: f("negative_slope") },
        "elu" => Unary::Elu { alpha: f("alpha"), scale: 1.0, input_scale: 1.0 },
        other => panic!("{other}"),
    }
}

fn unary_case<T: QElem>(fx: &Fixture, case: &Value) {
    let name = name(case);
    let op = unary_op(case);
    let x: Vec<T> = get(fx, name, "x");
    let expected = to_i32(&get::<T>(fx, name, "q"));
    let in_q = qp(&case["in"]);
    let out_q = qp(&case["out"]);
    if !op.output_qparams_free() {
        assert_eq!(op.output_qparams(in_q, T::DTYPE), out_q, "{name}: PyTorch's output parameters");
    }
    for isa in Isa::supported() {
        let mut out = vec![T::default(); x.len()];
        elementwise::unary(op, &x, in_q, &mut out, out_q, isa).unwrap();
        assert_eq!(to_i32(&out), expected, "{name} on {isa}");
    }
}

#[test]
fn unary_ops_match_pytorch_on_every_value() {
    let fx = load("elementwise");
    let ops = ["relu", "relu6", "hardtanh", "hardswish", "sigmoid", "tanh", "leaky_relu", "elu"];
    let mut checked = 0;
    for case in fx.cases.iter().filter(|c| ops.contains(&c["op"].as_str().unwrap())) {
        match case["dtype"].as_str().unwrap() {
            "quint8" => unary_case::<u8>(&fx, case),
            _ => unary_case::<i8>(&fx, case),
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * 3 * ops.len());
}
