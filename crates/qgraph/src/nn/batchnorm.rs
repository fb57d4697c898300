//! `nn.BatchNorm1d` / `2d` / `3d` for inference: one [`BatchNorm`] type normalising with its
//! running statistics.

use ndarray::{ArrayD, ArrayView1, Ix1, IxDyn};
use qkernels::{Isa, float};
use serde::{Deserialize, Serialize};

use super::args::py_bool;
use super::conv::check_shape;
use crate::fusion::BatchNormParams;
use crate::record::Record;
use crate::value::standard_layout;
use crate::{GraphError, GraphResult, Module, Value, invalid};

const NAMES: [&str; 3] = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"];

/// The constructor arguments of a batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchNormOptions {
    /// Spatial dimensions of the `N, C, ...` input it is made for: 1 (`BatchNorm1d`, which also
    /// takes `[N, C]`), 2 or 3.
    pub dims: usize,
    /// Features (channels) C.
    pub num_features: usize,
    /// Added to the variance.
    pub eps: f64,
    /// Running-average factor (kept for printing and saving; training is not supported).
    pub momentum: f64,
    /// True if the layer has `weight` and `bias`.
    pub affine: bool,
}

impl BatchNormOptions {
    /// PyTorch's class name.
    pub fn type_name(&self) -> &'static str {
        NAMES[self.dims.clamp(1, 3) - 1]
    }

    /// Checks the options: 1-3 dimensions.
    pub(crate) fn validate(&self) -> GraphResult<()> {
        if !(1..=3).contains(&self.dims) {
            return Err(invalid("BatchNorm", "dims", self.dims, "batch norm takes 1, 2 or 3 dimensions"));
        }
        Ok(())
    }

    /// Checks an input shape: `[N, C]` or `[N, C, L]` for 1d, `[N, C, H, W]` for 2d, and
    /// `[N, C, D, H, W]` for 3d, with C = `num_features`.
    pub(crate) fn check_input(&self, shape: &[usize]) -> GraphResult<()> {
        let name = self.type_name();
        let rank_ok = match self.dims {
            1 => shape.len() == 2 || shape.len() == 3,
            d => shape.len() == d + 2,
        };
        if !rank_ok {
            let expected = if self.dims == 1 { "2D or 3D" } else { ["", "", "4D", "5D"][self.dims] };
            return Err(invalid(name, "input shape", shape, format!("expected {expected} input")));
        }
        if shape[1] != self.num_features {
            return Err(GraphError::ShapeMismatch {
                context: name,
                what: "input channels",
                got: shape[1],
                expected: self.num_features,
            });
        }
        Ok(())
    }
}

macro_rules! batch_norm_constructor {
    ($name:ident, $dims:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl $name {
            /// `num_features` channels with PyTorch's defaults: eps 1e-5, momentum 0.1, affine
            /// (weight 1, bias 0), running mean 0 and variance 1, in training mode.
            #[allow(clippy::new_ret_no_self)]
            pub fn new(num_features: usize) -> BatchNorm {
                BatchNorm::with_options(BatchNormOptions {
                    dims: $dims,
                    num_features,
                    eps: 1e-5,
                    momentum: 0.1,
                    affine: true,
                })
            }
        }
    };
}

batch_norm_constructor!(BatchNorm1d, 1, "`nn.BatchNorm1d(n)`: [`BatchNorm1d::new`] makes the layer.");
batch_norm_constructor!(
    BatchNorm2d,
    2,
    "`nn.BatchNorm2d(n)`: [`BatchNorm2d::new`] makes the layer.\n\n```\nuse qgraph::Module;\nuse qgraph::nn::BatchNorm2d;\nlet bn = BatchNorm2d::new(16).eps(1e-3);\nassert_eq!(\n    (&bn as &dyn Module).to_string(),\n    \"BatchNorm2d(16, eps=0.001, momentum=0.1, affine=True, bias=True, track_running_stats=True)\"\n);\n```"
);
batch_norm_constructor!(BatchNorm3d, 3, "`nn.BatchNorm3d(n)`: [`BatchNorm3d::new`] makes the layer.");

