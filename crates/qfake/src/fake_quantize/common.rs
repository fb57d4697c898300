//! The training interface of the fake quantizers and the element loops they share.

use ndarray::{ArrayD, Axis, Zip};
use qcore::QParams;
use qcore::fake_quant::{fake_quantize_per_channel, fake_quantize_per_tensor};
use qgraph::GraphResult;
use qobserve::{Observer, ObserverState};
use serde::{Deserialize, Serialize};

/// The result type of the fake quantizers (qfake reports errors as qgraph's `GraphError`).
pub type QFakeResult<T> = GraphResult<T>;

/// What [`FakeQuantizer::backward`] needs from the forward pass that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantCtx {
    /// Where the gradient passes straight through (`None`: fake quantization was disabled and the
    /// forward was the identity, so every gradient passes).
    pub mask: Option<ArrayD<bool>>,
    /// The input and parameters of a learnable fake quantization (`None` for the others).
    pub learned: Option<LearnedCtx>,
}

/// The gradients [`FakeQuantizer::backward`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantGrads {
    /// Gradient of the input.
    pub input: ArrayD<f32>,
    /// Gradient of a learned scale (`None` when the scale is not learned).
    pub scale: Option<ArrayD<f32>>,
    /// Gradient of a learned zero point (`None` when it is not learned).
    pub zero_point: Option<ArrayD<f32>>,
}

/// What the backward of a learnable fake quantization needs: the input and the parameters it was
/// fake-quantized with.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedCtx {
    /// The forward input.
    pub input: ArrayD<f32>,
    /// The scales (one per tensor or per channel).
    pub scale: Vec<f32>,
    /// The float zero points, before rounding.
    pub zero_point: Vec<f32>,
    /// The channel axis (resolved), `None` per tensor.
    pub axis: Option<usize>,
    /// The gradient factor (`1 / sqrt(numel * quant_max)` with grad scaling, else 1).
    pub grad_factor: f32,
}

/// PyTorch's `fake_quant_enabled` and `observer_enabled` buffers (`static_enabled` for the
/// learnable one); both start enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeQuantFlags {
    /// Forward fake-quantizes.
    pub fake_quant: bool,
    /// Forward updates the observer and the parameters.
    pub observer: bool,
}

impl Default for FakeQuantFlags {
    fn default() -> Self {
        Self { fake_quant: true, observer: true }
    }
}

/// Everything a fake quantizer holds (PyTorch's `state_dict` of a fake quantize module, plus its
/// class and observer description).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeQuantState {
    /// PyTorch's class name ([`FakeQuantizer::type_name`]).
    pub class: String,
    /// The observer: description, counters and statistics.
    pub observer: ObserverState,
    /// `(quant_min, quant_max)`.
    pub quant_range: (i64, i64),
    /// The scales (one per tensor or channel).
    pub scale: Vec<f32>,
    /// The zero points (integers, except for the learnable quantizer).
    pub zero_point: Vec<f32>,
    /// `fake_quant_enabled`.
    pub fake_quant_enabled: bool,
    /// `observer_enabled` (`static_enabled` of the learnable one).
    pub observer_enabled: bool,
    /// LSQ+'s gradient scaling (learnable only).
    #[serde(default)]
    pub use_grad_scaling: bool,
}

impl FakeQuantState {
    /// The state of `quantizer`'s common parts.
    pub(crate) fn of(
        class: &str,
        observer: &dyn Observer,
        quant_range: (i64, i64),
        (scale, zero_point): (Vec<f32>, Vec<f32>),
        flags: FakeQuantFlags,
    ) -> Self {
        Self {
            class: class.to_string(),
            observer: observer.state(),
            quant_range,
            scale,
            zero_point,
            fake_quant_enabled: flags.fake_quant,
            observer_enabled: flags.observer,
            use_grad_scaling: false,
        }
    }

    pub(crate) fn flags(&self) -> FakeQuantFlags {
        FakeQuantFlags { fake_quant: self.fake_quant_enabled, observer: self.observer_enabled }
    }

    pub(crate) fn integer_zero_points(&self) -> Vec<i64> {
        self.zero_point.iter().map(|&z| z as i64).collect()
    }
}

