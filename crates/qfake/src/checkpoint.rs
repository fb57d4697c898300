//! Training checkpoints: a QAT model (parameters, batch-norm statistics, observer and
//! fake-quantizer state, freeze flags) with its optimizer's state, optionally its learning-rate
//! scheduler's, and the caller's metadata (the epoch, say) in one safetensors file, to resume
//! training where it stopped.
//!
//! ```
//! use qfake::checkpoint::{from_bytes, to_bytes};
//! use qfake::optim::{Optimizer, Sgd};
//! use qgraph::nn::Linear;
//! use qgraph::{Module, Sequential, train};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 2, true))]));
//! train(&mut model, true);
//! qfake::prepare_qat(&mut model, &qfake::get_default_qat_qconfig("x86")?)?;
//! let sgd = Sgd::new(0.01).momentum(0.9);
//! let bytes = to_bytes(model.as_ref(), &sgd, serde_json::json!({"epoch": 3}))?;
//! let resumed = from_bytes(&bytes)?;
//! assert_eq!(resumed.meta["epoch"], 3);
//! assert_eq!(resumed.model.to_string(), model.to_string());
//! # Ok::<(), qgraph::GraphError>(())
//! ```

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qgraph::{GraphError, Module};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::fake_quantize::QFakeResult;
use crate::optim::{LrScheduler, Optimizer};

/// The metadata key of a checkpoint's header.
const FORMAT: &str = "qfake.checkpoint";
/// The tensor holding the model file.
const MODEL: &str = "model";
/// The prefix of the optimizer's state tensors.
const OPTIMIZER: &str = "optimizer.";

/// What a checkpoint's header records.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format_version: u32,
    lr: f64,
    /// The optimizer's momentum (a scheduler may cycle it); absent in older checkpoints.
    #[serde(default)]
    momentum: Option<f64>,
    /// The scheduler's `state_dict`, when one was saved.
    #[serde(default)]
    scheduler: Option<serde_json::Value>,
    meta: serde_json::Value,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model, in eval mode as every loaded model (call `qgraph::train` to go on training).
    pub model: Box<dyn Module>,
    /// The optimizer's state ([`Optimizer::load_state`] takes it).
    pub optimizer_state: Vec<(String, ArrayD<f32>)>,
    /// The learning rate when it was saved.
    pub lr: f64,
    /// The optimizer's momentum when it was saved (SGD's `momentum`, Adam's `beta1`; `None` in
    /// checkpoints written before it was recorded).
    pub momentum: Option<f64>,
    /// The learning-rate scheduler's `state_dict`, if one was saved ([`to_bytes_with`]).
    pub scheduler: Option<serde_json::Value>,
    /// The caller's metadata.
    pub meta: serde_json::Value,
}

impl Checkpoint {
    /// Gives `optimizer` the saved state, learning rate and momentum.
    pub fn restore_optimizer(&self, optimizer: &mut dyn Optimizer) -> QFakeResult<()> {
        optimizer.load_state(self.optimizer_state.clone())?;
        optimizer.set_lr(self.lr);
        if let Some(momentum) = self.momentum {
            optimizer.set_momentum(momentum);
        }
        Ok(())
    }

    /// Resumes `scheduler` from the saved one (PyTorch's `scheduler.load_state_dict`): build
    /// it on the fresh optimizer, then call [`restore_optimizer`](Self::restore_optimizer) and
    /// this, and the schedule goes on where it stopped.
    pub fn restore_scheduler(&self, scheduler: &mut LrScheduler) -> QFakeResult<()> {
        let state = self.scheduler.as_ref().ok_or_else(|| {
            crate::fake_quantize::invalid(
                "checkpoint",
                "scheduler",
                "none",
                "this checkpoint holds no scheduler state; save it with checkpoint::to_bytes_with",
            )
        })?;
        scheduler.load_state_dict(state)
    }
}

fn error(path: &str, reason: impl Into<String>) -> GraphError {
    GraphError::File { path: path.to_string(), reason: reason.into() }
}

/// The checkpoint of `model` and `optimizer`, with `meta`, as bytes.
pub fn to_bytes(
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    meta: serde_json::Value,
) -> QFakeResult<Vec<u8>> {
    to_bytes_with(model, optimizer, None, meta)
}

