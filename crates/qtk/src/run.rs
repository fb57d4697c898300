//! `qtk run`: one forward pass on a tensor or an image; prints the output's shape (and each
//! row's top-5 for a classifier) and optionally writes the output as safetensors.

use std::collections::HashMap;

use ndarray::ArrayD;
use qgraph::{DType, Value};

use crate::cli::RunArgs;
use crate::error::{CliError, Result};
use crate::image_input::Preprocess;
use crate::input::read_input;
use crate::model;
use crate::progress::note;

/// The output's tensors with their names: `output` for one tensor, `output.0`, `output.1.0`, ...
/// for the leaves of a tuple.
fn named_outputs(value: &Value, name: &str, out: &mut Vec<(String, DType, ArrayD<f32>)>) -> Result<()> {
    match value {
        Value::Tuple(values) => {
            for (i, v) in values.iter().enumerate() {
                named_outputs(v, &format!("{name}.{i}"), out)?;
            }
        }
        Value::Int(x) => out.push((name.to_string(), DType::Int64, x.mapv(|v| v as f32))),
        other => out.push((name.to_string(), other.dtype()?, other.to_float()?)),
    }
    Ok(())
}

/// The top `k` `(index, value)` pairs of `row`, largest first (lower index first on ties).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut pairs: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    pairs.truncate(k);
    pairs
}

/// Runs the command.
pub fn main(args: &RunArgs, quiet: bool) -> Result<()> {
    let loaded = model::load(&args.file)?;
    let prep = Preprocess::new(&args.image)?;
    let input = read_input(&args.input, args.input_name.as_deref(), &prep)?;
    let output = loaded.model.forward(Value::from(input))?;
    let mut outputs = Vec::new();
    named_outputs(&output, "output", &mut outputs)?;
    for (name, dtype, x) in &outputs {
        println!("{name}: {:?} {dtype}", x.shape());
        if x.ndim() == 2 && x.shape()[1] > 1 {
            println!("top-5 (index, value):");
            for (r, row) in x.rows().into_iter().enumerate() {
                let row: Vec<f32> = row.iter().copied().collect();
                let top: Vec<String> = top_k(&row, 5).iter().map(|(i, v)| format!("({i}, {v:.4})")).collect();
                println!("  row {r}: {}", top.join(" "));
            }
        }
    }
    if let Some(path) = &args.output {
        write_outputs(path, &outputs)?;
        note(quiet, &format!("wrote {}", path.display()));
    }
    Ok(())
}

/// Writes the tensors as f32 safetensors.
pub(crate) fn write_outputs(path: &std::path::Path, outputs: &[(String, DType, ArrayD<f32>)]) -> Result<()> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = outputs
        .iter()
        .map(|(name, _, x)| {
            (name.clone(), x.shape().to_vec(), x.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path)
        .map_err(|e| CliError::Input(format!("{}: cannot write: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.5, 2.0, -1.0, 2.0], 3), [(1, 2.0), (3, 2.0), (0, 0.5)]);
        assert_eq!(top_k(&[1.0], 5), [(0, 1.0)]);
    }
}
