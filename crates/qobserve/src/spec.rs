//! Observer descriptions: plain, serializable, comparable data (the Rust form of PyTorch's
//! `MinMaxObserver.with_args(dtype=torch.qint8)`), and PyTorch's named defaults. Building an
//! observer from a description is in `build`, above the observers.

use serde::{Deserialize, Serialize};

use crate::{QDType, QScheme};

/// `torch.finfo(torch.float32).eps`, PyTorch's default `eps` (2^-23).
pub const DEFAULT_EPS: f32 = f32::EPSILON;

/// PyTorch's default `averaging_constant` of the moving-average observers.
pub const DEFAULT_AVERAGING_CONSTANT: f64 = 0.01;

/// PyTorch's default histogram bin count.
pub const DEFAULT_BINS: usize = 2048;

/// PyTorch 2.15's `HistogramObserver.upsample_rate` (a constant there, 16; older releases and
/// most write-ups say 128, and used a different merge).
pub const DEFAULT_UPSAMPLE_RATE: usize = 16;

/// The arguments of PyTorch's `UniformQuantizationObserverBase`, shared by every observer that
/// computes scales and zero points from a range.
///
/// Build it from [`UniformArgs::per_tensor`] or [`UniformArgs::per_channel`] (PyTorch's defaults)
/// and the chainable setters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UniformArgs {
    /// Quantized dtype (`dtype=`).
    pub dtype: QDType,
    /// Quantization scheme (`qscheme=`).
    pub qscheme: QScheme,
    /// Halve the quantized range (`reduce_range=`), as FBGEMM's activations need.
    pub reduce_range: bool,
    /// Custom lower bound (`quant_min=`); give both bounds or neither.
    pub quant_min: Option<i64>,
    /// Custom upper bound (`quant_max=`).
    pub quant_max: Option<i64>,
    /// Smallest scale (`eps=`), stored as PyTorch stores its buffer: float32.
    pub eps: f32,
    /// Marks the observer for dynamic quantization (`is_dynamic=`).
    pub is_dynamic: bool,
}

impl UniformArgs {
    /// PyTorch's per-tensor defaults: quint8, `per_tensor_affine`, full range, eps 2^-23.
    pub const fn per_tensor() -> Self {
        Self {
            dtype: QDType::QUInt8,
            qscheme: QScheme::PerTensorAffine,
            reduce_range: false,
            quant_min: None,
            quant_max: None,
            eps: DEFAULT_EPS,
            is_dynamic: false,
        }
    }

    /// PyTorch's per-channel defaults: quint8, `per_channel_affine`, full range, eps 2^-23.
    pub const fn per_channel() -> Self {
        Self { qscheme: QScheme::PerChannelAffine, ..Self::per_tensor() }
    }

    /// Sets `dtype`.
    pub const fn dtype(mut self, dtype: QDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets `qscheme`.
    pub const fn qscheme(mut self, qscheme: QScheme) -> Self {
        self.qscheme = qscheme;
        self
    }

    /// Sets `reduce_range`.
    pub const fn reduce_range(mut self, reduce_range: bool) -> Self {
        self.reduce_range = reduce_range;
        self
    }

    /// Sets a custom `quant_min`/`quant_max`.
    pub const fn quant_range(mut self, quant_min: i64, quant_max: i64) -> Self {
        self.quant_min = Some(quant_min);
        self.quant_max = Some(quant_max);
        self
    }

    /// Sets `eps`.
    pub const fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets `is_dynamic`.
    pub const fn dynamic(mut self, is_dynamic: bool) -> Self {
        self.is_dynamic = is_dynamic;
        self
    }
}

impl Default for UniformArgs {
    fn default() -> Self {
        Self::per_tensor()
    }
}

/// The dtype a non-computing observer (Placeholder, Noop, Recording) carries: a quantized dtype,
/// or a float type for float16 / dynamic quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CarriedDType {
    /// A quantized dtype.
    Quantized(QDType),
    /// `torch.float16`.
    Float16,
    /// `torch.float32`.
    Float32,
}