/// [`to_bytes`], with the learning-rate scheduler's state when `scheduler` is given.
pub fn to_bytes_with(
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    scheduler: Option<&LrScheduler>,
    meta: serde_json::Value,
) -> QFakeResult<Vec<u8>> {
    let model_bytes = qgraph::io::to_bytes(model)?;
    let state = optimizer.state();
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = state
        .iter()
        .map(|(name, x)| {
            let bytes = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            (format!("{OPTIMIZER}{name}"), x.shape().to_vec(), bytes)
        })
        .collect();
    let mut views = vec![(
        MODEL.to_string(),
        TensorView::new(Dtype::U8, vec![model_bytes.len()], &model_bytes)
            .map_err(|e| error("<checkpoint>", e.to_string()))?,
    )];
    for (name, shape, bytes) in &raw {
        views.push((
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| error("<checkpoint>", e.to_string()))?,
        ));
    }
    let header = Header {
        format_version: 1,
        lr: optimizer.lr(),
        momentum: Some(optimizer.momentum()),
        scheduler: scheduler.map(LrScheduler::state_dict),
        meta,
    };
    let metadata = HashMap::from([(FORMAT.to_string(), serde_json::to_string(&header).expect("plain data"))]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| error("<checkpoint>", e.to_string()))
}

/// Reads a checkpoint (untrusted input: every problem is an error). The model is rebuilt with
/// [`crate::loaders`].
pub fn from_bytes(bytes: &[u8]) -> QFakeResult<Checkpoint> {
    from_bytes_named(bytes, "<bytes>")
}

fn from_bytes_named(bytes: &[u8], name: &str) -> QFakeResult<Checkpoint> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| error(name, format!("not a safetensors file: {e}")))?;
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| error(name, format!("not a safetensors file: {e}")))?;
    let text = metadata.metadata().as_ref().and_then(|m| m.get(FORMAT).cloned()).ok_or_else(|| {
        error(name, format!("no {FORMAT:?} header: not a checkpoint (save one with checkpoint::save)"))
    })?;
    let header: Header =
        serde_json::from_str(&text).map_err(|e| error(name, format!("bad checkpoint header: {e}")))?;
    if header.format_version != 1 {
        return Err(error(name, format!("checkpoint format version {} is not 1", header.format_version)));
    }
    let model = file.tensor(MODEL).map_err(|_| error(name, "no `model` tensor"))?;
    let model = qgraph::io::from_bytes_with(model.data(), &crate::loaders())?;
    let mut optimizer_state = Vec::new();
    for (key, view) in file.tensors() {
        let Some(param) = key.strip_prefix(OPTIMIZER) else { continue };
        if view.dtype() != Dtype::F32 {
            return Err(error(name, format!("optimizer tensor {key} is {:?}, not F32", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let x = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
            .map_err(|e| error(name, format!("{key}: {e}")))?;
        optimizer_state.push((param.to_string(), x));
    }
    optimizer_state.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(state) = &header.scheduler {
        // A malformed scheduler state is reported at load time, not at restore.
        LrScheduler::from_state_dict(state)?;
    }
    Ok(Checkpoint {
        model,
        optimizer_state,
        lr: header.lr,
        momentum: header.momentum,
        scheduler: header.scheduler,
        meta: header.meta,
    })
}

/// Saves a checkpoint to `path`.
pub fn save(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    meta: serde_json::Value,
) -> QFakeResult<()> {
    save_with(path, model, optimizer, None, meta)
}

/// [`save`], with the learning-rate scheduler's state when `scheduler` is given.
pub fn save_with(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    scheduler: Option<&LrScheduler>,
    meta: serde_json::Value,
) -> QFakeResult<()> {
    let path = path.as_ref();
    let bytes = to_bytes_with(model, optimizer, scheduler, meta)?;
    std::fs::write(path, bytes).map_err(|e| error(&path.display().to_string(), e.to_string()))
}

/// Loads a checkpoint from `path`.
pub fn load(path: impl AsRef<Path>) -> QFakeResult<Checkpoint> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| error(&name, e.to_string()))?;
    from_bytes_named(&bytes, &name)
}
