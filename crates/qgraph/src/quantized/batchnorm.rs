//! `nnq.BatchNorm2d/3d` and `nniq.BNReLU2d/3d`: batch norm on quint8 channels-last activations,
//! on `qkernels::norm`.

use ndarray::{ArrayD, IxDyn};
use qkernels::Isa;
use qkernels::elementwise::PerTensor;
use qkernels::norm::FusedBatchNorm;
use serde::{Deserialize, Serialize};

use super::weighted::PerInputCache;
use crate::nn::{BatchNorm, BatchNorm2d, BatchNorm3d, BatchNormOptions};
use crate::outq::OutQ;
use crate::record::{Record, TensorView};
use crate::value::QuantTensor;
use crate::{GraphResult, Module, Value, invalid};

/// What a quantized batch norm saves besides its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuantizedBatchNormConfig {
    dims: usize,
    num_features: usize,
    eps: f64,
    relu: bool,
    scale: f64,
    zero_point: i64,
}

/// A quantized batch norm (`QuantizedBatchNorm2d/3d`, `QuantizedBNReLU2d/3d`): quint8 in, quint8
/// out with its own scale and zero point, PyTorch's `quantized::batch_norm` bit for bit.
///
/// ```
/// use qgraph::nn::BatchNorm2d;
/// use qgraph::quantized::QuantizedBatchNorm;
/// use qgraph::Module;
/// use qkernels::elementwise::PerTensor;
/// let q = QuantizedBatchNorm::from_float(&BatchNorm2d::new(16), false, PerTensor::new(0.5, 3))?;
/// assert_eq!(
///     (&q as &dyn Module).to_string(),
///     "QuantizedBatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
/// );
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedBatchNorm {
    /// The float layer's parameters (momentum as PyTorch's `from_float` leaves it: 0.1).
    bn: BatchNorm,
    relu: bool,
    out_q: PerTensor,
    folded: PerInputCache<FusedBatchNorm>,
    type_name: &'static str,
}

impl QuantizedBatchNorm {
    /// Quantizes an eval-mode `BatchNorm2d` / `BatchNorm3d` (PyTorch has no quantized
    /// `BatchNorm1d`), with a fused ReLU if `relu`, and output parameters `out_q`.
    pub fn from_float(bn: &BatchNorm, relu: bool, out_q: PerTensor) -> GraphResult<Self> {
        OutQ::new(out_q)?;
        let o = bn.options();
        let mut copy = match o.dims {
            2 => BatchNorm2d::new(o.num_features),
            3 => BatchNorm3d::new(o.num_features),
            d => {
                return Err(invalid(
                    "QuantizedBatchNorm",
                    "dims",
                    d,
                    "PyTorch quantizes BatchNorm2d and BatchNorm3d only; give BatchNorm1d the qconfig None",
                ));
            }
        }
        .eps(o.eps);
        // PyTorch's quantized batch norm is affine: a layer without weight and bias gets 1 and 0.
        let ones = || ArrayD::from_elem(IxDyn(&[o.num_features]), 1.0f32);
        let weight = bn.weight().cloned().unwrap_or_else(ones);
        let bias = bn.bias().cloned().unwrap_or_else(|| ones() * 0.0);
        let weight_bias = Some((weight, bias));
        copy.set_params(bn.running_mean().clone(), bn.running_var().clone(), weight_bias)?;
        copy.set_training(false);
        let type_name = match (o.dims, relu) {
            (2, false) => "QuantizedBatchNorm2d",
            (2, true) => "QuantizedBNReLU2d",
            (_, false) => "QuantizedBatchNorm3d",
            (_, true) => "QuantizedBNReLU3d",
        };
        Ok(Self { bn: copy, relu, out_q, folded: PerInputCache::default(), type_name })
    }

    /// The float parameters.
    pub fn float(&self) -> &BatchNorm {
        &self.bn
    }

    /// True with a fused ReLU.
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// The output scale.
    pub fn scale(&self) -> f64 {
        self.out_q.scale
    }

    /// The output zero point.
    pub fn zero_point(&self) -> i64 {
        self.out_q.zero_point
    }

    /// Rebuilds a saved quantized batch norm.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: QuantizedBatchNormConfig = record.config()?;
        let t = &record.tensors;
        let n = [c.num_features];
        let options = BatchNormOptions {
            dims: c.dims,
            num_features: c.num_features,
            eps: c.eps,
            momentum: 0.1,
            affine: true,
        };
        options.validate()?;
        // The tensors first: they exist in the file, so their sizes are real.
        let (w, b) = (t.shaped::<f32>("weight", &n)?, t.shaped::<f32>("bias", &n)?);
        let (mean, var) = (t.shaped("running_mean", &n)?, t.shaped("running_var", &n)?);
        let mut bn = BatchNorm::with_options(options);
        bn.set_params(mean, var, Some((w, b)))?;
        Self::from_float(&bn, c.relu, PerTensor::new(c.scale, c.zero_point))
    }

    fn run(&self, x: QuantTensor) -> GraphResult<QuantTensor> {
        self.bn.options().check_input(x.shape())?;
        let in_q = x.qparams();
        let folded = self.folded.get(in_q, || {
            self.bn.with_kernel_params(|p| Ok(FusedBatchNorm::new(p, in_q, self.out_q, self.relu)?))
        })?;
        let mut out = vec![0u8; x.data().len()];
        folded.run(x.data(), &mut out, Isa::active())?;
        QuantTensor::new(out, x.shape().to_vec(), self.out_q)
    }
}

impl Module for QuantizedBatchNorm {
    quantized_forward!();

    fn extra_repr(&self) -> String {
        // PyTorch's quantized batch norm is always affine with momentum 0.1 and prints as the
        // float layer.
        let o = self.bn.options();
        format!(
            "{}, eps={}, momentum=0.1, affine=True, bias=True, track_running_stats=True",
            o.num_features,
            qcore::python_float_repr(o.eps)
        )
    }

    fn config(&self) -> serde_json::Value {
        let o = self.bn.options();
        let config = QuantizedBatchNormConfig {
            dims: o.dims,
            num_features: o.num_features,
            eps: o.eps,
            relu: self.relu,
            scale: self.out_q.scale,
            zero_point: self.out_q.zero_point,
        };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.bn.params().into_iter().map(|(k, v)| (k.to_string(), TensorView::F32(v.view()))).collect()
    }
}
