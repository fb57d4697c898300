//! Per-layer calibrator choice (`qgraph::calibrator_choice`) on the zoo MobileNetV2 of the
//! equalization example with per-tensor weights: the model output's SQNR against float and
//! top-1 agreement on seeded test images, with one calibrator at every observer point, and
//! with each point's calibrator chosen by its measured SQNR (`auto`).
//!
//! ```text
//! cargo run --release -p qgraph --example calibrators
//! ```
//!
//! The model, data and recipe are `examples/equalize_setup`'s: `mobilenet_v2(10)`, seeded
//! weights with batch-norm gammas spread over 2^-3 .. 2^3, fused; calibration 8 seeded batches
//! `[4, 3, 64, 64]`, test 16 other batches. qconfig: `default_qconfig()` (MinMax activations,
//! quint8 0..127; per-tensor symmetric qint8 weights). The choice is measured on the calibration
//! batches, never on the test ones; `auto` keeps the per-point mix or, if its model output is
//! worse there, the best single calibrator.

use std::time::Instant;

use qgraph::calibrator_choice::{Calibrator, choose_calibrators};
use qgraph::equalize::output_agreement;
use qgraph::mappings::Mappings;
use qgraph::qconfig::default_qconfig;
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, prepare};

#[allow(dead_code)] // the setup's quantize, which takes one qconfig for all layers
mod equalize_setup;
use equalize_setup::{Result, images, skewed_mobilenet_v2};

/// The float model quantized with `mapping` on `calibration`.
fn quantize(float: &dyn Module, mapping: &QConfigMapping, calibration: &[Value]) -> Result<Box<dyn Module>> {
    let mut model = float.clone_module();
    prepare(&mut model, mapping)?;
    calibrate(model.as_ref(), calibration.iter().cloned(), |_, _| {})?;
    convert(&mut model)?;
    Ok(model)
}

fn main() -> Result<()> {
    let start = Instant::now();
    let calibration: Vec<Value> = images(8, 1, 4, 64)?.into_iter().map(Value::from).collect();
    let test: Vec<Value> = images(16, 1000, 4, 64)?.into_iter().map(Value::from).collect();
    let float = skewed_mobilenet_v2()?;
    let qconfig = default_qconfig();
    let args = Calibrator::replaceable(&qconfig.activation).ok_or("a range observer")?;

    println!("MobileNetV2 (seeded, skewed batch norms), per-tensor weights, 64x64, 16 x 4 test images");
    println!("{:<24}  {:>13}  {:>15}", "activation calibrators", "output SQNR dB", "top-1 agreement");
    for calibrator in Calibrator::ALL {
        let mut q = qconfig.clone();
        q.activation = calibrator.spec(args);
        let model = quantize(float.as_ref(), &QConfigMapping::global(q), &calibration)?;
        let a = output_agreement(float.as_ref(), model.as_ref(), &test)?;
        println!("{:<24}  {:>13.2}  {:>14.2}%", calibrator.name(), a.sqnr_db, 100.0 * a.top1);
    }
    let mapping = QConfigMapping::global(qconfig);
    let without_entropy: Vec<Calibrator> =
        Calibrator::ALL.into_iter().filter(|c| *c != Calibrator::Entropy).collect();
    let sets: [(&str, &[Calibrator]); 2] =
        [("auto (all six)", &Calibrator::ALL), ("auto (without entropy)", &without_entropy)];
    let mut tables = String::new();
    for (name, candidates) in sets {
        let choice = choose_calibrators(
            float.as_ref(),
            &mapping,
            &Mappings::default(),
            candidates,
            &calibration,
            &calibration,
        )?;
        let model = quantize(float.as_ref(), &choice.mapping, &calibration)?;
        let a = output_agreement(float.as_ref(), model.as_ref(), &test)?;
        println!("{name:<24}  {:>13.2}  {:>14.2}%", a.sqnr_db, 100.0 * a.top1);
        let counts: Vec<String> =
            candidates.iter().zip(choice.counts()).map(|(c, n)| format!("{} {n}", c.name())).collect();
        tables += &format!(
            "{name}: per point {}; the mix measured {:.2} dB on the calibration images; kept {:?}\n",
            counts.join(", "),
            choice.per_point_sqnr,
            choice.kept
        );
    }
    print!("\n{tables}");
    println!("\n{:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
