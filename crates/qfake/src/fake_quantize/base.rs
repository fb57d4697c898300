//! `FakeQuantize`: an observer's scale and zero point applied by fake quantization.

use ndarray::ArrayD;
use qcore::{QDType, QParams, QScheme};
use qobserve::{Observer, ObserverSpec, UniformArgs};

use super::common::{
    FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantizer, QFakeResult, fake_quantize_channels,
    fake_quantize_channels_float, fake_quantize_tensor, invalid, observed_qparams, straight_through,
};

const CONTEXT: &str = "FakeQuantize";

/// PyTorch's `FakeQuantize`: in forward, the observer (built from an [`ObserverSpec`]) sees the
/// input when the observer is enabled and its scale and zero point are copied into
/// [`FakeQuantize::scale`] / [`FakeQuantize::zero_point`]; then the input is fake-quantized per
/// tensor or per channel ([`qcore::fake_quant`]) when fake quantization is enabled, else passed
/// through. Before the first observation the parameters are PyTorch's initial `[1.0]` and `[0]`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::{FakeQuantizer, default_fake_quant};
/// let mut fq = default_fake_quant()?;
/// let x = ArrayD::from_shape_vec(IxDyn(&[4]), vec![-1.0f32, 0.0, 0.3, 2.0]).unwrap();
/// let (y, ctx) = fq.forward_train(&x)?;
/// assert_eq!(fq.quant_range(), (0, 127)); // quint8 0..255 with reduce_range
/// assert_eq!(y[1], 0.0);
/// let grads = fq.backward(&ctx, &ArrayD::ones(IxDyn(&[4])))?;
/// assert_eq!(grads.input.len(), 4);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug)]
pub struct FakeQuantize {
    observer: Box<dyn Observer>,
    quant_min: i64,
    quant_max: i64,
    dtype: QDType,
    qscheme: QScheme,
    ch_axis: i64,
    scale: Vec<f32>,
    zero_point: Vec<i64>,
    /// The float `zero_point` buffer of `per_channel_affine_float_qparams` (empty otherwise).
    float_zero_point: Vec<f32>,
    flags: FakeQuantFlags,
}

impl Clone for FakeQuantize {
    fn clone(&self) -> Self {
        let observer = self.observer.state().build().expect("an observer's own state rebuilds it");
        Self {
            observer,
            scale: self.scale.clone(),
            zero_point: self.zero_point.clone(),
            float_zero_point: self.float_zero_point.clone(),
            ..*self
        }
    }
}

/// Checks PyTorch's `FakeQuantize.__init__` assertions on a custom range.
fn check_range(quant_min: i64, quant_max: i64, dtype: QDType) -> QFakeResult<()> {
    if quant_min > quant_max {
        return Err(invalid(
            CONTEXT,
            "quant_min, quant_max",
            (quant_min, quant_max),
            "quant_min must be less than or equal to quant_max",
        ));
    }
    if quant_min < dtype.min() || quant_max > dtype.max() {
        return Err(invalid(
            CONTEXT,
            "quant_min, quant_max",
            (quant_min, quant_max),
            format!("out of the range of {dtype} [{}, {}]; give bounds inside it", dtype.min(), dtype.max()),
        ));
    }
    Ok(())
}