/// A description of an observer: which one, with which arguments. Plain data: `Clone`,
/// `PartialEq`, serde; [`ObserverSpec::build`] makes a fresh observer.
///
/// ```
/// use qobserve::{ObserverSpec, QDType, QScheme, UniformArgs, defaults};
///
/// // MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
/// let args = UniformArgs::per_tensor().dtype(QDType::QInt8).qscheme(QScheme::PerTensorSymmetric);
/// let spec = ObserverSpec::MinMax { args };
/// assert_eq!(spec, defaults::default_weight_observer());
/// let json = serde_json::to_string(&spec).unwrap();
/// assert_eq!(serde_json::from_str::<ObserverSpec>(&json).unwrap(), spec);
/// let mut observer = spec.build()?;
/// observer.observe(ndarray::arr1(&[-1.0f32, 0.5]).view().into_dyn())?;
/// # Ok::<(), qobserve::ObserveError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ObserverSpec {
    /// `MinMaxObserver`.
    MinMax {
        /// Range arguments.
        args: UniformArgs,
    },
    /// `MovingAverageMinMaxObserver`.
    MovingAverageMinMax {
        /// `averaging_constant` (PyTorch default 0.01).
        averaging_constant: f64,
        /// Range arguments.
        args: UniformArgs,
    },
    /// `PerChannelMinMaxObserver`.
    PerChannelMinMax {
        /// `ch_axis` (negative counts from the end, as in PyTorch).
        ch_axis: i64,
        /// Range arguments (a per-channel qscheme).
        args: UniformArgs,
    },
    /// `MovingAveragePerChannelMinMaxObserver`.
    MovingAveragePerChannelMinMax {
        /// `averaging_constant`.
        averaging_constant: f64,
        /// `ch_axis`.
        ch_axis: i64,
        /// Range arguments (a per-channel qscheme).
        args: UniformArgs,
    },
    /// `HistogramObserver`.
    Histogram {
        /// `bins` (2048).
        bins: usize,
        /// `upsample_rate` (16 in PyTorch 2.15).
        upsample_rate: usize,
        /// Range arguments (a per-tensor qscheme).
        args: UniformArgs,
    },
    /// `PlaceholderObserver`: carries a configuration, observes nothing.
    Placeholder {
        /// `dtype` (PyTorch default float32).
        dtype: CarriedDType,
        /// `quant_min`.
        quant_min: Option<i64>,
        /// `quant_max`.
        quant_max: Option<i64>,
        /// `qscheme` (default per_tensor_affine).
        qscheme: QScheme,
        /// `eps`.
        eps: f32,
        /// `is_dynamic`.
        is_dynamic: bool,
        /// `custom_op_name`.
        custom_op_name: String,
    },
    /// `FixedQParamsObserver`: returns fixed parameters.
    FixedQParams {
        /// `scale` (stored as float32 by PyTorch).
        scale: f64,
        /// `zero_point`.
        zero_point: i64,
        /// `dtype`.
        dtype: QDType,
        /// `qscheme`.
        qscheme: QScheme,
        /// `quant_min` (default 0).
        quant_min: i64,
        /// `quant_max` (default 255).
        quant_max: i64,
    },
    /// `NoopObserver`.
    Noop {
        /// `dtype` (PyTorch default float16).
        dtype: CarriedDType,
        /// `custom_op_name`.
        custom_op_name: String,
    },
    /// `RecordingObserver`: keeps copies of every observed tensor (debugging).
    Recording {
        /// `dtype` (default quint8).
        dtype: CarriedDType,
    },
    /// Percentile calibrator (not in PyTorch): clips the histogram's tails.
    Percentile {
        /// Percentage of the observed values kept inside the range, e.g. 99.99.
        percentile: f64,
        /// Histogram bins.
        bins: usize,
        /// Range arguments (a per-tensor qscheme).
        args: UniformArgs,
    },
    /// Entropy calibrator (TensorRT's KL-divergence method, not in PyTorch).
    Entropy {
        /// Bins of the |x| histogram (TensorRT uses 2048).
        bins: usize,
        /// Range arguments (a per-tensor qscheme).
        args: UniformArgs,
    },
    /// MSE calibrator (not in PyTorch): the range whose quantization error is smallest.
    Mse {
        /// Histogram bins.
        bins: usize,
        /// Range arguments (a per-tensor qscheme).
        args: UniformArgs,
    },
}

impl ObserverSpec {
    /// `MinMaxObserver` with PyTorch's defaults.
    pub const fn min_max() -> Self {
        Self::MinMax { args: UniformArgs::per_tensor() }
    }

    /// `MovingAverageMinMaxObserver` with PyTorch's defaults (averaging constant 0.01).
    pub const fn moving_average_min_max() -> Self {
        Self::MovingAverageMinMax {
            averaging_constant: DEFAULT_AVERAGING_CONSTANT,
            args: UniformArgs::per_tensor(),
        }
    }

    /// `PerChannelMinMaxObserver` with PyTorch's defaults (ch_axis 0).
    pub const fn per_channel_min_max() -> Self {
        Self::PerChannelMinMax { ch_axis: 0, args: UniformArgs::per_channel() }
    }

    /// `MovingAveragePerChannelMinMaxObserver` with PyTorch's defaults.
    pub const fn moving_average_per_channel_min_max() -> Self {
        Self::MovingAveragePerChannelMinMax {
            averaging_constant: DEFAULT_AVERAGING_CONSTANT,
            ch_axis: 0,
            args: UniformArgs::per_channel(),
        }
    }

