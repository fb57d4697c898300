//! Weights for the zoo: loading a torchvision `state_dict` from safetensors with a clear report
//! of what does not fit, and the deterministic generator of `tools/golden/gen_models.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::arch::Architecture;
use crate::io::state_dict_from_bytes;
use crate::nn::{GRU, LSTM, RNN};
use crate::{GraphError, GraphResult, Module, load_state_dict};

/// `qtest`'s `random_f32s(len, seed)`: `len` values in `[-1, 1)` from xorshift64 (13/7/17, seed
/// made odd), `((u64 >> 40) / 2^24) * 2 - 1`, each step exact in f32 (`tools/xorshift.py`).
///
/// ```
/// assert_eq!(qgraph::models::random_f32s(3, 1000), [-1.0, 0.13263392, 0.9498527]);
/// ```
pub fn random_f32s(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The weights `tools/golden/gen_models.py` gives `model`: its `state_dict` entry `i` (in order,
/// shape S, n values) is `r = random_f32s(n, i + 1)` transformed in f32 by its name: conv / linear
/// `weight` (rank >= 2) `r * (1 / sqrt(n / S[0]))`, batch-norm `weight` `1 + 0.1 r`, `bias` and
/// `running_mean` `0.1 r`, `running_var` `0.5 + 0.5 ((r + 1) / 2)`; a recurrent module's
/// `weight_ih_l*`, `weight_hh_l*`, `bias_ih_l*`, `bias_hh_l*` (and `_reverse`) `r * (1 /
/// sqrt(hidden_size))` (`tools/golden/gen_crnn.py`). Load it with
/// [`load_state_dict`](crate::load_state_dict).
///
/// ```
/// let model = qgraph::models::resnet18(10)?;
/// let state = qgraph::models::deterministic_state_dict(model.as_ref())?;
/// assert_eq!(state["bn1.running_var"].len(), 64);
/// assert!(state["bn1.running_var"].iter().all(|&v| (0.5..1.0).contains(&v)));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn deterministic_state_dict(model: &dyn Module) -> GraphResult<BTreeMap<String, ArrayD<f32>>> {
    let mut out = BTreeMap::new();
    for (i, (key, x)) in model.state_dict().into_iter().enumerate() {
        let shape = x.shape().to_vec();
        let n = x.len();
        let r = random_f32s(n, i as u64 + 1);
        let values: Vec<f32> = if let Some(hidden) = recurrent_hidden_size(model, &key) {
            let s = (1.0 / (hidden as f64).sqrt()) as f32;
            r.iter().map(|&r| r * s).collect()
        } else if key.ends_with(".weight") && shape.len() >= 2 {
            let fan_in = n.checked_div(shape[0]).unwrap_or(0);
            let s = (1.0 / (fan_in as f64).sqrt()) as f32;
            r.iter().map(|&r| r * s).collect()
        } else if key.ends_with(".weight") {
            r.iter().map(|&r| 1.0f32 + 0.1f32 * r).collect()
        } else if key.ends_with(".bias") || key.ends_with(".running_mean") {
            r.iter().map(|&r| 0.1f32 * r).collect()
        } else if key.ends_with(".running_var") {
            r.iter().map(|&r| 0.5f32 + 0.5f32 * ((r + 1.0f32) / 2.0f32)).collect()
        } else {
            return Err(crate::invalid(
                "deterministic_state_dict",
                "parameter",
                &key,
                "no formula for it (weights, biases and batch-norm statistics only)",
            ));
        };
        let array = ArrayD::from_shape_vec(IxDyn(&shape), values).expect("n values for the shape");
        out.insert(key, array);
    }
    Ok(out)
}

/// The hidden size of the LSTM, GRU or RNN owning `key` if `key` is one of its gate weights or
/// biases (`weight_ih_l0`, `bias_hh_l1_reverse`, ...).
fn recurrent_hidden_size(model: &dyn Module, key: &str) -> Option<usize> {
    let (path, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    if !["weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l"].iter().any(|p| leaf.starts_with(p)) {
        return None;
    }
    let owner = if path.is_empty() { model } else { model.get(path).ok()? };
    if let Some(m) = owner.downcast_ref::<LSTM>() {
        Some(m.options().hidden_size)
    } else if let Some(m) = owner.downcast_ref::<GRU>() {
        Some(m.options().hidden_size)
    } else {
        owner.downcast_ref::<RNN>().map(|m| m.options().hidden_size)
    }
}

/// Loads a safetensors `state_dict` (torchvision's names; f32, f16, bf16 or f64;
/// `num_batches_tracked` ignored), such as `tools/export_torchvision.py` writes, into the zoo
/// model `model`. Strict: nothing changes unless every parameter is given with its shape and
/// every tensor names a parameter; the error says which names are missing, unexpected or
/// mis-shaped (a few of each, with counts) and, when they point that way, that the file holds
/// weights of another architecture (named from the file's metadata when the exporter wrote it).
pub fn load_weights(model: &mut Box<dyn Module>, path: impl AsRef<Path>) -> GraphResult<()> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| GraphError::File { path: name.clone(), reason: e.to_string() })?;
    load_weights_from_bytes(model, &bytes).map_err(|e| match e {
        GraphError::File { reason, .. } => GraphError::File { path: name, reason },
        GraphError::Mismatch { context, reason } => {
            GraphError::Mismatch { context, reason: format!("{name}: {reason}") }
        }
        other => other,
    })
}