impl FakeQuantize {
    /// `FakeQuantize(observer=..., **observer_kwargs)` with the observer `spec`; the quant range
    /// (custom bounds checked against the dtype as PyTorch does) comes from the spec.
    pub fn new(spec: ObserverSpec) -> QFakeResult<Self> {
        let (dtype, qscheme, quant_min, quant_max) = match &spec {
            ObserverSpec::FixedQParams { dtype, qscheme, quant_min, quant_max, .. } => {
                check_range(*quant_min, *quant_max, *dtype)?;
                (*dtype, *qscheme, *quant_min, *quant_max)
            }
            _ => {
                let Some(&UniformArgs { dtype, qscheme, reduce_range, quant_min, quant_max, .. }) =
                    spec.args()
                else {
                    return Err(invalid(
                        CONTEXT,
                        "observer",
                        spec.name(),
                        "computes no scale and zero point; use a min/max, moving-average, histogram or \
                         fixed-qparams observer",
                    ));
                };
                if let (Some(lo), Some(hi)) = (quant_min, quant_max) {
                    check_range(lo, hi, dtype)?;
                }
                let (lo, hi) = qcore::calculate_qmin_qmax(quant_min, quant_max, dtype, reduce_range)?;
                (dtype, qscheme, lo, hi)
            }
        };
        let ch_axis = match &spec {
            ObserverSpec::PerChannelMinMax { ch_axis, .. }
            | ObserverSpec::MovingAveragePerChannelMinMax { ch_axis, .. } => *ch_axis,
            _ => -1,
        };
        if !matches!(
            qscheme,
            QScheme::PerTensorAffine
                | QScheme::PerTensorSymmetric
                | QScheme::PerChannelAffine
                | QScheme::PerChannelSymmetric
                | QScheme::PerChannelAffineFloatQParams
        ) {
            return Err(invalid(
                CONTEXT,
                "qscheme",
                qscheme,
                "only per channel and per tensor (affine or symmetric) quantization are supported in fake quantize",
            ));
        }
        let float_zero_point =
            if qscheme == QScheme::PerChannelAffineFloatQParams { vec![0.0] } else { Vec::new() };
        let observer = spec.build()?;
        Ok(Self {
            observer,
            quant_min,
            quant_max,
            dtype,
            qscheme,
            ch_axis,
            scale: vec![1.0],
            zero_point: vec![0],
            float_zero_point,
            flags: FakeQuantFlags::default(),
        })
    }

    /// True for `per_channel_affine_float_qparams` (embedding weights): the zero point is a float
    /// ([`FakeQuantize::float_zero_point`]).
    pub fn is_float_qparams(&self) -> bool {
        self.qscheme == QScheme::PerChannelAffineFloatQParams
    }

    /// The float `zero_point` buffer of a `per_channel_affine_float_qparams` quantizer (empty for
    /// the others, whose zero point is [`FakeQuantize::zero_point`]).
    pub fn float_zero_point(&self) -> &[f32] {
        &self.float_zero_point
    }

    /// Sets the float zero points of a saved state.
    pub(crate) fn restore_float_zero_point(&mut self, zero_point: Vec<f32>) {
        if self.is_float_qparams() {
            self.float_zero_point = zero_point;
        }
    }

    /// The observer.
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// The observer, to feed it without copying its parameters (the fused module's order).
    pub(crate) fn observer_mut(&mut self) -> &mut dyn Observer {
        self.observer.as_mut()
    }

    /// `(quant_min, quant_max)` as the observer resolved them (halved by `reduce_range`).
    pub fn quant_range(&self) -> (i64, i64) {
        (self.quant_min, self.quant_max)
    }

    /// The emulated quantized dtype.
    pub fn dtype(&self) -> QDType {
        self.dtype
    }

    /// The quantization scheme.
    pub fn qscheme(&self) -> QScheme {
        self.qscheme
    }

    /// The channel axis (`-1` for per-tensor observers, as PyTorch).
    pub fn ch_axis(&self) -> i64 {
        self.ch_axis
    }

    /// Whether fake quantization is per channel.
    pub fn is_per_channel(&self) -> bool {
        matches!(
            self.qscheme,
            QScheme::PerChannelAffine | QScheme::PerChannelSymmetric | QScheme::PerChannelAffineFloatQParams
        )
    }

    /// The `scale` buffer (float32; one value per tensor or per channel).
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// The `zero_point` buffer (int32 in PyTorch; one value per tensor or per channel).
    pub fn zero_point(&self) -> &[i64] {
        &self.zero_point
    }

    /// Replaces the scale and zero point (as `FixedQParamsFakeQuantize` and loading a state do).
    pub(crate) fn set_qparams(&mut self, scale: Vec<f32>, zero_point: Vec<i64>) {
        self.scale = scale;
        self.zero_point = zero_point;
    }

    /// Resumes from a saved state: the observer, parameters and flags.
    pub(crate) fn restore(
        &mut self,
        observer: Box<dyn Observer>,
        scale: Vec<f32>,
        zero_point: Vec<i64>,
        flags: FakeQuantFlags,
    ) {
        self.observer = observer;
        self.scale = scale;
        self.zero_point = zero_point;
        self.flags = flags;
    }