    /// `HistogramObserver` with PyTorch's defaults (2048 bins).
    pub const fn histogram() -> Self {
        Self::Histogram {
            bins: DEFAULT_BINS,
            upsample_rate: DEFAULT_UPSAMPLE_RATE,
            args: UniformArgs::per_tensor(),
        }
    }

    /// `PlaceholderObserver` with PyTorch's defaults (float32).
    pub fn placeholder() -> Self {
        Self::Placeholder {
            dtype: CarriedDType::Float32,
            quant_min: None,
            quant_max: None,
            qscheme: QScheme::PerTensorAffine,
            eps: DEFAULT_EPS,
            is_dynamic: false,
            custom_op_name: String::new(),
        }
    }

    /// `FixedQParamsObserver(scale, zero_point)` with PyTorch's defaults (quint8, 0..255).
    pub const fn fixed_qparams(scale: f64, zero_point: i64) -> Self {
        Self::FixedQParams {
            scale,
            zero_point,
            dtype: QDType::QUInt8,
            qscheme: QScheme::PerTensorAffine,
            quant_min: 0,
            quant_max: 255,
        }
    }

    /// `NoopObserver` with PyTorch's defaults (float16).
    pub fn noop() -> Self {
        Self::Noop { dtype: CarriedDType::Float16, custom_op_name: String::new() }
    }

    /// `RecordingObserver` with PyTorch's defaults (quint8).
    pub const fn recording() -> Self {
        Self::Recording { dtype: CarriedDType::Quantized(QDType::QUInt8) }
    }

    /// Percentile calibrator keeping `percentile` % of the values, 2048 bins, quint8 affine.
    pub const fn percentile(percentile: f64) -> Self {
        Self::Percentile { percentile, bins: DEFAULT_BINS, args: UniformArgs::per_tensor() }
    }

    /// Entropy (KL) calibrator, 2048 bins, quint8 affine.
    pub const fn entropy() -> Self {
        Self::Entropy { bins: DEFAULT_BINS, args: UniformArgs::per_tensor() }
    }

    /// MSE calibrator, 2048 bins, quint8 affine.
    pub const fn mse() -> Self {
        Self::Mse { bins: DEFAULT_BINS, args: UniformArgs::per_tensor() }
    }

    /// The range arguments, for the variants that have them.
    pub fn args(&self) -> Option<&UniformArgs> {
        match self {
            Self::MinMax { args }
            | Self::MovingAverageMinMax { args, .. }
            | Self::PerChannelMinMax { args, .. }
            | Self::MovingAveragePerChannelMinMax { args, .. }
            | Self::Histogram { args, .. }
            | Self::Percentile { args, .. }
            | Self::Entropy { args, .. }
            | Self::Mse { args, .. } => Some(args),
            _ => None,
        }
    }

    /// Replaces the range arguments of the variants that have them (`with_args` on top of a
    /// description); other variants are returned unchanged.
    pub fn with_args(mut self, f: impl FnOnce(UniformArgs) -> UniformArgs) -> Self {
        match &mut self {
            Self::MinMax { args }
            | Self::MovingAverageMinMax { args, .. }
            | Self::PerChannelMinMax { args, .. }
            | Self::MovingAveragePerChannelMinMax { args, .. }
            | Self::Histogram { args, .. }
            | Self::Percentile { args, .. }
            | Self::Entropy { args, .. }
            | Self::Mse { args, .. } => *args = f(*args),
            _ => {}
        }
        self
    }
}

/// PyTorch's named observer defaults (`torch.ao.quantization.observer`), as descriptions.
pub mod defaults {
    use super::*;

    /// `default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)`.
    pub const fn default_observer() -> ObserverSpec {
        ObserverSpec::MinMax { args: UniformArgs::per_tensor().quant_range(0, 127) }
    }

    /// `default_weight_observer = MinMaxObserver.with_args(dtype=qint8, qscheme=per_tensor_symmetric)`.
    pub const fn default_weight_observer() -> ObserverSpec {
        ObserverSpec::MinMax {
            args: UniformArgs::per_tensor().dtype(QDType::QInt8).qscheme(QScheme::PerTensorSymmetric),
        }
    }

    /// `weight_observer_range_neg_127_to_127`: MinMax, qint8, symmetric, [-127, 127], eps 2^-12.
    pub const fn weight_observer_range_neg_127_to_127() -> ObserverSpec {
        ObserverSpec::MinMax {
            args: UniformArgs::per_tensor()
                .dtype(QDType::QInt8)
                .qscheme(QScheme::PerTensorSymmetric)
                .quant_range(-127, 127)
                .eps(1.0 / 4096.0),
        }
    }

