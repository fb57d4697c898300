//! Golden test of `impl Display for QTensor`: every case of
//! `tests/fixtures/display/cases.json` (written by `tools/golden/gen_display.py` with PyTorch)
//! is quantized again here and must print exactly PyTorch's `str(q)`.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qcore::{QDType, QTensor, quantize_per_channel, quantize_per_channel_float_qparams, quantize_per_tensor};
use serde::Deserialize;

/// The fixture file.
#[derive(Debug, Deserialize)]
struct Fixture {
    /// The PyTorch version the expectations come from.
    torch: String,
    /// The cases.
    cases: Vec<Case>,
}

/// One quantized tensor and its expected text.
#[derive(Debug, Deserialize)]
struct Case {
    /// Unique name, reported on failure.
    name: String,
    /// The tensor shape.
    shape: Vec<usize>,
    /// The float32 inputs in C order, as bit patterns.
    input_bits: Vec<u32>,
    /// `quint8`, `qint8` or `qint32`.
    dtype: String,
    /// `per_tensor_affine`, `per_channel_affine` or `per_channel_affine_float_qparams`.
    qscheme: String,
    /// Per-tensor scale, as f64 bits.
    scale_bits: Option<u64>,
    /// Per-tensor zero point.
    zero_point: Option<i64>,
    /// Per-channel scales, as f64 bits.
    scales_bits: Option<Vec<u64>>,
    /// Per-channel zero points.
    zero_points: Option<Vec<i64>>,
    /// Float-qparams per-channel scales, as f32 bits.
    float_scales_bits: Option<Vec<u32>>,
    /// Float-qparams per-channel zero points, as f32 bits.
    float_zero_points_bits: Option<Vec<u32>>,
    /// Per-channel axis.
    axis: Option<usize>,
    /// PyTorch's `str(q)`.
    expected: String,
}

/// Reads the fixture.
fn load() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/display/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The dtype named in a case.
fn dtype(name: &str) -> Result<QDType, String> {
    match name {
        "quint8" => Ok(QDType::QUInt8),
        "qint8" => Ok(QDType::QInt8),
        "qint32" => Ok(QDType::QInt32),
        other => Err(format!("unknown dtype {other:?}")),
    }
}

/// Quantizes a case's input as PyTorch did.
fn build(case: &Case) -> Result<QTensor, String> {
    let values: Vec<f32> = case.input_bits.iter().copied().map(f32::from_bits).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&case.shape), values).map_err(|e| e.to_string())?;
    let dtype = dtype(&case.dtype)?;
    let missing = |field: &str| format!("{} case without {field}", case.qscheme);
    let q = match case.qscheme.as_str() {
        "per_tensor_affine" => {
            let scale = f64::from_bits(case.scale_bits.ok_or_else(|| missing("scale_bits"))?);
            quantize_per_tensor(&x, scale, case.zero_point.ok_or_else(|| missing("zero_point"))?, dtype)
        }
        "per_channel_affine" => {
            let scales: Vec<f64> = case
                .scales_bits
                .as_ref()
                .ok_or_else(|| missing("scales_bits"))?
                .iter()
                .copied()
                .map(f64::from_bits)
                .collect();
            let zero_points = case.zero_points.as_ref().ok_or_else(|| missing("zero_points"))?;
            quantize_per_channel(&x, &scales, zero_points, case.axis.ok_or_else(|| missing("axis"))?, dtype)
        }
        "per_channel_affine_float_qparams" => {
            let floats = |bits: &Option<Vec<u32>>, field| -> Result<Vec<f32>, String> {
                Ok(bits.as_ref().ok_or_else(|| missing(field))?.iter().copied().map(f32::from_bits).collect())
            };
            let scales = floats(&case.float_scales_bits, "float_scales_bits")?;
            let zero_points = floats(&case.float_zero_points_bits, "float_zero_points_bits")?;
            let axis = case.axis.ok_or_else(|| missing("axis"))?;
            quantize_per_channel_float_qparams(&x, &scales, &zero_points, axis, dtype)
        }
        other => return Err(format!("unknown qscheme {other:?}")),
    };
    q.map_err(|e| e.to_string())
}

/// The first line where two texts differ, for a readable failure.
fn first_difference(got: &str, expected: &str) -> String {
    let (got_lines, expected_lines): (Vec<&str>, Vec<&str>) =
        (got.split('\n').collect(), expected.split('\n').collect());
    let lines = got_lines.len().max(expected_lines.len());
    (0..lines)
        .find(|&i| got_lines.get(i) != expected_lines.get(i))
        .map(|i| {
            format!(
                "line {}:\n     got: {:?}\nexpected: {:?}",
                i + 1,
                got_lines.get(i).unwrap_or(&"<none>"),
                expected_lines.get(i).unwrap_or(&"<none>")
            )
        })
        .unwrap_or_default()
}

#[test]
fn display_matches_pytorch_str() {
    let fixture = load();
    assert!(fixture.cases.len() >= 40, "fixture has only {} cases", fixture.cases.len());
    let mut failures = Vec::new();
    for case in &fixture.cases {
        match build(case) {
            Ok(q) => {
                let got = q.to_string();
                if got != case.expected {
                    failures.push(format!(
                        "{}: {}\nfull got:\n{got}\nfull expected:\n{}",
                        case.name,
                        first_difference(&got, &case.expected),
                        case.expected
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: could not rebuild: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from PyTorch {}:\n\n{}",
        failures.len(),
        fixture.cases.len(),
        fixture.torch,
        failures.join("\n\n")
    );
}

#[test]
fn case_names_are_unique() {
    let fixture = load();
    let mut names: Vec<&str> = fixture.cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "duplicate case names in the fixture");
}
