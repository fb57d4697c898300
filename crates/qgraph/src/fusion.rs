//! Folding eval-mode batch norm into the preceding convolution or linear layer, with PyTorch's
//! arithmetic (`torch.nn.utils.fusion.fuse_conv_bn_weights` / `fuse_linear_bn_weights`).
//!
//! Every step is a separate float32 rounding, in PyTorch's order, so the folded weights and biases
//! are PyTorch's bit for bit on any CPU. PyTorch's CPU `torch.rsqrt` is `1.0f / sqrtf(x)` (ATen's
//! `Vectorized<float>::rsqrt` divides one by the square root on every capability, and its scalar
//! tail does the same): two correctly rounded steps, not the correctly rounded reciprocal square
//! root.

use ndarray::{Array1, ArrayD, ArrayView1, ArrayViewD, Axis, Zip};

use crate::{GraphError, GraphResult};

/// The eval-mode parameters of a `BatchNorm{1,2,3}d`: running statistics, `eps`, and the optional
/// affine weight (gamma) and bias (beta).
#[derive(Debug, Clone, Copy)]
pub struct BatchNormParams<'a> {
    /// `running_mean`, one value per feature.
    pub running_mean: ArrayView1<'a, f32>,
    /// `running_var`, one value per feature.
    pub running_var: ArrayView1<'a, f32>,
    /// `eps` (PyTorch default 1e-5); added in float32, as a Python float meets a float32 tensor.
    pub eps: f64,
    /// `weight` (gamma); `None` for `affine=False`, taken as 1.
    pub weight: Option<ArrayView1<'a, f32>>,
    /// `bias` (beta); `None` for `affine=False`, taken as 0.
    pub bias: Option<ArrayView1<'a, f32>>,
}

impl BatchNormParams<'_> {
    /// The number of features, checking that every given vector has it.
    fn features(&self, context: &'static str) -> GraphResult<usize> {
        let n = self.running_mean.len();
        let lengths = [
            ("running_var length", Some(self.running_var.len())),
            ("batch-norm weight length", self.weight.map(|w| w.len())),
            ("batch-norm bias length", self.bias.map(|b| b.len())),
        ];
        for (what, len) in lengths {
            if let Some(got) = len.filter(|&got| got != n) {
                return Err(GraphError::ShapeMismatch { context, what, got, expected: n });
            }
        }
        Ok(n)
    }

    /// `rsqrt(running_var + eps)` per feature as PyTorch computes it: `1.0f / sqrtf(var + eps)`.
    fn inv_std(&self) -> Array1<f32> {
        let eps = self.eps as f32;
        self.running_var.mapv(|v| 1.0 / (v + eps).sqrt())
    }

    /// gamma (1 when absent) and beta (0 when absent).
    fn affine(&self, n: usize) -> (Array1<f32>, Array1<f32>) {
        let weight = self.weight.map_or_else(|| Array1::ones(n), |w| w.to_owned());
        let bias = self.bias.map_or_else(|| Array1::zeros(n), |b| b.to_owned());
        (weight, bias)
    }
}

/// Folds batch norm into a convolution's weight (`out, in/groups, k...`) and bias, as
/// `fuse_conv_bn_weights`: `W' = W * (gamma * rsqrt(var + eps))` per output channel (per axis 1
/// for a transposed convolution) and `b' = (b - mean) * rsqrt(var + eps) * gamma + beta`, with a
/// missing conv bias taken as 0.
pub fn fuse_conv_bn_weights(
    conv_weight: ArrayViewD<'_, f32>,
    conv_bias: Option<ArrayView1<'_, f32>>,
    bn: &BatchNormParams<'_>,
    transpose: bool,
) -> GraphResult<(ArrayD<f32>, Array1<f32>)> {
    const CONTEXT: &str = "fuse_conv_bn_weights";
    let n = bn.features(CONTEXT)?;
    let channel_axis = usize::from(transpose);
    if conv_weight.ndim() < 3 {
        let what = "convolution weight rank";
        return Err(GraphError::ShapeMismatch {
            context: CONTEXT,
            what,
            got: conv_weight.ndim(),
            expected: 3,
        });
    }
    let channels = conv_weight.len_of(Axis(channel_axis));
    if channels != n {
        let what =
            if transpose { "transposed convolution weight dim 1" } else { "convolution output channels" };
        return Err(GraphError::ShapeMismatch { context: CONTEXT, what, got: channels, expected: n });
    }
    let bias = bias_or_zeros(CONTEXT, conv_bias, n)?;
    let inv_std = bn.inv_std();
    let (gamma, beta) = bn.affine(n);
    let scale = &gamma * &inv_std;
    let mut weight = conv_weight.to_owned();
    for (mut lane, &s) in weight.axis_iter_mut(Axis(channel_axis)).zip(&scale) {
        lane.mapv_inplace(|w| w * s);
    }
    let fused_bias = Zip::from(&bias)
        .and(&bn.running_mean)
        .and(&inv_std)
        .and(&gamma)
        .and(&beta)
        .map_collect(|&b, &mean, &inv, &g, &beta| (b - mean) * inv * g + beta);
    Ok((weight, fused_bias))
}

