//! Reads the safetensors fixtures that `tools/golden/gen_observers.py` writes with PyTorch
//! (the shared layout of `qtest`), plus the observer-specific helpers.

use ndarray::ArrayD;
use qobserve::{ObserverSpec, QDType, QScheme, UniformArgs};
pub use qtest::Fixture;
use serde_json::Value;

/// The fixture `tests/fixtures/<name>.safetensors` of this crate.
pub fn load(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// The batches `x0, x1, ...` of a case, in the order they are observed.
pub fn batches(fx: &Fixture, case: &Value) -> Vec<ArrayD<f32>> {
    let n = case["batches"].as_u64().expect("batches") as usize;
    (0..n).map(|i| fx.tensor::<f32>(name(case), &format!("x{i}"))).collect()
}

pub fn name(case: &Value) -> &str {
    case["name"].as_str().expect("name")
}

fn dtype(v: &Value) -> QDType {
    match v.as_str().expect("dtype") {
        "quint8" => QDType::QUInt8,
        "qint8" => QDType::QInt8,
        "qint32" => QDType::QInt32,
        other => panic!("unknown dtype {other}"),
    }
}

fn qscheme(v: &Value) -> QScheme {
    match v.as_str().expect("qscheme") {
        "per_tensor_affine" => QScheme::PerTensorAffine,
        "per_tensor_symmetric" => QScheme::PerTensorSymmetric,
        "per_channel_affine" => QScheme::PerChannelAffine,
        "per_channel_symmetric" => QScheme::PerChannelSymmetric,
        "per_channel_affine_float_qparams" => QScheme::PerChannelAffineFloatQParams,
        other => panic!("unknown qscheme {other}"),
    }
}

/// The observer arguments of a case, defaults filled in as PyTorch does.
fn args(case: &Value) -> UniformArgs {
    let a = &case["args"];
    let qs = qscheme(&a["qscheme"]);
    let mut args = if qs.is_per_channel() { UniformArgs::per_channel() } else { UniformArgs::per_tensor() };
    args = args.dtype(dtype(&a["dtype"])).qscheme(qs);
    if let Some(r) = a.get("reduce_range").and_then(Value::as_bool) {
        args = args.reduce_range(r);
    }
    if let (Some(lo), Some(hi)) =
        (a.get("quant_min").and_then(Value::as_i64), a.get("quant_max").and_then(Value::as_i64))
    {
        args = args.quant_range(lo, hi);
    }
    if let Some(eps) = a.get("eps").and_then(Value::as_f64) {
        args = args.eps(eps as f32);
    }
    args
}

/// The observer description of a case.
pub fn spec(case: &Value) -> ObserverSpec {
    let args = args(case);
    let c = || case["averaging_constant"].as_f64().expect("averaging_constant");
    let axis = || case["ch_axis"].as_i64().expect("ch_axis");
    match case["observer"].as_str().expect("observer") {
        "MinMax" => ObserverSpec::MinMax { args },
        "MovingAverageMinMax" => ObserverSpec::MovingAverageMinMax { averaging_constant: c(), args },
        "PerChannelMinMax" => ObserverSpec::PerChannelMinMax { ch_axis: axis(), args },
        "MovingAveragePerChannelMinMax" => {
            ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant: c(), ch_axis: axis(), args }
        }
        "Histogram" => ObserverSpec::Histogram { bins: 2048, upsample_rate: 16, args },
        other => panic!("unknown observer {other}"),
    }
}

/// Bit equality of two floats, naming the case.
pub fn assert_bits(case: &str, what: &str, got: f32, expected: f32) {
    assert!(
        got.to_bits() == expected.to_bits(),
        "{case}: {what} = {got:e} ({:#010x}), PyTorch {expected:e} ({:#010x})",
        got.to_bits(),
        expected.to_bits()
    );
}
