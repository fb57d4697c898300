//! `_LearnableFakeQuantize` (LSQ): fake quantization with a learned scale and zero point, and
//! PyTorch's gradients for both.

use ndarray::{ArrayD, Axis, Zip};
use qcore::{QDType, QScheme};
use qobserve::{Observer, ObserverSpec, UniformArgs, torch_sum};

use super::common::{
    FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantizer, LearnedCtx, QFakeResult,
    fake_quantize_channels, fake_quantize_tensor, invalid, observed_qparams, straight_through,
};

const CONTEXT: &str = "LearnableFakeQuantize";

/// PyTorch's `_LearnableFakeQuantize` (LSQ): `scale` and `zero_point` are float parameters. In
/// forward the observer, while enabled (`static_enabled`), sets them from what it sees; otherwise
/// the scale is clamped to at least `eps` (2^-23). Symmetric schemes force the zero point to 0.
/// [`FakeQuantizer::backward`] returns the gradients of the input, the scale and the zero point as
/// `_fake_quantize_learnable_per_{tensor,channel}_affine_backward` compute them, with
/// `grad_factor = 1 / sqrt(numel * quant_max)` when `use_grad_scaling`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::{FakeQuantizer, LearnableFakeQuantize};
/// use qobserve::ObserverSpec;
/// let mut lsq = LearnableFakeQuantize::new(ObserverSpec::moving_average_min_max(), 0, 255, 1.0, 0.0, None, true)?;
/// let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1.0f32, 0.5, 2.0]).unwrap();
/// let (_, ctx) = lsq.forward_train(&x)?;
/// let grads = lsq.backward(&ctx, &ArrayD::ones(IxDyn(&[3])))?;
/// assert_eq!(grads.scale.map(|g| g.len()), Some(1));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug)]
pub struct LearnableFakeQuantize {
    observer: Box<dyn Observer>,
    quant_min: i64,
    quant_max: i64,
    qscheme: QScheme,
    ch_axis: i64,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
    use_grad_scaling: bool,
    flags: FakeQuantFlags,
}

impl LearnableFakeQuantize {
    /// `_LearnableFakeQuantize(observer, quant_min, quant_max, scale, zero_point, channel_len,
    /// use_grad_scaling)`: `spec` gives the observer (its quant range is replaced by
    /// `quant_min..=quant_max`, which must be strictly increasing and inside its dtype);
    /// `channel_len` `Some(c)` makes `c` per-channel parameters, `None` one per tensor.
    pub fn new(
        spec: ObserverSpec,
        quant_min: i64,
        quant_max: i64,
        scale: f32,
        zero_point: f32,
        channel_len: Option<usize>,
        use_grad_scaling: bool,
    ) -> QFakeResult<Self> {
        if quant_min >= quant_max {
            return Err(invalid(
                CONTEXT,
                "quant_min, quant_max",
                (quant_min, quant_max),
                "quant_min must be strictly less than quant_max",
            ));
        }
        let mut spec = spec;
        let (args, ch_axis) = match &mut spec {
            ObserverSpec::MinMax { args } | ObserverSpec::MovingAverageMinMax { args, .. } => (args, -1),
            ObserverSpec::PerChannelMinMax { args, ch_axis }
            | ObserverSpec::MovingAveragePerChannelMinMax { args, ch_axis, .. } => (args, *ch_axis),
            other => {
                return Err(invalid(
                    CONTEXT,
                    "observer",
                    other.name(),
                    "must be a min/max or moving-average min/max observer (per tensor or per channel)",
                ));
            }
        };
        let UniformArgs { dtype, qscheme, .. } = *args;
        if quant_min < dtype.min() || quant_max > dtype.max() {
            return Err(invalid(
                CONTEXT,
                "quant_min, quant_max",
                (quant_min, quant_max),
                format!(
                    "out of the range of {dtype} [{}, {}]; give bounds inside it",
                    dtype.min(),
                    dtype.max()
                ),
            ));
        }
        *args = args.quant_range(quant_min, quant_max);
        let channels = match channel_len {
            None => 1,
            Some(0) => return Err(invalid(CONTEXT, "channel_len", 0, "must be a positive integer")),
            Some(c) => c,
        };
        let observer = spec.build()?;
        Ok(Self {
            observer,
            quant_min,
            quant_max,
            qscheme,
            ch_axis,
            scale: vec![scale; channels],
            zero_point: vec![zero_point; channels],
            use_grad_scaling,
            flags: FakeQuantFlags::default(),
        })
    }