/// `nn.BatchNorm{1,2,3}d` for inference: `(x - running_mean) / sqrt(running_var + eps) * weight
/// + bias` per channel. Built in training mode, as PyTorch, where its forward is an error (batch
/// statistics are not supported): call [`eval`](crate::eval) first.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    options: BatchNormOptions,
    weight: Option<ArrayD<f32>>,
    bias: Option<ArrayD<f32>>,
    running_mean: ArrayD<f32>,
    running_var: ArrayD<f32>,
    training: bool,
}

fn vector(x: &ArrayD<f32>) -> ArrayView1<'_, f32> {
    x.view().into_dimensionality::<Ix1>().expect("parameters are checked to be vectors")
}

fn slice(x: &ArrayD<f32>) -> &[f32] {
    x.as_slice().expect("parameters are kept in standard layout")
}

impl BatchNorm {
    /// The options.
    pub fn options(&self) -> &BatchNormOptions {
        &self.options
    }

    /// Features C.
    pub fn num_features(&self) -> usize {
        self.options.num_features
    }

    /// Spatial dimensions (1, 2 or 3).
    pub fn dims(&self) -> usize {
        self.options.dims
    }

    /// A layer with `options` (statistics 0 / 1, weight 1, bias 0), in training mode.
    pub fn with_options(options: BatchNormOptions) -> Self {
        let n = options.num_features;
        let vec = |v: f32| ArrayD::from_elem(IxDyn(&[n]), v);
        Self {
            options,
            weight: options.affine.then(|| vec(1.0)),
            bias: options.affine.then(|| vec(0.0)),
            running_mean: vec(0.0),
            running_var: vec(1.0),
            training: true,
        }
    }

    /// With `eps` (added to the variance).
    pub fn eps(mut self, eps: f64) -> Self {
        self.options.eps = eps;
        self
    }