    /// The saved state, under the class name `class`.
    pub(crate) fn state_as(&self, class: &str) -> super::common::FakeQuantState {
        let zero_point = if self.is_float_qparams() {
            self.float_zero_point.clone()
        } else {
            self.zero_point.iter().map(|&z| z as f32).collect()
        };
        super::common::FakeQuantState::of(
            class,
            self.observer.as_ref(),
            (self.quant_min, self.quant_max),
            (self.scale.clone(), zero_point),
            self.flags,
        )
    }

    /// `calculate_qparams()`: the observer's parameters for what it has seen.
    pub fn calculate_qparams(&self) -> QFakeResult<QParams> {
        Ok(self.observer.calculate_qparams()?)
    }

    /// `extra_repr()` as PyTorch prints it.
    pub fn extra_repr(&self) -> String {
        format!(
            "fake_quant_enabled={}, observer_enabled={}, quant_min={}, quant_max={}, dtype={}, qscheme={}, \
             ch_axis={}, scale={}, zero_point={}",
            flag_str(self.flags.fake_quant),
            flag_str(self.flags.observer),
            self.quant_min,
            self.quant_max,
            self.dtype.torch_name(),
            self.qscheme.torch_name(),
            self.ch_axis,
            qcore::float_tensor_str(&self.scale),
            if self.is_float_qparams() {
                qcore::float_tensor_str(&self.float_zero_point)
            } else {
                int32_tensor_str(&self.zero_point)
            },
        )
    }

    /// The observer step of forward: observe `x`, copy the parameters.
    fn observe(&mut self, x: &ArrayD<f32>) -> QFakeResult<()> {
        self.observer.observe(x.view())?;
        if self.is_float_qparams() {
            match self.observer.calculate_qparams()? {
                QParams::PerChannelFloat { scales, zero_points, .. } => {
                    (self.scale, self.float_zero_point) = (scales, zero_points);
                }
                other => {
                    return Err(invalid(
                        CONTEXT,
                        "observer qparams",
                        other.qscheme(),
                        "a per_channel_affine_float_qparams fake quantizer needs float per-channel parameters",
                    ));
                }
            }
            return Ok(());
        }
        let (scale, zero_point) = observed_qparams(CONTEXT, self.observer.as_ref())?;
        self.set_qparams(scale, zero_point);
        Ok(())
    }

    /// The fake-quantize step of forward with the current parameters: values and gradient mask.
    pub(crate) fn fake_quantize(&self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>)> {
        let range = (self.quant_min, self.quant_max);
        if self.is_float_qparams() {
            let qparams: Vec<(f32, f32)> =
                self.scale.iter().copied().zip(self.float_zero_point.iter().copied()).collect();
            let (out, mask, _) = fake_quantize_channels_float(CONTEXT, x, self.ch_axis, &qparams, range)?;
            Ok((out, mask))
        } else if self.is_per_channel() {
            let qparams: Vec<(f32, i64)> =
                self.scale.iter().copied().zip(self.zero_point.iter().copied()).collect();
            let (out, mask, _) = fake_quantize_channels(CONTEXT, x, self.ch_axis, &qparams, range)?;
            Ok((out, mask))
        } else {
            fake_quantize_tensor(CONTEXT, x, (self.scale[0], self.zero_point[0]), range)
        }
    }
}

/// `str()` of PyTorch's uint8 flag buffers: `tensor([1], dtype=torch.uint8)`.
pub(crate) fn flag_str(on: bool) -> String {
    with_dtype(qcore::int_tensor_str(&[i64::from(on)]), "dtype=torch.uint8")
}

/// `str()` of PyTorch's int32 zero-point buffer.
pub(crate) fn int32_tensor_str(values: &[i64]) -> String {
    with_dtype(qcore::int_tensor_str(values), "dtype=torch.int32")
}

/// Adds a `dtype=` suffix to a printed tensor as `torch._tensor_str._add_suffixes` does: on the
/// last line, or on a new line indented under `tensor(` when it would pass 80 columns.
fn with_dtype(printed: String, suffix: &str) -> String {
    let body = printed.strip_suffix(')').unwrap_or(&printed);
    let last_line_len = match body.rfind('\n') {
        Some(i) => body.len() - i + 1,
        None => body.len() + 2,
    };
    if last_line_len + suffix.len() + 2 > 80 {
        format!("{body},\n{}{suffix})", " ".repeat("tensor(".len()))
    } else {
        format!("{body}, {suffix})")
    }
}

