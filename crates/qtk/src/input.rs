//! Input tensors from files: every float tensor of a safetensors file, in name order, and the one
//! input `qtk run` takes (a tensor or an image).

use std::cmp::Ordering;
use std::path::Path;

use ndarray::{ArrayD, Axis};

use crate::error::{CliError, Result};
use crate::image_input::{Preprocess, is_image};

/// The float tensors (f32, f64, f16, bf16, read as f32) of the safetensors file at `path`, in
/// [natural name order](natural_cmp).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    let bytes = std::fs::read(path).map_err(|e| CliError::io(path, e))?;
    let tensors = qgraph::io::state_dict_from_bytes(&bytes).map_err(|e| {
        CliError::Input(format!(
            "{}: {}; give a safetensors file of float tensors",
            path.display(),
            crate::error::chain(&e)
        ))
    })?;
    let mut tensors: Vec<(String, ArrayD<f32>)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    if tensors.is_empty() {
        return Err(CliError::Input(format!("{}: holds no float tensor", path.display())));
    }
    Ok(tensors)
}

/// Orders names as people do: runs of digits compare as numbers (`batch2` before `batch10`),
/// everything else by character.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, ta), (db, tb)) in ca.iter().zip(&cb) {
        let order = if *da && *db {
            let (ta, tb) = (ta.trim_start_matches('0'), tb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ta.cmp(tb)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// The input of `qtk run`: the one tensor of a safetensors file (or the one named `name`), or
/// an image as a batch of one.
pub fn read_input(path: &Path, name: Option<&str>, prep: &Preprocess) -> Result<ArrayD<f32>> {
    if is_image(path) {
        if name.is_some() {
            return Err(CliError::Usage(format!(
                "--input names a tensor, but {} is an image",
                path.display()
            )));
        }
        return Ok(prep.load(path)?.insert_axis(Axis(0)).into_dyn());
    }
    let tensors = read_tensors(path)?;
    let names = || tensors.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).ok_or_else(|| {
            CliError::Input(format!("{}: no tensor `{name}`; it holds {}", path.display(), names()))
        }),
        None if tensors.len() == 1 => Ok(tensors.into_iter().next().expect("one tensor").1),
        None => Err(CliError::Input(format!(
            "{}: holds {} tensors ({}); choose one with --input NAME",
            path.display(),
            tensors.len(),
            names()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec!["batch10", "batch2", "batch1", "a", "batch02x", "b0"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a", "b0", "batch1", "batch2", "batch02x", "batch10"]);
    }
}
