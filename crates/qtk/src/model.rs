//! Loading and saving models: qgraph model files (which may record their inputs' shapes) and ONNX
//! models.

use std::path::Path;

use qgraph::Module;
pub use qgraph::io::TensorInfo as InputInfo;

use crate::error::{CliError, Result};

/// The shape of `input` as text: `[N, 1, 8, 8]` (`N` for a dimension of any size).
pub fn shape_text(input: &InputInfo) -> String {
    let dims: Vec<String> =
        input.shape.iter().map(|d| d.map_or("N".to_string(), |d| d.to_string())).collect();
    format!("[{}]", dims.join(", "))
}

/// Which kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A qgraph model file.
    Qgraph,
    /// An ONNX model.
    Onnx,
}

impl Format {
    /// The format's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Format::Qgraph => "qgraph model file",
            Format::Onnx => "ONNX model",
        }
    }
}

/// A loaded model.
pub struct Loaded {
    /// The model.
    pub model: Box<dyn Module>,
    /// Its inputs, when the file records them.
    pub inputs: Vec<InputInfo>,
    /// The file's format.
    pub format: Format,
    /// The file's size in bytes.
    pub file_bytes: u64,
}

/// Loads `path`: an ONNX model (`.onnx`, through qonnx) or a qgraph model file (with qonnx's
/// loaders, so that files holding the importer's modules load too).
pub fn load(path: &Path) -> Result<Loaded> {
    let file_bytes = std::fs::metadata(path).map_err(|e| CliError::io(path, e))?.len();
    if path.is_dir() {
        return Err(CliError::Input(format!("{}: is a folder; give a model file", path.display())));
    }
    let is_onnx = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx {
        let imported = qonnx::import_file(path).map_err(|source| CliError::Onnx {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        return Ok(Loaded {
            model: imported.model,
            inputs: imported.inputs,
            format: Format::Onnx,
            file_bytes,
        });
    }
    let model = qgraph::io::load_with(path, &qonnx::loaders())?;
    let inputs = qgraph::io::load_inputs(path)?;
    Ok(Loaded { model, inputs, format: Format::Qgraph, file_bytes })
}

/// Saves `model`, recording `inputs` in the file; returns the file's size in bytes.
pub fn save(model: &dyn Module, path: &Path, inputs: &[InputInfo]) -> Result<u64> {
    let bytes = qgraph::io::to_bytes_with_inputs(model, inputs)?;
    std::fs::write(path, &bytes).map_err(|e| CliError::io(path, e))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_inputs_load_back() {
        let model: Box<dyn Module> = Box::new(qgraph::nn::Linear::new(3, 2, true));
        let inputs = vec![InputInfo { name: "input".into(), shape: vec![None, Some(3)] }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linear.qtk");
        save(model.as_ref(), &path, &inputs).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.inputs, inputs);
        assert_eq!(shape_text(&inputs[0]), "[N, 3]");
    }
}
