//! The per-layer accuracy report (`qgraph::ns::report`) of two int8 models: the digits demo's
//! `DigitsNet` (PyTorch-trained weights, calibrated on 256 training digits, compared on 360 test
//! digits) and a zoo MobileNetV2 (seeded weights, calibrated and compared on seeded images).
//!
//! ```text
//! cargo run --release -p qgraph --example report
//! ```
//!
//! Prints each table and writes `target/report/<model>.svg` and `<model>.json`.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qgraph::fuse::fuse_modules;
use qgraph::models::{self, deterministic_state_dict, random_f32s};
use qgraph::ns::{self, Report};
use qgraph::qconfig::get_default_qconfig;
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, eval, io, load_state_dict, prepare};

// The report uses the demo's model and data, not its accuracy helpers.
#[allow(dead_code)]
mod digits;

/// The float model after fusion, the prepared model after calibration, and the int8 model.
struct Stages {
    fused: Box<dyn Module>,
    prepared: Box<dyn Module>,
    quantized: Box<dyn Module>,
}

/// Prepares `fused` with the x86 default qconfig, calibrates on `batches` and converts.
fn quantize(fused: Box<dyn Module>, batches: Vec<ArrayD<f32>>) -> digits::Result<Stages> {
    let mut prepared = fused.clone();
    prepare(&mut prepared, &QConfigMapping::global(get_default_qconfig("x86")?))?;
    calibrate(prepared.as_ref(), batches, |_, _| {})?;
    let mut quantized = prepared.clone();
    convert(&mut quantized)?;
    Ok(Stages { fused, prepared, quantized })
}

/// `DigitsNet`, its calibration on the first 256 training digits, and the test digits in
/// batches of 120.
fn digits_net() -> digits::Result<(Stages, Vec<Value>)> {
    let data = digits::Digits::load()?;
    let record = digits::TrainingRecord::load()?;
    let mut fused = digits::digits_net()?;
    io::load_state_dict_file(&mut fused, digits::asset("digits_cnn.safetensors"))?;
    fuse_modules(&mut fused, digits::FUSE)?;
    let batches =
        record.train()[..256].chunks(digits::CALIBRATION_BATCH).map(|b| data.images_at(b)).collect();
    let inputs = record.test().chunks(120).map(|b| Value::from(data.images_at(b))).collect();
    Ok((quantize(fused, batches)?, inputs))
}

/// `count` seeded images `[2, 3, 96, 96]` in [-1, 1), starting at `seed`.
fn images(count: u64, seed: u64) -> digits::Result<Vec<ArrayD<f32>>> {
    (0..count)
        .map(|i| Ok(ArrayD::from_shape_vec(IxDyn(&[2, 3, 96, 96]), random_f32s(2 * 3 * 96 * 96, seed + i))?))
        .collect()
}

/// MobileNetV2 (10 classes) with `deterministic_state_dict` weights, fused, calibrated on 4
/// seeded batches, compared on 2 others.
fn mobilenet_v2() -> digits::Result<(Stages, Vec<Value>)> {
    let mut fused = models::mobilenet_v2(10)?;
    eval(&mut fused);
    let state = deterministic_state_dict(fused.as_ref())?;
    load_state_dict(&mut fused, state)?;
    models::fuse_model(&mut fused)?;
    let inputs = images(2, 100)?.into_iter().map(Value::from).collect();
    Ok((quantize(fused, images(4, 1)?)?, inputs))
}

/// Prints `report` and writes its SVG and JSON under `target/report/`.
fn publish(name: &str, report: &Report) -> digits::Result<()> {
    println!("{name}\n{report}\n");
    // The workspace's target directory: two levels above this crate.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(Path::new("."));
    let dir = root.join("target").join("report");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (ext, text) in [("svg", report.to_svg()), ("json", report.to_json()?)] {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!();
    Ok(())
}

fn main() -> digits::Result<()> {
    for (name, build) in [
        ("digits", digits_net as fn() -> digits::Result<(Stages, Vec<Value>)>),
        ("mobilenet_v2", mobilenet_v2),
    ] {
        let (m, inputs) = build()?;
        let report = ns::report(m.fused.as_ref(), m.quantized.as_ref(), &inputs, Some(m.prepared.as_ref()))?;
        publish(name, &report)?;
    }
    Ok(())
}
