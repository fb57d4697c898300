//! The shared fixture reader (`qtest`), pointed at this crate's fixtures, plus the one qcore-specific
//! helper: dtype names.

use qcore::QDType;
pub use qtest::{assert_bits_eq, assert_ints_eq, f64_of, i64_of, name};
use serde_json::Value;

/// The fixture `tests/fixtures/<name>.safetensors` of this crate.
pub fn load(name: &str) -> qtest::Fixture {
    qtest::Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// A dtype named as the generator writes it.
pub fn dtype_of(v: &Value) -> QDType {
    match v.as_str().expect("dtype") {
        "quint8" => QDType::QUInt8,
        "qint8" => QDType::QInt8,
        "qint32" => QDType::QInt32,
        other => panic!("unknown dtype {other}"),
    }
}
