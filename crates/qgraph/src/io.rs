//! Saving and loading models as safetensors, and loading PyTorch `state_dict`s.
//!
//! A model file holds every module's tensors under `<module path>.<name>` (so a float model's
//! file is also its `state_dict`) and one metadata entry, `qgraph`: JSON with the format version
//! and the module tree (each module's type, configuration, tensor names and children). One
//! entry, because safetensors writes its metadata map in no fixed order: with one, saving the
//! same model twice gives the same bytes. Loading
//! needs no model code; the file is memory-mapped and every module is rebuilt by the loader
//! registered for its saved type ([`Loaders`]; quantized weights re-packed for this CPU), so a
//! loaded model computes exactly what the saved one did. Prepared models save their observers'
//! statistics, so calibration resumes where it stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::container::check_name;
pub use crate::loaders::{LoadFn, Loaders};
use crate::module::join;
use crate::record::{RawTensor, Record, TensorView, Tensors};
use crate::{GraphError, GraphResult, Module};

/// The metadata key of a model file.
pub const FORMAT: &str = "qgraph";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The metadata of a model file.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format_version: u32,
    /// The model's inputs, when the writer recorded them (see [`to_bytes_with_inputs`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<TensorInfo>,
    model: SavedModule,
}

/// Name and shape of a model input, as a model file may record it; `None` is a dimension of any
/// size (usually the batch).
///
/// ```
/// use qgraph::io::{TensorInfo, inputs_from_bytes, to_bytes_with_inputs};
/// use qgraph::nn::ReLU;
///
/// let input = TensorInfo { name: "input".into(), shape: vec![None, Some(3), Some(224), Some(224)] };
/// let bytes = to_bytes_with_inputs(&ReLU::default(), &[input.clone()]).unwrap();
/// assert_eq!(inputs_from_bytes(&bytes).unwrap(), vec![input]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// The input's name (an ONNX graph input's, or `input`).
    pub name: String,
    /// Its shape; `None` for a dimension of any size.
    pub shape: Vec<Option<usize>>,
}

/// One module in the saved tree.
#[derive(Debug, Serialize, Deserialize)]
struct SavedModule {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    tensors: Vec<String>,
    #[serde(default)]
    children: Vec<(String, SavedModule)>,
}

fn file_error(path: &str, reason: impl Into<String>) -> GraphError {
    GraphError::File { path: path.to_string(), reason: reason.into() }
}

/// The bytes of a model file for `model` (see the [module documentation](self)).
pub fn to_bytes(model: &dyn Module) -> GraphResult<Vec<u8>> {
    to_bytes_with_inputs(model, &[])
}