    /// The `scale` parameter.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// The `zero_point` parameter (float, learned).
    pub fn zero_point(&self) -> &[f32] {
        &self.zero_point
    }

    /// Replaces the parameters (an optimizer step); lengths must stay as they are.
    pub fn set_qparams(&mut self, scale: Vec<f32>, zero_point: Vec<f32>) -> QFakeResult<()> {
        if scale.len() != self.scale.len() || zero_point.len() != self.zero_point.len() {
            return Err(invalid(
                CONTEXT,
                "scale/zero_point lengths",
                (scale.len(), zero_point.len()),
                format!("must stay {} (the parameters' lengths)", self.scale.len()),
            ));
        }
        self.scale = scale;
        self.zero_point = zero_point;
        Ok(())
    }

    /// `(quant_min, quant_max)`.
    pub fn quant_range(&self) -> (i64, i64) {
        (self.quant_min, self.quant_max)
    }

    /// The emulated dtype.
    pub fn dtype(&self) -> QDType {
        self.observer.spec().args().map_or(QDType::QUInt8, |a| a.dtype)
    }

    /// `extra_repr()`: PyTorch's `_LearnableFakeQuantize` defines none, so its printout shows only the
    /// observer; this gives the learned parameters and flags for reading.
    pub fn extra_repr(&self) -> String {
        format!(
            "fake_quant_enabled={}, static_enabled={}, quant_min={}, quant_max={}, scale={:?}, zero_point={:?}",
            self.flags.fake_quant,
            self.flags.observer,
            self.quant_min,
            self.quant_max,
            self.scale,
            self.zero_point
        )
    }

    /// Resumes the observer and flags of a saved state.
    pub(crate) fn restore(&mut self, observer: Box<dyn Observer>, flags: FakeQuantFlags) {
        self.observer = observer;
        self.flags = flags;
    }

    /// `calculate_qparams()`: the scale clamped to at least eps (as PyTorch, this clamps the
    /// parameter too) and the zero point rounded and clamped to the quant range.
    pub fn calculate_qparams(&mut self) -> (Vec<f32>, Vec<i64>) {
        self.clamp_scale();
        let zp = self
            .zero_point
            .iter()
            .map(|&z| nearbyint(z).clamp(self.quant_min as f32, self.quant_max as f32) as i64)
            .collect();
        (self.scale.clone(), zp)
    }

    fn clamp_scale(&mut self) {
        for s in &mut self.scale {
            // `clamp_(min=eps)`: NaN stays NaN.
            if *s < f32::EPSILON {
                *s = f32::EPSILON;
            }
        }
    }

    fn is_per_channel(&self) -> bool {
        matches!(self.qscheme, QScheme::PerChannelAffine | QScheme::PerChannelSymmetric)
    }

    fn observe(&mut self, x: &ArrayD<f32>) -> QFakeResult<()> {
        self.observer.observe(x.view())?;
        let (scale, zero_point) = observed_qparams(CONTEXT, self.observer.as_ref())?;
        let zero_point: Vec<f32> = zero_point.iter().map(|&z| z as f32).collect();
        // `copy_` broadcasts a one-element source; otherwise the lengths must agree.
        let fit = |dst: &mut Vec<f32>, src: Vec<f32>| -> QFakeResult<()> {
            match (src.len(), dst.len()) {
                (1, _) => dst.iter_mut().for_each(|d| *d = src[0]),
                (a, b) if a == b => *dst = src,
                (a, b) => {
                    return Err(invalid(
                        CONTEXT,
                        "observed channels",
                        a,
                        format!("do not match the {b} parameters; give channel_len = the size along ch_axis"),
                    ));
                }
            }
            Ok(())
        };
        fit(&mut self.scale, scale)?;
        fit(&mut self.zero_point, zero_point)
    }
}

/// `std::nearbyint` in the default rounding mode: ties to even.
fn nearbyint(v: f32) -> f32 {
    v.round_ties_even()
}

/// `static_cast<int64_t>` of a float on x86: NaN and out-of-range values become `i64::MIN`.
fn to_i64(v: f32) -> i64 {
    if v.is_nan() || v.abs() >= 9.223_372e18 { i64::MIN } else { v as i64 }
}