/// Folds batch norm into a linear layer's weight (`out, in`) and bias, as
/// `fuse_linear_bn_weights`: `scale = gamma * rsqrt(var + eps)`, `W' = W * scale` per output
/// feature, `b' = (b - mean) * scale + beta`. A batch norm of one feature applies to every output.
pub fn fuse_linear_bn_weights(
    linear_weight: ArrayViewD<'_, f32>,
    linear_bias: Option<ArrayView1<'_, f32>>,
    bn: &BatchNormParams<'_>,
) -> GraphResult<(ArrayD<f32>, Array1<f32>)> {
    const CONTEXT: &str = "fuse_linear_bn_weights";
    let n = bn.features(CONTEXT)?;
    if linear_weight.ndim() != 2 {
        let what = "linear weight rank";
        return Err(GraphError::ShapeMismatch {
            context: CONTEXT,
            what,
            got: linear_weight.ndim(),
            expected: 2,
        });
    }
    let out_features = linear_weight.len_of(Axis(0));
    if n != out_features && n != 1 {
        let what = "batch-norm features (must equal out_features, or be 1)";
        return Err(GraphError::ShapeMismatch { context: CONTEXT, what, got: n, expected: out_features });
    }
    let bias = bias_or_zeros(CONTEXT, linear_bias, out_features)?;
    let (gamma, beta) = bn.affine(n);
    let scale = &gamma * &bn.inv_std();
    let per_output = |v: &Array1<f32>, j: usize| if n == 1 { v[0] } else { v[j] };
    let mut weight = linear_weight.to_owned();
    for (j, mut row) in weight.axis_iter_mut(Axis(0)).enumerate() {
        let s = per_output(&scale, j);
        row.mapv_inplace(|w| w * s);
    }
    let fused_bias = Array1::from_shape_fn(out_features, |j| {
        (bias[j] - per_output(&bn.running_mean.to_owned(), j)) * per_output(&scale, j) + per_output(&beta, j)
    });
    Ok((weight, fused_bias))
}

/// The given bias, checked against `n`, or zeros.
fn bias_or_zeros(
    context: &'static str,
    bias: Option<ArrayView1<'_, f32>>,
    n: usize,
) -> GraphResult<Array1<f32>> {
    match bias {
        Some(b) if b.len() != n => {
            Err(GraphError::ShapeMismatch { context, what: "bias length", got: b.len(), expected: n })
        }
        Some(b) => Ok(b.to_owned()),
        None => Ok(Array1::zeros(n)),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, ArrayD, IxDyn};

    use super::*;

    fn bn(n: usize) -> (Array1<f32>, Array1<f32>) {
        (Array1::zeros(n), Array1::ones(n))
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_size() {
        let (mean, var) = bn(4);
        let short_var = Array1::<f32>::ones(3);
        let params = BatchNormParams {
            running_mean: mean.view(),
            running_var: var.view(),
            eps: 1e-5,
            weight: None,
            bias: None,
        };
        let conv = ArrayD::<f32>::zeros(IxDyn(&[5, 2, 3, 3]));
        let err = fuse_conv_bn_weights(conv.view(), None, &params, false).unwrap_err();
        assert_eq!(
            err,
            GraphError::ShapeMismatch {
                context: "fuse_conv_bn_weights",
                what: "convolution output channels",
                got: 5,
                expected: 4
            }
        );
        let bad = BatchNormParams { running_var: short_var.view(), ..params };
        let conv4 = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 3, 3]));
        assert!(
            fuse_conv_bn_weights(conv4.view(), None, &bad, false)
                .unwrap_err()
                .to_string()
                .contains("running_var")
        );
        let bias = Array1::<f32>::zeros(2);
        let err = fuse_conv_bn_weights(conv4.view(), Some(bias.view()), &params, false).unwrap_err();
        assert!(err.to_string().contains("bias length is 2 but must be 4"), "{err}");
        let linear = ArrayD::<f32>::zeros(IxDyn(&[6, 3]));
        assert!(fuse_linear_bn_weights(linear.view(), None, &params).is_err());
        assert!(fuse_linear_bn_weights(conv4.view(), None, &params).is_err());
    }

    #[test]
    fn identity_batch_norm_keeps_weights_up_to_eps() {
        let (mean, var) = bn(2);
        let params = BatchNormParams {
            running_mean: mean.view(),
            running_var: var.view(),
            eps: 0.0,
            weight: None,
            bias: None,
        };
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1]), vec![0.5f32, -2.0]).unwrap();
        let (fw, fb) = fuse_conv_bn_weights(w.view(), None, &params, false).unwrap();
        assert_eq!(fw, w);
        assert_eq!(fb, Array1::<f32>::zeros(2));
    }
}