/// The bytes of a model file for `model` that also records its `inputs` (read back by
/// [`inputs_from_bytes`] / [`load_inputs`]; with none, the same bytes as [`to_bytes`]).
pub fn to_bytes_with_inputs(model: &dyn Module, inputs: &[TensorInfo]) -> GraphResult<Vec<u8>> {
    let mut tensors: Vec<(String, OwnedTensor)> = Vec::new();
    let tree = describe(model, "", &mut tensors)?;
    let header = Header { format_version: FORMAT_VERSION, inputs: inputs.to_vec(), model: tree };
    let metadata =
        HashMap::from([(FORMAT.to_string(), serde_json::to_string(&header).expect("plain data serializes"))]);
    let views = tensors
        .iter()
        .map(|(name, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("<model>", format!("cannot serialize: {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| file_error("<model>", format!("cannot serialize: {e}")))
}

/// Saves `model` to `path`.
pub fn save(model: &dyn Module, path: impl AsRef<Path>) -> GraphResult<()> {
    save_with_inputs(model, &[], path)
}

/// Saves `model` to `path`, recording its `inputs` (see [`to_bytes_with_inputs`]).
pub fn save_with_inputs(
    model: &dyn Module,
    inputs: &[TensorInfo],
    path: impl AsRef<Path>,
) -> GraphResult<()> {
    let path = path.as_ref();
    let bytes = to_bytes_with_inputs(model, inputs)?;
    std::fs::write(path, bytes).map_err(|e| file_error(&path.display().to_string(), e.to_string()))
}

/// The inputs the model file `bytes` records (empty if its writer recorded none).
pub fn inputs_from_bytes(bytes: &[u8]) -> GraphResult<Vec<TensorInfo>> {
    Ok(header(bytes, "<bytes>")?.inputs)
}

/// The inputs the model file at `path` records (empty if its writer recorded none); reads the
/// header only.
pub fn load_inputs(path: impl AsRef<Path>) -> GraphResult<Vec<TensorInfo>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let json = read_header_json(path).map_err(|e| file_error(&name, e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| file_error(&name, format!("not a safetensors file: its header is not JSON: {e}")))?;
    let text =
        header.get("__metadata__").and_then(|meta| meta.get(FORMAT)).and_then(serde_json::Value::as_str);
    Ok(parse_header(text, &name)?.inputs)
}

/// The JSON header of a safetensors file, read without the tensor data.
fn read_header_json(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)?;
    let mut json = Vec::new();
    file.take(u64::from_le_bytes(prefix)).read_to_end(&mut json)?;
    Ok(json)
}

/// Loads a model saved by [`save`], memory-mapping the file, with the [default
/// loaders](Loaders::default).
pub fn load(path: impl AsRef<Path>) -> GraphResult<Box<dyn Module>> {
    load_with(path, &Loaders::default())
}

/// Loads a model saved by [`save`], memory-mapping the file; `loaders` rebuild its modules
/// (register a crate's own module types there).
pub fn load_with(path: impl AsRef<Path>, loaders: &Loaders) -> GraphResult<Box<dyn Module>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| file_error(&name, e.to_string()))?;
    // SAFETY: the map is read-only and dropped before this function returns; every value read from
    // it is copied into the rebuilt modules. Another process truncating the file while it is
    // mapped could fault, as for any memory-mapped reader; model files are not written in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_error(&name, e.to_string()))?;
    from_bytes_named(&map, &name, loaders)
}

/// Loads a model from the bytes of a model file (untrusted input: every problem is an error),
/// with the [default loaders](Loaders::default).
pub fn from_bytes(bytes: &[u8]) -> GraphResult<Box<dyn Module>> {
    from_bytes_with(bytes, &Loaders::default())
}

/// Loads a model from the bytes of a model file with `loaders`.
pub fn from_bytes_with(bytes: &[u8], loaders: &Loaders) -> GraphResult<Box<dyn Module>> {
    from_bytes_named(bytes, "<bytes>", loaders)
}

fn from_bytes_named(bytes: &[u8], name: &str, loaders: &Loaders) -> GraphResult<Box<dyn Module>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(name, format!("not a safetensors file: {e}")))?;
    let tree = header(bytes, name)?.model;
    let views = file.tensors();
    let raw: HashMap<String, RawTensor<'_>> = views
        .iter()
        .map(|(k, v)| (k.clone(), RawTensor { dtype: v.dtype(), shape: v.shape(), bytes: v.data() }))
        .collect();
    rebuild(tree, "", &raw, 0, loaders)
        .map_err(|e| GraphError::Load { file: name.to_string(), source: Box::new(e) })
}

/// The `qgraph` metadata of the model file `bytes` (only its header needs to be present).
fn header(bytes: &[u8], name: &str) -> GraphResult<Header> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| file_error(name, format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    parse_header(meta.get(FORMAT).map(String::as_str), name)
}

/// Parses the `qgraph` metadata entry `text` (`None` when the file has none).
fn parse_header(text: Option<&str>, name: &str) -> GraphResult<Header> {
    let Some(text) = text else {
        return Err(file_error(
            name,
            format!(
                "not a {FORMAT} model file (no `{FORMAT}` metadata); a PyTorch state_dict loads with load_state_dict_file"
            ),
        ));
    };
    let version: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| file_error(name, format!("the `{FORMAT}` metadata is not valid JSON: {e}")))?;
    let version = version.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        let found = version.map_or("none".to_string(), |v| v.to_string());
        return Err(file_error(
            name,
            format!("format version {found}; this build reads version {FORMAT_VERSION}"),
        ));
    }
    serde_json::from_str::<Header>(text)
        .map_err(|e| file_error(name, format!("the module tree is not valid: {e}")))
}

/// A tensor to write.
struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn owned(view: TensorView<'_>) -> OwnedTensor {
    fn bytes<T: Copy, const N: usize>(x: ndarray::ArrayViewD<'_, T>, le: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        x.iter().flat_map(|&v| le(v)).collect()
    }
    match view {
        TensorView::F32(x) => {
            OwnedTensor { dtype: Dtype::F32, shape: x.shape().to_vec(), bytes: bytes(x, f32::to_le_bytes) }
        }
        TensorView::I8(x) => {
            OwnedTensor { dtype: Dtype::I8, shape: x.shape().to_vec(), bytes: bytes(x, i8::to_le_bytes) }
        }
        TensorView::F64(x) => {
            OwnedTensor { dtype: Dtype::F64, shape: x.shape().to_vec(), bytes: bytes(x, f64::to_le_bytes) }
        }
        TensorView::I64(x) => {
            OwnedTensor { dtype: Dtype::I64, shape: x.shape().to_vec(), bytes: bytes(x, i64::to_le_bytes) }
        }
        TensorView::U8(x) => {
            OwnedTensor { dtype: Dtype::U8, shape: x.shape().to_vec(), bytes: bytes(x, u8::to_le_bytes) }
        }
    }
}