    /// `default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)`.
    pub const fn default_histogram_observer() -> ObserverSpec {
        ObserverSpec::Histogram {
            bins: DEFAULT_BINS,
            upsample_rate: DEFAULT_UPSAMPLE_RATE,
            args: UniformArgs::per_tensor().quant_range(0, 127),
        }
    }

    /// `default_per_channel_weight_observer`: PerChannelMinMax, qint8, per_channel_symmetric, ch_axis 0.
    pub const fn default_per_channel_weight_observer() -> ObserverSpec {
        ObserverSpec::PerChannelMinMax {
            ch_axis: 0,
            args: UniformArgs::per_channel().dtype(QDType::QInt8).qscheme(QScheme::PerChannelSymmetric),
        }
    }

    /// `per_channel_weight_observer_range_neg_127_to_127`: per-channel, qint8, symmetric,
    /// [-127, 127], eps 2^-12.
    pub const fn per_channel_weight_observer_range_neg_127_to_127() -> ObserverSpec {
        ObserverSpec::PerChannelMinMax {
            ch_axis: 0,
            args: UniformArgs::per_channel()
                .dtype(QDType::QInt8)
                .qscheme(QScheme::PerChannelSymmetric)
                .quant_range(-127, 127)
                .eps(1.0 / 4096.0),
        }
    }

    /// `default_dynamic_quant_observer = PlaceholderObserver.with_args(dtype=quint8, quant_min=0,
    /// quant_max=255, is_dynamic=True)`.
    pub fn default_dynamic_quant_observer() -> ObserverSpec {
        ObserverSpec::Placeholder {
            dtype: CarriedDType::Quantized(QDType::QUInt8),
            quant_min: Some(0),
            quant_max: Some(255),
            qscheme: QScheme::PerTensorAffine,
            eps: DEFAULT_EPS,
            is_dynamic: true,
            custom_op_name: String::new(),
        }
    }

    /// `default_float_qparams_observer`: PerChannelMinMax, quint8,
    /// per_channel_affine_float_qparams, ch_axis 0 (embedding weights).
    pub const fn default_float_qparams_observer() -> ObserverSpec {
        ObserverSpec::PerChannelMinMax {
            ch_axis: 0,
            args: UniformArgs::per_channel().qscheme(QScheme::PerChannelAffineFloatQParams),
        }
    }

    /// `default_float_qparams_observer_4bit`: as [`default_float_qparams_observer`] with
    /// dtype quint4x2 (range 0..=15; 4-bit embedding weights).
    pub const fn default_float_qparams_observer_4bit() -> ObserverSpec {
        ObserverSpec::PerChannelMinMax {
            ch_axis: 0,
            args: UniformArgs::per_channel()
                .dtype(QDType::QUInt4x2)
                .qscheme(QScheme::PerChannelAffineFloatQParams),
        }
    }

    /// `default_fixed_qparams_range_neg1to1_observer`: scale 2/256, zero point 128, quint8.
    pub const fn default_fixed_qparams_range_neg1to1_observer() -> ObserverSpec {
        ObserverSpec::fixed_qparams(2.0 / 256.0, 128)
    }

    /// `default_fixed_qparams_range_0to1_observer`: scale 1/256, zero point 0, quint8.
    pub const fn default_fixed_qparams_range_0to1_observer() -> ObserverSpec {
        ObserverSpec::fixed_qparams(1.0 / 256.0, 0)
    }

    /// `default_symmetric_fixed_qparams_observer`, PyTorch's old name of
    /// [`default_fixed_qparams_range_neg1to1_observer`].
    pub const fn default_symmetric_fixed_qparams_observer() -> ObserverSpec {
        default_fixed_qparams_range_neg1to1_observer()
    }

    /// `default_affine_fixed_qparams_observer`, PyTorch's old name of
    /// [`default_fixed_qparams_range_0to1_observer`].
    pub const fn default_affine_fixed_qparams_observer() -> ObserverSpec {
        default_fixed_qparams_range_0to1_observer()
    }

    /// `default_placeholder_observer = PlaceholderObserver` (float32).
    pub fn default_placeholder_observer() -> ObserverSpec {
        ObserverSpec::placeholder()
    }

    /// `default_debug_observer = RecordingObserver`.
    pub const fn default_debug_observer() -> ObserverSpec {
        ObserverSpec::recording()
    }

    /// The activation observer of `get_default_qconfig("x86")` / `("fbgemm")`:
    /// `HistogramObserver.with_args(reduce_range=True)`, quint8 [0, 127].
    pub const fn x86_activation_observer() -> ObserverSpec {
        ObserverSpec::Histogram {
            bins: DEFAULT_BINS,
            upsample_rate: DEFAULT_UPSAMPLE_RATE,
            args: UniformArgs::per_tensor().reduce_range(true),
        }
    }
}