    /// With `momentum` (printed and saved; running statistics are not updated here).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.options.momentum = momentum;
        self
    }

    /// With or without `weight` and `bias` (reset to 1 and 0).
    pub fn affine(self, affine: bool) -> Self {
        let mut m = Self::with_options(BatchNormOptions { affine, ..self.options });
        m.running_mean = self.running_mean;
        m.running_var = self.running_var;
        m.training = self.training;
        m
    }

    /// gamma, if affine.
    pub fn weight(&self) -> Option<&ArrayD<f32>> {
        self.weight.as_ref()
    }

    /// beta, if affine.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }

    /// The running mean.
    pub fn running_mean(&self) -> &ArrayD<f32> {
        &self.running_mean
    }

    /// The running variance.
    pub fn running_var(&self) -> &ArrayD<f32> {
        &self.running_var
    }

    /// Replaces the statistics and (for an affine layer) `weight` and `bias`, all `[C]`.
    pub fn set_params(
        &mut self,
        running_mean: ArrayD<f32>,
        running_var: ArrayD<f32>,
        weight_bias: Option<(ArrayD<f32>, ArrayD<f32>)>,
    ) -> GraphResult<()> {
        let name = self.options.type_name();
        let n = [self.options.num_features];
        check_shape(name, "running_mean", running_mean.shape(), &n)?;
        check_shape(name, "running_var", running_var.shape(), &n)?;
        match (&weight_bias, self.options.affine) {
            (Some((w, b)), true) => {
                check_shape(name, "weight", w.shape(), &n)?;
                check_shape(name, "bias", b.shape(), &n)?;
            }
            (None, false) => {}
            (given, affine) => {
                return Err(invalid(
                    name,
                    "weight and bias",
                    if given.is_some() { "given" } else { "missing" },
                    format!("the layer has affine={}", py_bool(affine)),
                ));
            }
        }
        let own = |x: ArrayD<f32>| x.as_standard_layout().into_owned();
        self.running_mean = own(running_mean);
        self.running_var = own(running_var);
        if let Some((w, b)) = weight_bias {
            self.weight = Some(own(w));
            self.bias = Some(own(b));
        }
        Ok(())
    }

    /// The eval-mode parameters, for folding into a convolution or linear layer.
    pub fn fold_params(&self) -> BatchNormParams<'_> {
        BatchNormParams {
            running_mean: vector(&self.running_mean),
            running_var: vector(&self.running_var),
            eps: self.options.eps,
            weight: self.weight.as_ref().map(vector),
            bias: self.bias.as_ref().map(vector),
        }
    }

    /// The parameters for `qkernels::norm` (weight 1 and bias 0 when not affine).
    pub(crate) fn with_kernel_params<T>(
        &self,
        f: impl FnOnce(&qkernels::norm::BatchNormParams<'_>) -> T,
    ) -> T {
        let n = self.options.num_features;
        let (ones, zeros) = (vec![1.0f32; n], vec![0.0f32; n]);
        let params = qkernels::norm::BatchNormParams {
            weight: self.weight.as_ref().map_or(&ones, |w| slice(w)),
            bias: self.bias.as_ref().map_or(&zeros, |b| slice(b)),
            mean: slice(&self.running_mean),
            var: slice(&self.running_var),
            eps: self.options.eps,
        };
        f(&params)
    }

    /// Rebuilds a saved batch norm (in eval mode).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: BatchNormOptions = record.config()?;
        options.validate()?;
        let n = [options.num_features];
        let t = &record.tensors;
        let (weight, bias) = if options.affine {
            (Some(t.shaped::<f32>("weight", &n)?), Some(t.shaped::<f32>("bias", &n)?))
        } else {
            (None, None)
        };
        Ok(Self {
            options,
            weight,
            bias,
            running_mean: t.shaped("running_mean", &n)?,
            running_var: t.shaped("running_var", &n)?,
            training: false,
        })
    }
}

impl Module for BatchNorm {
    fn type_name(&self) -> &str {
        self.options.type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let name = self.options.type_name();
        let x = input.into_float(name)?;
        if self.training {
            return Err(invalid(
                name,
                "training",
                true,
                "batch statistics are not supported at inference; call eval(&mut model) first so the \
                 running statistics are used",
            ));
        }
        self.options.check_input(x.shape())?;
        let mut x = standard_layout(x);
        let shape = x.shape().to_vec();
        float::batch_norm_in_place(
            x.as_slice_mut().expect("standard layout"),
            &shape,
            slice(&self.running_mean),
            slice(&self.running_var),
            self.weight.as_ref().map(slice),
            self.bias.as_ref().map(slice),
            self.options.eps,
            Isa::active(),
        )?;
        Ok(Value::Float(x))
    }

    fn extra_repr(&self) -> String {
        let o = &self.options;
        format!(
            "{}, eps={}, momentum={}, affine={}, bias={}, track_running_stats=True",
            o.num_features,
            qcore::python_float_repr(o.eps),
            qcore::python_float_repr(o.momentum),
            py_bool(o.affine),
            py_bool(o.affine)
        )
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let mut p = Vec::new();
        p.extend(self.weight.as_ref().map(|w| ("weight", w)));
        p.extend(self.bias.as_ref().map(|b| ("bias", b)));
        p.push(("running_mean", &self.running_mean));
        p.push(("running_var", &self.running_var));
        p
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let mut p = Vec::new();
        p.extend(self.weight.as_mut().map(|w| ("weight", w)));
        p.extend(self.bias.as_mut().map(|b| ("bias", b)));
        p.push(("running_mean", &mut self.running_mean));
        p.push(("running_var", &mut self.running_var));
        p
    }

    training_field!();

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.options).expect("plain data")
    }
}
