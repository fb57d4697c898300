//! Loading and saving models: qgraph model files and ONNX models, and the input shapes a file
//! records.
//!
//! qtk records a model's inputs in the file it writes, as an `inputs` field of the `qgraph`
//! metadata JSON (`[{"name": "input", "shape": [null, 1, 8, 8]}]`, `null` for a dimension of any
//! size). qgraph reads its own fields and ignores this one, so the file loads anywhere.

use std::path::Path;

use qgraph::Module;
use qgraph::io::FORMAT;
use safetensors::SafeTensors;
use serde_json::json;

use crate::error::{CliError, Result};

/// A model input: its name and shape (`None`: any size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputInfo {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<Option<usize>>,
}

impl InputInfo {
    /// The shape as text: `[N, 1, 8, 8]` (`N` for a dimension of any size).
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> =
            self.shape.iter().map(|d| d.map_or("N".to_string(), |d| d.to_string())).collect();
        format!("[{}]", dims.join(", "))
    }
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
        let imported = qonnx::import_file(path)
            .map_err(|source| CliError::Onnx { path: path.display().to_string(), source })?;
        let inputs =
            imported.inputs.into_iter().map(|t| InputInfo { name: t.name, shape: t.shape }).collect();
        return Ok(Loaded { model: imported.model, inputs, format: Format::Onnx, file_bytes });
    }
    let model = qgraph::io::load_with(path, &qonnx::loaders())?;
    let inputs = read_header(path)
        .and_then(|header| recorded_inputs(&header))
        .map_err(|reason| CliError::Input(format!("{}: {reason}", path.display())))?;
    Ok(Loaded { model, inputs, format: Format::Qgraph, file_bytes })
}

/// The JSON header of the safetensors file at `path` (its first `8 + n` bytes), without reading
/// the tensors.
fn read_header(path: &Path) -> std::result::Result<serde_json::Value, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| format!("not a safetensors file: {e}"))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if len > size.saturating_sub(8) {
        return Err(format!("not a safetensors file: a header of {len} bytes in a file of {size}"));
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header).map_err(|e| e.to_string())?;
    serde_json::from_slice(&header).map_err(|e| format!("not a safetensors file: {e}"))
}

/// The inputs recorded in a qgraph model file's header (none if it records none).
fn recorded_inputs(header: &serde_json::Value) -> std::result::Result<Vec<InputInfo>, String> {
    let Some(text) = header.pointer(&format!("/__metadata__/{FORMAT}")).and_then(|t| t.as_str()) else {
        return Ok(Vec::new());
    };
    let meta: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the `{FORMAT}` metadata is not JSON: {e}"))?;
    let Some(inputs) = meta.get("inputs") else { return Ok(Vec::new()) };
    let bad = || format!("the recorded `inputs` ({inputs}) are not a list of {{\"name\", \"shape\"}}");
    inputs
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|input| {
            let name = input.get("name").and_then(|n| n.as_str()).ok_or_else(bad)?;
            let shape = input.get("shape").and_then(|s| s.as_array()).ok_or_else(bad)?;
            let shape = shape
                .iter()
                .map(|d| match d {
                    serde_json::Value::Null => Ok(None),
                    d => d.as_u64().and_then(|d| usize::try_from(d).ok()).map(Some).ok_or_else(bad),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(InputInfo { name: name.to_string(), shape })
        })
        .collect()
}

/// Saves `model` with `qgraph::io::to_bytes`, recording `inputs` in its metadata; returns the
/// file's size in bytes.
pub fn save(model: &dyn Module, path: &Path, inputs: &[InputInfo]) -> Result<u64> {
    let bytes = qgraph::io::to_bytes(model)?;
    let bytes = if inputs.is_empty() { bytes } else { with_inputs(&bytes, inputs)? };
    std::fs::write(path, &bytes).map_err(|e| CliError::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// The model file `bytes` with `inputs` added to its `qgraph` metadata, everything else as it
/// was.
fn with_inputs(bytes: &[u8], inputs: &[InputInfo]) -> Result<Vec<u8>> {
    let broken = |reason: String| CliError::Input(format!("writing the model file: {reason}"));
    let file = SafeTensors::deserialize(bytes).map_err(|e| broken(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| broken(e.to_string()))?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    let text = metadata.get(FORMAT).ok_or_else(|| broken(format!("no `{FORMAT}` metadata")))?;
    let list: Vec<serde_json::Value> =
        inputs.iter().map(|i| json!({ "name": i.name, "shape": i.shape })).collect();
    // The JSON object gains its first field; the rest of the text stays byte for byte.
    let rest =
        text.strip_prefix('{').ok_or_else(|| broken(format!("`{FORMAT}` metadata is not an object")))?;
    let text = format!("{{\"inputs\":{},{rest}", serde_json::Value::Array(list));
    metadata.insert(FORMAT.to_string(), text);
    safetensors::serialize(file.tensors(), Some(metadata)).map_err(|e| broken(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_inputs_round_trip_and_the_file_still_loads() {
        let model: Box<dyn Module> = Box::new(qgraph::nn::Linear::new(3, 2, true));
        let inputs = vec![InputInfo { name: "input".into(), shape: vec![None, Some(3)] }];
        let bytes = with_inputs(&qgraph::io::to_bytes(model.as_ref()).unwrap(), &inputs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linear.qtk");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(recorded_inputs(&read_header(&path).unwrap()).unwrap(), inputs);
        assert_eq!(inputs[0].shape_text(), "[N, 3]");
        let loaded = qgraph::io::from_bytes(&bytes).unwrap();
        assert_eq!(
            qgraph::io::to_bytes(loaded.as_ref()).unwrap(),
            qgraph::io::to_bytes(model.as_ref()).unwrap()
        );
        // A file without the field records nothing.
        save(model.as_ref(), &path, &[]).unwrap();
        assert!(recorded_inputs(&read_header(&path).unwrap()).unwrap().is_empty());
    }
}