/// The training interface shared by the fake quantizers.
pub trait FakeQuantizer: std::fmt::Debug + Send + Sync {
    /// The training forward (PyTorch's `forward`): the observer sees `x` when enabled and the
    /// scale and zero point are recomputed; then `x` is fake-quantized when enabled.
    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)>;

    /// The gradients for `grad_out`, the gradient of the output of the forward that made `ctx`.
    fn backward(&self, ctx: &FakeQuantCtx, grad_out: &ArrayD<f32>) -> QFakeResult<FakeQuantGrads>;

    /// PyTorch's class name (`FakeQuantize`, `_LearnableFakeQuantize`, ...).
    fn type_name(&self) -> &'static str;

    /// The text between the parentheses of PyTorch's printout.
    fn extra_repr(&self) -> String;

    /// A deep copy (the observer's statistics included).
    fn clone_box(&self) -> Box<dyn FakeQuantizer>;

    /// `calculate_qparams()`: the parameters `convert` quantizes with (the observer's for
    /// `FakeQuantize` and `FusedMovingAvgObsFakeQuantize`, the fixed or learned ones otherwise;
    /// the learnable one clamps its scale, as PyTorch's does).
    fn qparams(&mut self) -> QFakeResult<QParams>;

    /// The integer range, `(quant_min, quant_max)`.
    fn quant_range(&self) -> (i64, i64);

    /// Everything it holds, to save ([`super::FakeQuantState::build`] rebuilds it).
    fn state(&self) -> FakeQuantState;

    /// The enable flags.
    fn flags(&self) -> &FakeQuantFlags;

    /// The learned parameters an optimizer updates, by PyTorch's `named_parameters()` names
    /// (`scale`, `zero_point` of `_LearnableFakeQuantize`, one value per tensor or per channel);
    /// none for the quantizers whose qparams are buffers.
    fn learned_mut(&mut self) -> Vec<(&'static str, &mut Vec<f32>)> {
        Vec::new()
    }

    /// The enable flags, to change.
    fn flags_mut(&mut self) -> &mut FakeQuantFlags;

    /// `enable_fake_quant(enabled)`.
    fn set_fake_quant_enabled(&mut self, enabled: bool) {
        self.flags_mut().fake_quant = enabled;
    }

    /// `enable_observer(enabled)` (`toggle_observer_update` of the learnable one).
    fn set_observer_enabled(&mut self, enabled: bool) {
        self.flags_mut().observer = enabled;
    }

    /// Whether forward fake-quantizes (`fake_quant_enabled[0] == 1`).
    fn fake_quant_enabled(&self) -> bool {
        self.flags().fake_quant
    }

    /// Whether forward updates the observer (`observer_enabled[0] == 1`).
    fn observer_enabled(&self) -> bool {
        self.flags().observer
    }

    /// `enable_fake_quant()`.
    fn enable_fake_quant(&mut self) {
        self.set_fake_quant_enabled(true);
    }

    /// `disable_fake_quant()`.
    fn disable_fake_quant(&mut self) {
        self.set_fake_quant_enabled(false);
    }

    /// `enable_observer()`.
    fn enable_observer(&mut self) {
        self.set_observer_enabled(true);
    }

    /// `disable_observer()`.
    fn disable_observer(&mut self) {
        self.set_observer_enabled(false);
    }
}

/// The straight-through gradient: `grad_out * mask` (`fake_quantize_per_tensor_affine_cachemask_backward`) (the identity where `mask` is `None`).
pub(crate) fn straight_through(
    context: &'static str,
    ctx: &FakeQuantCtx,
    grad_out: &ArrayD<f32>,
) -> QFakeResult<ArrayD<f32>> {
    let Some(mask) = &ctx.mask else { return Ok(grad_out.clone()) };
    if mask.shape() != grad_out.shape() {
        return Err(invalid(
            context,
            "grad_out shape",
            grad_out.shape(),
            format!("must equal the shape of the forward input, {:?}", mask.shape()),
        ));
    }
    let mut grad = grad_out.clone();
    // PyTorch's `dY * mask` (a masked negative gradient becomes -0.0).
    grad.zip_mut_with(mask, |g, &m| *g *= f32::from(u8::from(m)));
    Ok(grad)
}

/// A [`qgraph::GraphError::InvalidArgument`] naming the module, the argument and the fix.
pub(crate) fn invalid(
    context: &'static str,
    what: &'static str,
    value: impl std::fmt::Debug,
    reason: impl Into<String>,
) -> qgraph::GraphError {
    qgraph::GraphError::InvalidArgument { context, what, value: format!("{value:?}"), reason: reason.into() }
}

/// PyTorch's `ch_axis` (negative counts from the end) resolved against an input of rank `ndim`.
pub(crate) fn resolve_axis(context: &'static str, ch_axis: i64, ndim: usize) -> QFakeResult<usize> {
    let n = ndim as i64;
    let axis = if ch_axis < 0 { ch_axis + n } else { ch_axis };
    if axis < 0 || axis >= n {
        return Err(invalid(
            context,
            "ch_axis",
            ch_axis,
            format!("out of range for an input of rank {ndim}; give an axis in [-{n}, {n})"),
        ));
    }
    Ok(axis as usize)
}