/// One element of `fake_quantize_learnable_{tensor,channel}_grad_kernel_cpu`: `(dx, dscale,
/// dzero_point)`, with `zero_point` already rounded as the per-tensor (integer) or per-channel
/// (float) backward rounds it and `xq` computed by the caller in that kernel's order.
#[allow(clippy::too_many_arguments)]
fn grad_element(
    x: f32,
    dy: f32,
    xq: i64,
    scale: f32,
    inv: f32,
    zero_point: f32,
    q: (i64, i64),
    gf: f32,
) -> (f32, f32, f32) {
    let (qmin, qmax) = q;
    let inside = qmin <= xq && xq <= qmax;
    let dx = dy * f32::from(u8::from(inside));
    if inside {
        // GCC contracts `xfq - x` with `xfq = k * scale` into one fused multiply-add.
        let xfq_minus_x = (xq.clamp(qmin, qmax) as f32 - zero_point).mul_add(scale, -x);
        (dx, dy * xfq_minus_x * inv * gf, 0.0)
    } else {
        let bound = if xq < qmin { qmin as f32 - zero_point } else { qmax as f32 - zero_point };
        (dx, dy * bound * gf, -dy * scale * gf)
    }
}

impl FakeQuantizer for LearnableFakeQuantize {
    fn qparams(&mut self) -> QFakeResult<qcore::QParams> {
        let per_channel = matches!(self.qscheme, QScheme::PerChannelAffine | QScheme::PerChannelSymmetric);
        let (scales, zero_points) = self.calculate_qparams();
        let scales: Vec<f64> = scales.into_iter().map(f64::from).collect();
        Ok(if per_channel {
            qcore::QParams::PerChannel { scales, zero_points, axis: self.ch_axis.max(0) as usize }
        } else {
            qcore::QParams::PerTensor { scale: scales[0], zero_point: zero_points[0] }
        })
    }

    fn quant_range(&self) -> (i64, i64) {
        LearnableFakeQuantize::quant_range(self)
    }

    fn state(&self) -> super::common::FakeQuantState {
        let mut state = super::common::FakeQuantState::of(
            "_LearnableFakeQuantize",
            self.observer.as_ref(),
            (self.quant_min, self.quant_max),
            (self.scale.clone(), self.zero_point.clone()),
            self.flags,
        );
        state.use_grad_scaling = self.use_grad_scaling;
        state
    }