/// [`load_weights`] from the bytes of the file.
pub fn load_weights_from_bytes(model: &mut Box<dyn Module>, bytes: &[u8]) -> GraphResult<()> {
    let entries = state_dict_from_bytes(bytes)?;
    let file_model = exported_model_name(bytes);
    let mut entries: BTreeMap<String, ArrayD<f32>> =
        entries.into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    let expected: Vec<(String, Vec<usize>)> =
        model.state_dict().into_iter().map(|(k, x)| (k, x.shape().to_vec())).collect();
    let known: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let mut missing = Vec::new();
    let mut shaped = Vec::new();
    for (key, shape) in &expected {
        match entries.get(key) {
            None => missing.push(key.clone()),
            Some(x) if x.shape() != shape.as_slice() => {
                shaped.push(format!("{key} (file {:?}, model {shape:?})", x.shape()))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = entries.keys().filter(|k| !known.contains(k.as_str())).cloned().collect();
    if missing.is_empty() && shaped.is_empty() && unexpected.is_empty() {
        entries.retain(|k, _| known.contains(k.as_str()));
        return load_state_dict(model, entries);
    }
    let ours = Architecture::of(model.as_ref())
        .map_or_else(|| model.type_name().to_string(), |a| a.name().to_string());
    let list = |what: &str, names: &[String]| {
        let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        let more = if names.len() > 3 { format!(", ... ({} more)", names.len() - 3) } else { String::new() };
        format!("{} {what}: {}{more}", names.len(), shown.join(", "))
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(list("missing", &missing));
    }
    if !unexpected.is_empty() {
        parts.push(list("unexpected", &unexpected));
    }
    if !shaped.is_empty() {
        parts.push(list("mis-shaped", &shaped));
    }
    let verdict = match file_model {
        Some(theirs) if theirs != ours => {
            format!("the file holds weights of another architecture ({theirs}, per its metadata), not {ours}")
        }
        _ if missing.len() + unexpected.len() + shaped.len() > expected.len() / 10 => {
            format!("these look like weights of another architecture or configuration than {ours}")
        }
        _ => format!("the weights do not fit {ours}"),
    };
    Err(GraphError::Mismatch {
        context: "load_weights",
        reason: format!("{verdict}: of the model's {} parameters, {}", expected.len(), parts.join("; ")),
    })
}

/// The model name `tools/export_torchvision.py` records in the metadata (`record` JSON, field
/// `model`), if any.
fn exported_model_name(bytes: &[u8]) -> Option<String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let record = header.metadata().as_ref()?.get("record")?;
    let value: serde_json::Value = serde_json::from_str(record).ok()?;
    Some(value.get("model")?.as_str()?.to_string())
}
