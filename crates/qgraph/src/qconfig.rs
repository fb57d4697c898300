//! `QConfig`: which observer watches a module's activations and which its weights, and PyTorch's
//! per-backend defaults (`torch.ao.quantization.qconfig`, 2.x).
//!
//! A qconfig is plain data: two [`ObserverSpec`] descriptions, serializable and comparable, from
//! which `prepare` builds fresh observers (the Rust form of `QConfig(activation=MinMaxObserver.with_args(...), ...)`).

use std::str::FromStr;

use qobserve::{ObserverSpec, defaults};
use serde::{Deserialize, Serialize};

use crate::{GraphError, GraphResult};

/// The observers for one module: activation (its output) and weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Observes the module's output during calibration.
    pub activation: ObserverSpec,
    /// Observes the module's weight at convert (and before, for QAT).
    pub weight: ObserverSpec,
}

/// A quantized engine whose defaults `get_default_qconfig` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// PyTorch 2.x's default x86 engine (FBGEMM or oneDNN underneath).
    X86,
    /// FBGEMM.
    Fbgemm,
    /// QNNPACK (ARM).
    Qnnpack,
    /// oneDNN.
    Onednn,
}

impl FromStr for Backend {
    type Err = GraphError;

    fn from_str(name: &str) -> GraphResult<Backend> {
        match name {
            "x86" => Ok(Backend::X86),
            "fbgemm" => Ok(Backend::Fbgemm),
            "qnnpack" => Ok(Backend::Qnnpack),
            "onednn" => Ok(Backend::Onednn),
            other => Err(GraphError::UnknownBackend { backend: other.to_string() }),
        }
    }
}

/// The default post-training qconfig of a backend, as `get_default_qconfig(backend)` (version 0):
///
/// | backend | activation | weight |
/// |---|---|---|
/// | x86, fbgemm | `HistogramObserver(reduce_range=True)` | per-channel symmetric qint8 |
/// | qnnpack | `HistogramObserver(reduce_range=False)` | per-tensor symmetric qint8 |
/// | onednn | `HistogramObserver(reduce_range=False)` | per-channel symmetric qint8 |
///
/// ```
/// use qgraph::qconfig::get_default_qconfig;
/// let qconfig = get_default_qconfig("x86")?;
/// assert_eq!(qconfig.activation.name(), "HistogramObserver");
/// assert!(get_default_qconfig("tpu").is_err());
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn get_default_qconfig(backend: &str) -> GraphResult<QConfig> {
    let histogram = |reduce_range| ObserverSpec::histogram().with_args(|a| a.reduce_range(reduce_range));
    Ok(match backend.parse::<Backend>()? {
        Backend::X86 | Backend::Fbgemm => {
            QConfig { activation: histogram(true), weight: defaults::default_per_channel_weight_observer() }
        }
        Backend::Qnnpack => {
            QConfig { activation: histogram(false), weight: defaults::default_weight_observer() }
        }
        Backend::Onednn => {
            QConfig { activation: histogram(false), weight: defaults::default_per_channel_weight_observer() }
        }
    })
}

/// `default_qconfig`: `MinMaxObserver(quant_min=0, quant_max=127)` activations, per-tensor
/// symmetric qint8 weights.
pub fn default_qconfig() -> QConfig {
    QConfig { activation: defaults::default_observer(), weight: defaults::default_weight_observer() }
}

/// `default_per_channel_qconfig`: as [`default_qconfig`] with per-channel symmetric weights.
pub fn default_per_channel_qconfig() -> QConfig {
    QConfig {
        activation: defaults::default_observer(),
        weight: defaults::default_per_channel_weight_observer(),
    }
}

/// `default_dynamic_qconfig`: a dynamic placeholder for activations, per-tensor symmetric weights.
pub fn default_dynamic_qconfig() -> QConfig {
    QConfig {
        activation: defaults::default_dynamic_quant_observer(),
        weight: defaults::default_weight_observer(),
    }
}

/// `per_channel_dynamic_qconfig`: a dynamic placeholder for activations, per-channel symmetric
/// qint8 weights (`default_per_channel_weight_observer`).
pub fn per_channel_dynamic_qconfig() -> QConfig {
    QConfig {
        activation: defaults::default_dynamic_quant_observer(),
        weight: defaults::default_per_channel_weight_observer(),
    }
}

/// `float16_dynamic_qconfig`: `PlaceholderObserver(dtype=float16, is_dynamic=True)` for
/// activations, `PlaceholderObserver(dtype=float16)` for weights.
pub fn float16_dynamic_qconfig() -> QConfig {
    let placeholder = |is_dynamic| match ObserverSpec::placeholder() {
        ObserverSpec::Placeholder { quant_min, quant_max, qscheme, eps, custom_op_name, .. } => {
            ObserverSpec::Placeholder {
                dtype: qobserve::CarriedDType::Float16,
                quant_min,
                quant_max,
                qscheme,
                eps,
                is_dynamic,
                custom_op_name,
            }
        }
        other => other,
    };
    QConfig { activation: placeholder(true), weight: placeholder(false) }
}

/// `default_debug_qconfig`: a recording observer for activations, per-tensor symmetric weights.
pub fn default_debug_qconfig() -> QConfig {
    QConfig { activation: defaults::default_debug_observer(), weight: defaults::default_weight_observer() }
}

/// `default_symmetric_qnnpack_qconfig`: `HistogramObserver(dtype=qint8, reduce_range=False,
/// eps=2**-12)` activations, `weight_observer_range_neg_127_to_127` weights.
pub fn default_symmetric_qnnpack_qconfig() -> QConfig {
    QConfig {
        activation: symmetric_qnnpack_activation(),
        weight: defaults::weight_observer_range_neg_127_to_127(),
    }
}

/// `default_per_channel_symmetric_qnnpack_qconfig`: as [`default_symmetric_qnnpack_qconfig`]
/// with per-channel weights (`per_channel_weight_observer_range_neg_127_to_127`).
pub fn default_per_channel_symmetric_qnnpack_qconfig() -> QConfig {
    QConfig {
        activation: symmetric_qnnpack_activation(),
        weight: defaults::per_channel_weight_observer_range_neg_127_to_127(),
    }
}

fn symmetric_qnnpack_activation() -> ObserverSpec {
    ObserverSpec::histogram()
        .with_args(|a| a.dtype(qobserve::QDType::QInt8).reduce_range(false).eps(2f32.powi(-12)))
}

/// `float_qparams_weight_only_qconfig`: float activations (a placeholder), quint8 embedding
/// weights with a float scale and zero point per row (`default_float_qparams_observer`).
pub fn float_qparams_weight_only_qconfig() -> QConfig {
    QConfig {
        activation: defaults::default_placeholder_observer(),
        weight: defaults::default_float_qparams_observer(),
    }
}

/// `float_qparams_weight_only_qconfig_4bit`: as [`float_qparams_weight_only_qconfig`] with
/// quint4x2 weights (`default_float_qparams_observer_4bit`).
pub fn float_qparams_weight_only_qconfig_4bit() -> QConfig {
    QConfig {
        activation: defaults::default_placeholder_observer(),
        weight: defaults::default_float_qparams_observer_4bit(),
    }
}