impl FakeQuantizer for FakeQuantize {
    fn type_name(&self) -> &'static str {
        "FakeQuantize"
    }

    fn qparams(&mut self) -> QFakeResult<QParams> {
        self.calculate_qparams()
    }

    fn state(&self) -> super::common::FakeQuantState {
        self.state_as("FakeQuantize")
    }

    fn quant_range(&self) -> (i64, i64) {
        FakeQuantize::quant_range(self)
    }

    fn extra_repr(&self) -> String {
        FakeQuantize::extra_repr(self)
    }

    fn clone_box(&self) -> Box<dyn FakeQuantizer> {
        Box::new(self.clone())
    }

    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)> {
        if self.flags.observer {
            self.observe(x)?;
        }
        if !self.flags.fake_quant {
            return Ok((x.clone(), FakeQuantCtx { mask: None, learned: None }));
        }
        let (out, mask) = self.fake_quantize(x)?;
        Ok((out, FakeQuantCtx { mask: Some(mask), learned: None }))
    }

    fn backward(&self, ctx: &FakeQuantCtx, grad_out: &ArrayD<f32>) -> QFakeResult<FakeQuantGrads> {
        let input = straight_through(CONTEXT, ctx, grad_out)?;
        Ok(FakeQuantGrads { input, scale: None, zero_point: None })
    }

    fn flags(&self) -> &FakeQuantFlags {
        &self.flags
    }

    fn flags_mut(&mut self) -> &mut FakeQuantFlags {
        &mut self.flags
    }
}

/// `default_fake_quant`: moving-average min/max, quint8 0..255 with `reduce_range` (0..127),
/// per tensor affine.
pub fn default_fake_quant() -> QFakeResult<FakeQuantize> {
    let args = UniformArgs::per_tensor().quant_range(0, 255).reduce_range(true);
    FakeQuantize::new(ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args })
}

/// `default_embedding_fake_quant`: moving-average per-channel min/max along axis 0 with
/// `averaging_constant` 1 (the last weight's range), quint8 0..255,
/// `per_channel_affine_float_qparams` (the weight quantizer of `default_embedding_qat_qconfig`).
pub fn default_embedding_fake_quant() -> QFakeResult<FakeQuantize> {
    FakeQuantize::new(embedding_weight_observer(QDType::QUInt8))
}

/// `default_embedding_fake_quant_4bit`: as [`default_embedding_fake_quant`] with quint4x2
/// (0..15).
pub fn default_embedding_fake_quant_4bit() -> QFakeResult<FakeQuantize> {
    FakeQuantize::new(embedding_weight_observer(QDType::QUInt4x2))
}

/// The observer of [`default_embedding_fake_quant`] (quint8, range 0..255) and
/// [`default_embedding_fake_quant_4bit`] (quint4x2, the dtype's range).
pub(crate) fn embedding_weight_observer(dtype: QDType) -> ObserverSpec {
    let args = UniformArgs::per_channel().dtype(dtype).qscheme(QScheme::PerChannelAffineFloatQParams);
    let args = if dtype == QDType::QUInt8 { args.quant_range(0, 255) } else { args };
    ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant: 1.0, ch_axis: 0, args }
}

/// `default_weight_fake_quant`: moving-average min/max, qint8 -128..127, per tensor symmetric.
pub fn default_weight_fake_quant() -> QFakeResult<FakeQuantize> {
    let args = UniformArgs::per_tensor()
        .dtype(QDType::QInt8)
        .qscheme(QScheme::PerTensorSymmetric)
        .quant_range(-128, 127);
    FakeQuantize::new(ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args })
}

/// `default_per_channel_weight_fake_quant`: moving-average per-channel min/max, qint8 -128..127,
/// per channel symmetric, `ch_axis` 0.
pub fn default_per_channel_weight_fake_quant() -> QFakeResult<FakeQuantize> {
    let args = UniformArgs::per_channel()
        .dtype(QDType::QInt8)
        .qscheme(QScheme::PerChannelSymmetric)
        .quant_range(-128, 127);
    FakeQuantize::new(ObserverSpec::MovingAveragePerChannelMinMax {
        averaging_constant: 0.01,
        ch_axis: 0,
        args,
    })
}