    fn type_name(&self) -> &'static str {
        "_LearnableFakeQuantize"
    }

    fn extra_repr(&self) -> String {
        LearnableFakeQuantize::extra_repr(self)
    }

    fn clone_box(&self) -> Box<dyn FakeQuantizer> {
        Box::new(self.clone())
    }

    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)> {
        if self.flags.observer {
            self.observe(x)?;
        } else {
            self.clamp_scale();
        }
        if !self.flags.fake_quant {
            return Ok((x.clone(), FakeQuantCtx { mask: None, learned: None }));
        }
        if matches!(self.qscheme, QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric) {
            self.zero_point.iter_mut().for_each(|z| *z = 0.0);
        }
        let grad_factor = if self.use_grad_scaling {
            (1.0 / ((x.len() as i64 * self.quant_max) as f64).powf(0.5)) as f32
        } else {
            1.0
        };
        let (qmin, qmax) = (self.quant_min, self.quant_max);
        let (out, mask, axis) = if self.is_per_channel() {
            // `_get_rounded_zero_point(...).to(kInt)`.
            let round = |z: f32| nearbyint(z).clamp(qmin as f32, qmax as f32) as i64;
            let qparams: Vec<(f32, i64)> =
                self.scale.iter().zip(&self.zero_point).map(|(&s, &z)| (s, round(z))).collect();
            let (out, mask, axis) = fake_quantize_channels(CONTEXT, x, self.ch_axis, &qparams, (qmin, qmax))?;
            (out, mask, Some(axis))
        } else {
            // `_get_zero_point_from_tensor(..., is_forward = true)`.
            let zp = to_i64(nearbyint(self.zero_point[0]).max(qmin as f32).min(qmax as f32));
            let (out, mask) = fake_quantize_tensor(CONTEXT, x, (self.scale[0], zp), (qmin, qmax))?;
            (out, mask, None)
        };
        let learned = LearnedCtx {
            input: x.clone(),
            scale: self.scale.clone(),
            zero_point: self.zero_point.clone(),
            axis,
            grad_factor,
        };
        Ok((out, FakeQuantCtx { mask: Some(mask), learned: Some(learned) }))
    }

    fn backward(&self, ctx: &FakeQuantCtx, grad_out: &ArrayD<f32>) -> QFakeResult<FakeQuantGrads> {
        let Some(l) = &ctx.learned else {
            let input = straight_through(CONTEXT, ctx, grad_out)?;
            return Ok(FakeQuantGrads { input, scale: None, zero_point: None });
        };
        if l.input.shape() != grad_out.shape() {
            return Err(invalid(
                CONTEXT,
                "grad_out shape",
                grad_out.shape(),
                format!("must equal the shape of the forward input, {:?}", l.input.shape()),
            ));
        }
        let q = (self.quant_min, self.quant_max);
        let gf = l.grad_factor;
        let mut dx = ArrayD::zeros(l.input.raw_dim());
        let mut dscale = ArrayD::zeros(l.input.raw_dim());
        let mut dzp = ArrayD::zeros(l.input.raw_dim());
        let (scale_grad, zp_grad) = match l.axis {
            None => {
                let s = l.scale[0];
                let inv = 1.0f32 / s;
                // `_get_zero_point_from_tensor(..., is_forward = false)`: `zp + 0.5`, clamped, truncated.
                let zp = to_i64((l.zero_point[0] + 0.5).max(q.0 as f32).min(q.1 as f32));
                let zpf = zp as f32;
                Zip::from(&mut dx).and(&mut dscale).and(&mut dzp).and(&l.input).and(grad_out).for_each(
                    |dx, ds, dz, &x, &dy| {
                        // Contracted by GCC into a fused multiply-add, as `xfq - x` below.
                        let xq = to_i64(nearbyint(x.mul_add(inv, zpf)));
                        (*dx, *ds, *dz) = grad_element(x, dy, xq, s, inv, zpf, q, gf);
                    },
                );
                let sum = |a: &ArrayD<f32>| torch_sum(a.as_slice().expect("standard layout"));
                (vec![sum(&dscale)], vec![sum(&dzp)])
            }
            Some(axis) => {
                for (c, ((((mut dx, mut ds), mut dz), x), dy)) in dx
                    .axis_iter_mut(Axis(axis))
                    .zip(dscale.axis_iter_mut(Axis(axis)))
                    .zip(dzp.axis_iter_mut(Axis(axis)))
                    .zip(l.input.axis_iter(Axis(axis)))
                    .zip(grad_out.axis_iter(Axis(axis)))
                    .enumerate()
                {
                    let s = l.scale[c];
                    let inv = 1.0f32 / s;
                    // `_get_rounded_zero_point`: round half to even, clamp, kept as float.
                    let zp = nearbyint(l.zero_point[c]).clamp(q.0 as f32, q.1 as f32);
                    Zip::from(&mut dx).and(&mut ds).and(&mut dz).and(&x).and(&dy).for_each(
                        |dx, ds, dz, &x, &dy| {
                            let xq = to_i64(nearbyint(x.mul_add(inv, zp)));
                            (*dx, *ds, *dz) = grad_element(x, dy, xq, s, inv, zp, q, gf);
                        },
                    );
                }
                (channel_sums(&dscale, axis), channel_sums(&dzp, axis))
            }
        };
        let vec1 = |v: Vec<f32>| ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v).expect("1-D");
        Ok(FakeQuantGrads { input: dx, scale: Some(vec1(scale_grad)), zero_point: Some(vec1(zp_grad)) })
    }

    fn flags(&self) -> &FakeQuantFlags {
        &self.flags
    }

    fn learned_mut(&mut self) -> Vec<(&'static str, &mut Vec<f32>)> {
        vec![("scale", &mut self.scale), ("zero_point", &mut self.zero_point)]
    }

    fn flags_mut(&mut self) -> &mut FakeQuantFlags {
        &mut self.flags
    }
}

/// `t.sum(all axes but axis)`: with the channel axis first, each channel is one contiguous run
/// summed in ATen's inner-reduction order ([`torch_sum`]); otherwise ATen reduces the outer
/// rows in order, each channel's accumulator starting at zero.
fn channel_sums(t: &ArrayD<f32>, axis: usize) -> Vec<f32> {
    let data = t.as_slice().expect("standard layout");
    let shape = t.shape();
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    if outer == 1 {
        return data.chunks_exact(inner.max(1)).map(torch_sum).collect();
    }
    let mut sums = vec![0.0f32; channels];
    for row in data.chunks_exact(channels * inner) {
        for (c, run) in row.chunks_exact(inner).enumerate() {
            sums[c] += torch_sum(run);
        }
    }
    sums
}

impl Clone for LearnableFakeQuantize {
    fn clone(&self) -> Self {
        let observer = self.observer.state().build().expect("an observer's own state rebuilds it");
        Self { observer, scale: self.scale.clone(), zero_point: self.zero_point.clone(), ..*self }
    }
}
