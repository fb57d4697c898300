//! Batch-norm statistics for the data-free steps of Nagel et al. (2019): each layer's
//! pre-activation per output channel is taken as `N(β, γ²)` from the batch norm that follows it,
//! read before folding and followed through equalization and high-bias absorption.

use std::collections::BTreeMap;

use super::cle::channel_range;
use super::layer::{self, Accept};
use crate::nn::BatchNorm;
use crate::{GraphResult, Module};

/// The activation after a layer's batch norm, as far as the data-free steps need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation: the next layer sees the batch norm's output.
    Identity,
    /// `ReLU`: `max(z, 0)`.
    ReLU,
    /// `ReLU6`: `min(max(z, 0), 6)`.
    ReLU6,
}

impl Activation {
    /// The activation of a module class name (`"ReLU"`, `"ReLU6"`), if it is one.
    pub fn of_type_name(type_name: &str) -> Option<Self> {
        match type_name {
            "ReLU" => Some(Activation::ReLU),
            "ReLU6" => Some(Activation::ReLU6),
            "Identity" => Some(Activation::Identity),
            _ => None,
        }
    }

    /// This activation followed by `next` (ReLU then ReLU6 clips like ReLU6, and so on).
    pub fn then(self, next: Activation) -> Activation {
        match (self, next) {
            (Activation::Identity, a) | (a, Activation::Identity) => a,
            (Activation::ReLU6, _) | (_, Activation::ReLU6) => Activation::ReLU6,
            (Activation::ReLU, Activation::ReLU) => Activation::ReLU,
        }
    }

    /// `E[act(z)]` for `z ~ N(mean, std²)` (`std ≥ 0`), in closed form (the paper's equation
    /// for a clipped normal): `E[ReLU(z)] = std·φ(mean/std) + mean·Φ(mean/std)` with `φ`, `Φ`
    /// the standard normal density and distribution; `ReLU6(z) = ReLU(z) − ReLU(z − 6)` gives
    /// the upper clip; the identity gives `mean`. With `std = 0`, `act(mean)`.
    ///
    /// ```
    /// use qgraph::equalize::Activation;
    /// // Half of N(0, 1) is cut off: E[ReLU(z)] = φ(0) = 1 / sqrt(2π).
    /// let m = Activation::ReLU.mean_of_normal(0.0, 1.0);
    /// assert!((m - 1.0 / (2.0 * std::f64::consts::PI).sqrt()).abs() < 1e-7);
    /// // Far above 6, ReLU6 gives 6.
    /// assert!((Activation::ReLU6.mean_of_normal(50.0, 1.0) - 6.0).abs() < 1e-9);
    /// ```
    pub fn mean_of_normal(self, mean: f64, std: f64) -> f64 {
        match self {
            Activation::Identity => mean,
            Activation::ReLU => relu_mean(mean, std),
            Activation::ReLU6 => relu_mean(mean, std) - relu_mean(mean - 6.0, std),
        }
    }
}

/// `E[max(z, 0)]` for `z ~ N(mean, std²)`.
fn relu_mean(mean: f64, std: f64) -> f64 {
    if std <= 0.0 {
        return mean.max(0.0);
    }
    let t = mean / std;
    std * normal_pdf(t) + mean * normal_cdf(t)
}