/// `torch.fake_quantize_per_channel_affine` along `ch_axis` with one `(scale, zero_point)` per
/// channel: the values and the gradient mask. An error if the parameters do not match the channels.
pub(crate) fn fake_quantize_channels(
    context: &'static str,
    x: &ArrayD<f32>,
    ch_axis: i64,
    qparams: &[(f32, i64)],
    (qmin, qmax): (i64, i64),
) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>, usize)> {
    map_channels(context, x, ch_axis, qparams, |(s, zp)| {
        qcore::fake_quant::check_fake_quant_range(context, zp, qmin, qmax)?;
        Ok(move |v: f32| {
            let fq = fake_quantize_per_channel(v, s, zp, qmin, qmax);
            (fq.value, fq.mask)
        })
    })
}

/// `torch.fake_quantize_per_channel_affine` with float zero points
/// (`per_channel_affine_float_qparams`, ATen's floating-zero-point branch of
/// `_fake_quant_per_channel_cachemask_cpu_helper`): `q = lrint(fma(x, 1 / scale, zp))` (the x86
/// build contracts `zp + x * inv`), the value `f32((clamp(q) - zp) * scale)` in double, the mask
/// `qmin <= q <= qmax` (a NaN gives `i64::MIN`, so quant_min and mask false).
pub(crate) fn fake_quantize_channels_float(
    context: &'static str,
    x: &ArrayD<f32>,
    ch_axis: i64,
    qparams: &[(f32, f32)],
    (qmin, qmax): (i64, i64),
) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>, usize)> {
    map_channels(context, x, ch_axis, qparams, |(s, zp)| {
        let inv = 1.0f32 / s;
        Ok(move |v: f32| {
            let t = v.mul_add(inv, zp).round_ties_even();
            // `std::lrint` on x86: NaN and out-of-range values give i64::MIN.
            let q = if t.is_nan() || t.abs() >= 9.223_372e18 { i64::MIN } else { t as i64 };
            let clamped = q.clamp(qmin, qmax) as f64;
            (((clamped - f64::from(zp)) * f64::from(s)) as f32, qmin <= q && q <= qmax)
        })
    })
}

/// Applies `rule(qparams[c])`, a per-channel element rule giving each value's fake-quantized
/// value and gradient mask, to channel `c` of `x` along `ch_axis`; returns the values, the mask
/// and the resolved axis. An error if there is not one entry of `qparams` per channel, or if a
/// rule cannot be built.
fn map_channels<Q: Copy, F: Fn(f32) -> (f32, bool)>(
    context: &'static str,
    x: &ArrayD<f32>,
    ch_axis: i64,
    qparams: &[Q],
    rule: impl Fn(Q) -> QFakeResult<F>,
) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>, usize)> {
    let axis = resolve_axis(context, ch_axis, x.ndim())?;
    let channels = x.len_of(Axis(axis));
    if qparams.len() != channels {
        return Err(invalid(
            context,
            "scale length",
            qparams.len(),
            format!("must equal the input's size {channels} along ch_axis {ch_axis}"),
        ));
    }
    let mut out = x.clone();
    let mut mask = ArrayD::from_elem(x.raw_dim(), false);
    for (&q, (mut o, mut m)) in
        qparams.iter().zip(out.axis_iter_mut(Axis(axis)).zip(mask.axis_iter_mut(Axis(axis))))
    {
        let element = rule(q)?;
        Zip::from(&mut o).and(&mut m).for_each(|v, m| (*v, *m) = element(*v));
    }
    Ok((out, mask, axis))
}

/// `torch.fake_quantize_per_tensor_affine`: the values and the gradient mask.
pub(crate) fn fake_quantize_tensor(
    context: &'static str,
    x: &ArrayD<f32>,
    (s, zp): (f32, i64),
    (qmin, qmax): (i64, i64),
) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>)> {
    qcore::fake_quant::check_fake_quant_range(context, zp, qmin, qmax)?;
    let mut out = x.clone();
    let mut mask = ArrayD::from_elem(x.raw_dim(), false);
    Zip::from(&mut out).and(&mut mask).for_each(|v, m| {
        let fq = fake_quantize_per_tensor(*v, s, zp, qmin, qmax);
        (*v, *m) = (fq.value, fq.mask);
    });
    Ok((out, mask))
}

/// The observer's scales (as the float32 buffer) and zero points, per tensor or per channel.
pub(crate) fn observed_qparams(
    context: &'static str,
    observer: &dyn Observer,
) -> QFakeResult<(Vec<f32>, Vec<i64>)> {
    match observer.calculate_qparams()? {
        QParams::PerTensor { scale, zero_point } => Ok((vec![scale as f32], vec![zero_point])),
        QParams::PerChannel { scales, zero_points, .. } => {
            Ok((scales.iter().map(|&s| s as f32).collect(), zero_points))
        }
        other => {
            Err(invalid(context, "observer qparams", other.qscheme(), "must be per tensor or per channel"))
        }
    }
}
