//! Writes the files the command-line examples of the README use, from the digits model
//! committed in `crates/qgraph/assets/digits/`:
//!
//! - `digits-float.qtk`: the float `DigitsNet` with PyTorch's trained weights, as a model file;
//! - `digits-calib.safetensors`: its 1437 training images, one tensor `images` `[1437, 1, 8, 8]`
//!   (pixels / 16), in calibration order;
//! - `digit.safetensors`: the first test image, `[1, 1, 8, 8]`.
//!
//! ```text
//! cargo run --release -p qtk --example digits_files -- target/digits
//! ```

#[allow(dead_code)] // the demo's helpers this example does not use
#[path = "../../qgraph/examples/digits/mod.rs"]
mod digits;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, Slice};

/// Writes `x` as the one f32 tensor `name` of a safetensors file.
fn write_tensor(path: &Path, name: &str, x: &ArrayD<f32>) -> digits::Result<()> {
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, x.shape().to_vec(), &bytes)?;
    safetensors::serialize_to_file([(name, view)], None::<HashMap<String, String>>, path)?;
    Ok(())
}

fn main() -> digits::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/digits".into()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let data = digits::Digits::load()?;
    let record = digits::TrainingRecord::load()?;
    let mut model = digits::digits_net()?;
    qgraph::io::load_state_dict_file(&mut model, digits::asset("digits_cnn.safetensors"))?;
    qgraph::io::save(model.as_ref(), dir.join("digits-float.qtk"))?;
    write_tensor(&dir.join("digits-calib.safetensors"), "images", &data.images_at(record.train()))?;
    let test = data.images_at(record.test());
    write_tensor(
        &dir.join("digit.safetensors"),
        "image",
        &test.slice_axis(Axis(0), Slice::from(0..1)).to_owned(),
    )?;
    println!("wrote digits-float.qtk, digits-calib.safetensors and digit.safetensors to {}", dir.display());
    Ok(())
}