/// The standard normal density.
fn normal_pdf(t: f64) -> f64 {
    (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The standard normal distribution function, `erfc(−t / √2) / 2`.
fn normal_cdf(t: f64) -> f64 {
    0.5 * erfc(-t / std::f64::consts::SQRT_2)
}

/// The complementary error function, Chebyshev fit with relative error below 1.2e-7 everywhere
/// (Press et al., Numerical Recipes, `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    const C: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let poly = C.iter().rev().fold(0.0, |acc, &c| c + t * acc);
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// One layer's batch-norm statistics, in the units of the model they were read from.
#[derive(Debug, Clone, PartialEq)]
struct LayerStats {
    /// The batch norm's path (it must be gone, folded, when the statistics are used).
    batch_norm: String,
    /// β per output channel: the pre-activation's mean.
    beta: Vec<f64>,
    /// |γ| per output channel: the pre-activation's standard deviation.
    gamma: Vec<f64>,
    /// The range of each output channel's weights once the batch norm is folded in: how the
    /// layer's current scale (after equalization) is recognised.
    folded_range: Vec<f64>,
    /// What has been absorbed out of each channel, in these units.
    absorbed: Vec<f64>,
    /// The activation after the batch norm in its fusion group.
    activation: Activation,
}

/// The batch-norm statistics of a float model's conv/linear + batch norm (+ ReLU) groups, read
/// before folding (`fuse_modules` folds the batch norm into the layer, and its `β`, `γ` with
/// it): for the layer at the first path of each group, `β` and `|γ|` of the batch norm per
/// output channel, the pre-activation's mean and standard deviation in the paper's model
/// `z ~ N(β, γ²)`.
///
/// The statistics follow the layer: when [`equalize`](super::equalize) divides output channel
/// `i` by `s_i`, they are read as `β_i / s_i` and `γ_i / s_i` (the scale is recognised from the
/// channel's weight range against the folded range recorded here), and what
/// [`absorb_high_bias_from_bn`](super::absorb_high_bias_from_bn) moves out of a channel is
/// subtracted from its `β`. The order of the paper: read the statistics, fuse, equalize, absorb,
/// then correct the biases ([`analytic_bias_correction`](super::analytic_bias_correction)).
///
/// ```
/// use qgraph::equalize::BnStatistics;
/// use qgraph::nn::{BatchNorm2d, Conv2d, ReLU};
/// use qgraph::{Module, Sequential, eval};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Conv2d::new(3, 8, [1, 1]).build()?),
///     Box::new(BatchNorm2d::new(8)),
///     Box::new(ReLU::new()),
/// ]));
/// eval(&mut model);
/// let stats = BnStatistics::from_fuse_groups(model.as_ref(), &[["0", "1", "2"]])?;
/// assert_eq!(stats.layers(), ["0"]);
/// qgraph::fuse::fuse_modules(&mut model, &[&["0", "1", "2"]])?;
/// // A fresh batch norm: β = 0, γ = 1.
/// let (beta, gamma) = stats.current(model.as_ref(), "0")?;
/// assert!(beta.iter().all(|&b| b == 0.0) && gamma.iter().all(|&g| (g - 1.0).abs() < 1e-5));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BnStatistics {
    layers: BTreeMap<String, LayerStats>,
}

impl BnStatistics {
    /// Reads the statistics of every group of `groups` (as passed to `fuse_modules`: a `Conv`
    /// or `Linear`, then a batch norm, then optionally `ReLU` or `ReLU6`) from `model`, not yet
    /// fused. Groups whose second module is not a batch norm (a conv + ReLU pair) carry no
    /// statistics and are skipped. Errors: a group's first module is not a `Conv` or `Linear`,
    /// its batch norm has another number of channels, or a path does not exist.
    pub fn from_fuse_groups<G: AsRef<[S]>, S: AsRef<str>>(
        model: &dyn Module,
        groups: &[G],
    ) -> GraphResult<Self> {
        let mut layers = BTreeMap::new();
        for group in groups {
            let group: Vec<&str> = group.as_ref().iter().map(AsRef::as_ref).collect();
            let [first, second, rest @ ..] = group.as_slice() else { continue };
            let Some(bn) = model.get(second)?.downcast_ref::<BatchNorm>() else { continue };
            let base = layer::base_path(model, first, Accept::AnyFused)?;
            let weight = layer::read(model, &base)?.weight;
            let channels = weight.shape()[0];
            if bn.num_features() != channels {
                return Err(crate::invalid(
                    "BnStatistics",
                    "group",
                    &group,
                    format!(
                        "{first} has {channels} output channels but the batch norm {second} {}; group a layer \
                         with the batch norm of its output",
                        bn.num_features()
                    ),
                ));
            }
            let activation = match rest.first() {
                None => Activation::Identity,
                Some(path) => {
                    let name = model.get(path)?.type_name();
                    Activation::of_type_name(name).ok_or_else(|| {
                        crate::invalid(
                            "BnStatistics",
                            "activation",
                            path,
                            format!(
                                "is a {name}; the data-free steps know ReLU and ReLU6 after a batch norm"
                            ),
                        )
                    })?
                }
            };
            let params = bn.fold_params();
            let gamma: Vec<f64> = match params.weight {
                Some(w) => w.iter().map(|&g| f64::from(g)).collect(),
                None => vec![1.0; channels],
            };
            let beta: Vec<f64> = match params.bias {
                Some(b) => b.iter().map(|&b| f64::from(b)).collect(),
                None => vec![0.0; channels],
            };
            let range = channel_range(&weight, 0).map_err(|e| e.within_path(first))?;
            let folded_range = (0..channels)
                .map(|c| {
                    let sigma = (f64::from(params.running_var[c]) + params.eps).sqrt();
                    f64::from(range[c]) * gamma[c].abs() / sigma
                })
                .collect();
            layers.insert(
                first.to_string(),
                LayerStats {
                    batch_norm: second.to_string(),
                    beta,
                    gamma: gamma.iter().map(|g| g.abs()).collect(),
                    folded_range,
                    absorbed: vec![0.0; channels],
                    activation,
                },
            );
        }
        Ok(Self { layers })
    }

    /// [`from_fuse_groups`](Self::from_fuse_groups) with the groups torchvision's
    /// `fuse_model()` uses for a zoo model ([`models::fuse_groups`](crate::models::fuse_groups)).
    pub fn from_zoo_model(model: &dyn Module) -> GraphResult<Self> {
        Self::from_fuse_groups(model, &crate::models::fuse_groups(model)?)
    }

    /// The paths of the layers with statistics, sorted.
    pub fn layers(&self) -> Vec<&str> {
        self.layers.keys().map(String::as_str).collect()
    }

    /// The activation after the batch norm of the layer at `path`, if it has statistics.
    pub fn activation(&self, path: &str) -> Option<Activation> {
        self.layers.get(path).map(|l| l.activation)
    }

    /// `(β, γ)` per output channel of the layer at `path` in `model` as it is now (fused, maybe
    /// equalized and absorbed). Errors: no statistics for `path`, the batch norm is still in the
    /// model (fuse first), or the layer's channels differ from those read.
    pub fn current(&self, model: &dyn Module, path: &str) -> GraphResult<(Vec<f64>, Vec<f64>)> {
        let stats = self.get(path)?;
        let scale = self.scale(model, path)?;
        let beta =
            stats.beta.iter().zip(&stats.absorbed).zip(&scale).map(|((b, a), s)| (b - a) / s).collect();
        let gamma = stats.gamma.iter().zip(&scale).map(|(g, s)| g / s).collect();
        Ok((beta, gamma))
    }

    /// Records that `shift` (in `model`'s current units) moved out of the pre-activation of the
    /// layer at `path`.
    pub(crate) fn absorb(&mut self, model: &dyn Module, path: &str, shift: &[f32]) -> GraphResult<()> {
        let scale = self.scale(model, path)?;
        let stats = self.layers.get_mut(path).expect("checked by scale");
        for ((a, &c), s) in stats.absorbed.iter_mut().zip(shift).zip(&scale) {
            *a += f64::from(c) * s;
        }
        Ok(())
    }

    /// The statistics of `path`, or an error naming it.
    fn get(&self, path: &str) -> GraphResult<&LayerStats> {
        self.layers.get(path).ok_or_else(|| {
            crate::invalid(
                "BnStatistics",
                "layer",
                path,
                "has no batch-norm statistics; read them from the unfused model with the layer's fusion group",
            )
        })
    }

    /// `s_i`: how much output channel `i` of the layer at `path` has been divided by since the
    /// statistics were read (1 for a channel whose weights are all zero, then or now).
    fn scale(&self, model: &dyn Module, path: &str) -> GraphResult<Vec<f64>> {
        let stats = self.get(path)?;
        if model.get(&stats.batch_norm).is_ok_and(|m| m.is::<BatchNorm>()) {
            return Err(crate::invalid(
                "BnStatistics",
                "batch norm",
                &stats.batch_norm,
                format!(
                    "is still in the model; fuse {path} with it first (fuse_modules or models::fuse_model): the \
                     statistics describe the folded layer"
                ),
            ));
        }
        let base = layer::base_path(model, path, Accept::AnyFused)?;
        let range = channel_range(&layer::read(model, &base)?.weight, 0).map_err(|e| e.within_path(path))?;
        if range.len() != stats.folded_range.len() {
            return Err(crate::invalid(
                "BnStatistics",
                "layer",
                path,
                format!(
                    "has {} output channels, its statistics {}; read the statistics from the same model",
                    range.len(),
                    stats.folded_range.len()
                ),
            ));
        }
        Ok(stats
            .folded_range
            .iter()
            .zip(&range)
            .map(|(&then, &now)| if then > 0.0 && now > 0.0 { then / f64::from(now) } else { 1.0 })
            .collect())
    }
}
