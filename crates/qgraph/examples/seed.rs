//! PyTorch's eager-mode quantization workflow on a small CNN, end to end, with no files:
//! build a float model, fuse Conv+BN+ReLU, attach MinMax observers, calibrate on sample images,
//! convert to int8, print the quantized model, and compare it with the float model.
//!
//! ```text
//! cargo run --release -p qgraph --example seed
//! ```

use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::fuse::fuse_modules;
use qgraph::nn::manual_seed;
use qgraph::qconfig::QConfig;
use qgraph::qobserve::{ObserverSpec, QDType, QScheme};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, eval, prepare};

#[path = "seed/model.rs"]
mod model;

/// `n` pseudo-random images `[n, 3, 28, 28]` in [0, 1) (a deterministic xorshift stream).
fn images(n: usize, seed: u64) -> ArrayD<f32> {
    let mut state = seed | 1;
    ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, 28, 28]), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

fn argmax(row: ndarray::ArrayViewD<'_, f32>) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[[best]] { i } else { best })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    manual_seed(0);
    // QuantStub, Conv+BN+ReLU twice, DeQuantStub, then a float Flatten, Linear and Softmax
    // (see seed/model.rs).
    let mut model = model::seed_model()?;
    eval(&mut model);

    fuse_modules(&mut model, &[&["1", "2", "3"], &["4", "5", "6"]])?;
    let float_model = model.clone();

    // MinMax activations; MinMax per-tensor affine qint8 weights. The layers after the
    // DeQuantStub stay float (qconfig None), as PyTorch needs too: a quantized Linear there
    // would receive the DeQuantStub's float output.
    let qconfig = QConfig {
        activation: ObserverSpec::min_max(),
        weight: ObserverSpec::min_max()
            .with_args(|a| a.dtype(QDType::QInt8).qscheme(QScheme::PerTensorAffine)),
    };
    let mapping = QConfigMapping::global(qconfig).set_name("9", None).set_name("10", None);
    prepare(&mut model, &mapping)?;

    let calibration: Vec<ArrayD<f32>> = (0..8).map(|i| images(4, 100 + i)).collect();
    calibrate(model.as_ref(), calibration, |done, total| {
        eprint!("\rcalibrating: {done}/{}", total.unwrap_or(0));
    })?;
    eprintln!();
    convert(&mut model)?;
    println!("{model}");

    let test = images(64, 7);
    let time = |m: &dyn Module| -> Result<(ArrayD<f32>, f64), qgraph::GraphError> {
        m.forward(Value::from(test.clone()))?; // warm-up
        let start = Instant::now();
        let out = m.forward(Value::from(test.clone()))?.into_float_lossy()?;
        Ok((out, start.elapsed().as_secs_f64() * 1e3))
    };
    let (float_out, float_ms) = time(float_model.as_ref())?;
    let (int8_out, int8_ms) = time(model.as_ref())?;
    let agree = float_out
        .axis_iter(Axis(0))
        .zip(int8_out.axis_iter(Axis(0)))
        .filter(|(f, q)| argmax(f.view()) == argmax(q.view()))
        .count();
    let max_diff = float_out.iter().zip(&int8_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("top-1 agreement, float vs int8: {agree}/64 images");
    println!("largest probability difference: {max_diff:.4}");
    println!("64 images: float {float_ms:.2} ms, int8 {int8_ms:.2} ms");
    Ok(())
}
