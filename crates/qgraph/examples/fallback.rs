//! Accuracy-driven float fallback (`qgraph::fallback`) on two models, printing each trade-off
//! table:
//!
//! - the digits classifier with 4-bit weights (`-8..7`), target: test accuracy within 0.5
//!   points of float on the 360 held-out images;
//! - a seeded zoo MobileNetV2 at 64x64 with per-tensor weights (`default_qconfig`), target:
//!   output SQNR of at least 43.9 dB against the float model on two held-out batches (41.58 dB
//!   all quantized, so at least one layer stays float).
//!
//! ```text
//! cargo run --release -p qgraph --example fallback
//! ```

#[allow(dead_code)]
mod digits;

use ndarray::{ArrayD, IxDyn};
use qgraph::fallback::{self, Fallback, Target};
use qgraph::fuse::fuse_modules;
use qgraph::models::{self, deterministic_state_dict, random_f32s};
use qgraph::qconfig::{QConfig, default_qconfig, get_default_qconfig};
use qgraph::qobserve::{ObserverSpec, QDType, QScheme, UniformArgs};
use qgraph::{GraphResult, Module, QConfigMapping, Value, eval, io, load_state_dict};

/// x86's default qconfig with 4-bit weights: per-channel symmetric qint8 restricted to -8..7.
fn four_bit_qconfig() -> GraphResult<QConfig> {
    let mut qconfig = get_default_qconfig("x86")?;
    let args = UniformArgs::per_channel()
        .dtype(QDType::QInt8)
        .qscheme(QScheme::PerChannelSymmetric)
        .quant_range(-8, 7);
    qconfig.weight = ObserverSpec::PerChannelMinMax { ch_axis: 0, args };
    Ok(qconfig)
}

/// The digits model with 4-bit weights, searched for test accuracy within 0.5 points of float.
fn digits_search() -> digits::Result<Fallback> {
    let data = digits::Digits::load()?;
    let record = digits::TrainingRecord::load()?;
    let mut fused = digits::digits_net()?;
    io::load_state_dict_file(&mut fused, digits::asset("digits_cnn.safetensors"))?;
    fuse_modules(&mut fused, digits::FUSE)?;
    let calibration: Vec<Value> =
        record.train().chunks(digits::CALIBRATION_BATCH).map(|b| Value::from(data.images_at(b))).collect();
    let test_images = data.images_at(record.test());
    let test_labels: Vec<usize> = record.test().iter().map(|&i| data.labels[i]).collect();
    let accuracy = |model: &dyn Module| -> GraphResult<f64> {
        let predicted = digits::predict(model, &test_images)?;
        Ok(100.0 * digits::matches(&predicted, &test_labels) as f64 / test_labels.len() as f64)
    };
    let mapping = QConfigMapping::global(four_bit_qconfig()?);
    let target = Target::MetricWithin { points: 0.5, higher_is_better: true };
    Ok(fallback::search(fused.as_ref(), &mapping, &calibration, accuracy, target)?)
}

/// `count` seeded images `[2, 3, 64, 64]` in [-1, 1), starting at `seed`.
fn images(count: u64, seed: u64) -> digits::Result<Vec<Value>> {
    (0..count)
        .map(|i| {
            let x = ArrayD::from_shape_vec(IxDyn(&[2, 3, 64, 64]), random_f32s(2 * 3 * 64 * 64, seed + i))?;
            Ok(Value::from(x))
        })
        .collect()
}

/// The seeded MobileNetV2 with per-tensor weights, searched for an output SQNR of 43.9 dB on two
/// held-out batches.
fn mobilenet_search() -> digits::Result<Fallback> {
    let mut fused = models::mobilenet_v2(10)?;
    eval(&mut fused);
    let state = deterministic_state_dict(fused.as_ref())?;
    load_state_dict(&mut fused, state)?;
    models::fuse_model(&mut fused)?;
    let metric = fallback::output_sqnr(fused.as_ref(), &images(2, 100)?)?;
    let mapping = QConfigMapping::global(default_qconfig());
    Ok(fallback::search(fused.as_ref(), &mapping, &images(4, 1)?, metric, Target::OutputSqnr(43.9))?)
}

fn main() -> digits::Result<()> {
    println!("digits, 4-bit weights (-8..7), test accuracy in % on 360 images\n{}\n", digits_search()?);
    println!("MobileNetV2 (seeded, 64x64, per-tensor weights), output SQNR in dB\n{}", mobilenet_search()?);
    Ok(())
}
