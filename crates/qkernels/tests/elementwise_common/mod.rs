//! Shared by the elementwise / pool golden tests: reads the fixtures that
//! `tools/golden/gen_elementwise.py` writes with PyTorch, through `qtest`.
#![allow(dead_code)]

use qkernels::elementwise::PerTensor;
use qtest::Dtype;
pub use qtest::Fixture;
use serde_json::Value;

/// The fixture `tests/fixtures/<name>.safetensors` of this crate.
pub fn load(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// `<case>/<field>` (u8 or i8 data) as its raw bytes.
pub fn u8s(fx: &Fixture, case: &str, field: &str) -> Vec<u8> {
    let (dtype, _, data) = fx.raw(case, field);
    assert!(matches!(dtype, Dtype::U8 | Dtype::I8), "{case}/{field}: {dtype:?}");
    data.to_vec()
}

/// The shape of `<case>/<field>`.
pub fn shape(fx: &Fixture, case: &str, field: &str) -> Vec<usize> {
    fx.raw(case, field).1.to_vec()
}

pub fn name(case: &Value) -> &str {
    case["name"].as_str().expect("name")
}

pub fn qp(v: &Value) -> PerTensor {
    PerTensor::new(v[0].as_f64().expect("scale"), v[1].as_i64().expect("zero point"))
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("size") as usize).collect()
}

/// Counts elements that differ, asserting none differs by more than `tol`; returns the count.
pub fn compare<T: Copy + Into<i32> + std::fmt::Debug>(
    case: &str,
    got: &[T],
    expected: &[T],
    tol: i32,
) -> usize {
    assert_eq!(got.len(), expected.len(), "{case}: length");
    let mut off = 0;
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let d = (g.into() - e.into()).abs();
        assert!(d <= tol, "{case}: element {i} = {g:?}, PyTorch {e:?}");
        off += usize::from(d != 0);
    }
    off
}