fn describe(
    module: &dyn Module,
    path: &str,
    out: &mut Vec<(String, OwnedTensor)>,
) -> GraphResult<SavedModule> {
    let mut tensors = Vec::new();
    for (name, view) in module.tensors() {
        out.push((join(path, &name), owned(view)));
        tensors.push(name);
    }
    let children = module
        .children()
        .into_iter()
        .map(|(name, child)| Ok((name.to_string(), describe(child, &join(path, name), out)?)))
        .collect::<GraphResult<Vec<_>>>()?;
    Ok(SavedModule { type_name: module.saved_type().to_string(), config: module.config(), tensors, children })
}

/// serde_json stops at 128 levels, so deeper trees cannot reach here; this bounds the recursion
/// for any other caller.
const MAX_DEPTH: usize = 256;

fn rebuild(
    saved: SavedModule,
    path: &str,
    raw: &HashMap<String, RawTensor<'_>>,
    depth: usize,
    loaders: &Loaders,
) -> GraphResult<Box<dyn Module>> {
    let mismatch = |reason: String| GraphError::Mismatch { context: "load", reason };
    if depth > MAX_DEPTH {
        return Err(mismatch(format!("module `{path}`: the tree is too deep")));
    }
    let mut map = BTreeMap::new();
    for name in &saved.tensors {
        let key = join(path, name);
        let tensor = raw.get(&key).ok_or_else(|| {
            mismatch(format!("module `{path}`: tensor `{key}` is listed but not in the file"))
        })?;
        map.insert(name.clone(), *tensor);
    }
    let mut children = Vec::with_capacity(saved.children.len());
    for (name, child) in saved.children {
        check_name("load", &children, &name)
            .map_err(|e| mismatch(format!("module `{path}`: {e}; every child needs its own name")))?;
        let child = rebuild(child, &join(path, &name), raw, depth + 1, loaders)?;
        children.push((name, child));
    }
    let count = children.len();
    let record =
        Record { path: path.to_string(), config: saved.config, tensors: Tensors::new(path, map), children };
    let module = loaders.build(&saved.type_name, record).map_err(|e| match e {
        GraphError::Mismatch { .. } | GraphError::UnknownModuleType { .. } => e,
        other => other.within_path(path),
    })?;
    // Every saved child must have found its place.
    let held = module.children().len();
    if held != count {
        return Err(mismatch(format!(
            "module `{path}` ({}) holds {held} children but the file lists {count}",
            saved.type_name
        )));
    }
    Ok(module)
}

/// Loads a PyTorch `state_dict` saved as safetensors (`safetensors.torch.save_file(model.state_dict(),
/// path)`, see `tools/export_state_dict.py`) into `model`, whose parameters must have the same names
/// and shapes (see [`crate::load_state_dict`]). f32, f16, bf16 and f64 tensors are accepted.
pub fn load_state_dict_file(model: &mut Box<dyn Module>, path: impl AsRef<Path>) -> GraphResult<()> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| file_error(&name, e.to_string()))?;
    let entries = state_dict_from_bytes(&bytes).map_err(|e| match e {
        GraphError::File { reason, .. } => file_error(&name, reason),
        other => other,
    })?;
    crate::load_state_dict(model, entries)
}

/// The float tensors of a safetensors state dict, by name.
pub fn state_dict_from_bytes(bytes: &[u8]) -> GraphResult<BTreeMap<String, ArrayD<f32>>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error("<bytes>", format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (key, view) in file.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
            }
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => {
                data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            // Integer buffers (num_batches_tracked) are not float parameters.
            _ if key.ends_with("num_batches_tracked") => continue,
            other => {
                return Err(GraphError::Mismatch {
                    context: "load_state_dict",
                    reason: format!("{key}: dtype {other:?}; parameters must be floating point"),
                });
            }
        };
        let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values).map_err(|e| {
            GraphError::Mismatch { context: "load_state_dict", reason: format!("{key}: {e}") }
        })?;
        out.insert(key.to_string(), array);
    }
    Ok(out)
}
