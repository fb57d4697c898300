//! `nn.Linear`: `y = x W^T + b` on the last dimension.

use ndarray::{ArrayD, IxDyn};
use qkernels::Isa;
use qkernels::float::Matrix;
use serde::{Deserialize, Serialize};

use super::args::py_bool;
use super::conv::{check_weight_bias, read_weight_bias, weight_bias_params, weight_bias_params_mut};
use super::init::{default_bound, uniform};
use crate::record::Record;
use crate::{GraphError, GraphResult, Module, Value, memory};

/// The constructor arguments of a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearOptions {
    /// Input features (the last dimension of the input).
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// True if the layer has a bias.
    pub bias: bool,
}

impl LinearOptions {
    /// Checks a `[*, in_features]` input shape.
    pub(crate) fn check_input(&self, context: &'static str, shape: &[usize]) -> GraphResult<()> {
        match shape.last() {
            Some(&f) if f == self.in_features => Ok(()),
            last => Err(GraphError::ShapeMismatch {
                context,
                what: "input features (last dimension)",
                got: last.copied().unwrap_or(0),
                expected: self.in_features,
            }),
        }
    }
}

/// `nn.Linear(in_features, out_features, bias)` in f32, in training mode when built (as PyTorch).
///
/// ```
/// use qgraph::nn::Linear;
/// use qgraph::{Module, Value};
/// let linear = Linear::new(16, 10, true);
/// assert_eq!((&linear as &dyn Module).to_string(), "Linear(in_features=16, out_features=10, bias=True)");
/// let y = linear.forward(Value::from(ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 16]))))?;
/// assert_eq!(y.shape()?, &[2, 10]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    options: LinearOptions,
    weight: ArrayD<f32>,
    bias: Option<ArrayD<f32>>,
    training: bool,
}

impl Linear {
    /// A layer with PyTorch's default initialisation bounds, drawn from the
    /// [`manual_seed`](super::manual_seed) stream.
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Self {
        let bound = default_bound(in_features);
        let weight = uniform(&[out_features, in_features], bound);
        let bias = bias.then(|| uniform(&[out_features], bound));
        Self {
            options: LinearOptions { in_features, out_features, bias: bias.is_some() },
            weight,
            bias,
            training: true,
        }
    }

    /// The options.
    pub fn options(&self) -> &LinearOptions {
        &self.options
    }

    /// The weight `[out_features, in_features]`.
    pub fn weight(&self) -> &ArrayD<f32> {
        &self.weight
    }

    /// The bias `[out_features]`, if any.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.options.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.options.out_features
    }

    /// Replaces weight and bias (shapes checked; a bias may be added or removed).
    pub fn set_weight_bias(&mut self, weight: ArrayD<f32>, bias: Option<ArrayD<f32>>) -> GraphResult<()> {
        let o = self.options;
        self.bias = check_weight_bias("Linear", weight.shape(), &[o.out_features, o.in_features], bias)?;
        self.options.bias = self.bias.is_some();
        self.weight = weight.as_standard_layout().into_owned();
        Ok(())
    }

    /// Rebuilds a saved layer (in eval mode).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: LinearOptions = record.config()?;
        let shape = [options.out_features, options.in_features];
        let (weight, bias) = read_weight_bias(&record.tensors, &shape, options.bias)?;
        Ok(Self { options, weight, bias, training: false })
    }

    fn run(&self, x: ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
        self.options.check_input("Linear", x.shape())?;
        let (k, n) = (self.options.in_features, self.options.out_features);
        let mut out_shape = x.shape().to_vec();
        *out_shape.last_mut().expect("rank checked") = n;
        let m: usize = x.shape()[..x.ndim() - 1].iter().product();
        let (x, w) = (x.as_standard_layout(), self.weight.as_standard_layout());
        let mut out = memory::zeroed("Linear", &out_shape)?;
        if let Some(b) = &self.bias {
            let b = b.as_slice().expect("standard layout");
            out.chunks_mut(n.max(1)).for_each(|row| row.copy_from_slice(b));
        }
        // out = x W^T, each element one multiply-add chain from its bias over the inputs in order.
        qkernels::float::sgemm(
            m,
            n,
            k,
            Matrix::row_major(x.as_slice().expect("standard layout"), k),
            Matrix::transposed(w.as_slice().expect("standard layout"), k),
            &mut out,
            n,
            self.bias.is_some(),
            Isa::active(),
        )?;
        Ok(ArrayD::from_shape_vec(IxDyn(&out_shape), out).expect("m x n"))
    }
}

impl Module for Linear {
    fn type_name(&self) -> &str {
        "Linear"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("Linear")?;
        Ok(Value::Float(self.run(x)?))
    }

    fn extra_repr(&self) -> String {
        let o = self.options;
        format!("in_features={}, out_features={}, bias={}", o.in_features, o.out_features, py_bool(o.bias))
    }

    weight_bias_layer!();
}
