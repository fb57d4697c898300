//! PyTorch's `torch.ao.quantization._equalize`: cross-layer equalization of adjacent layers,
//! repeated over a list of groups until the weights stop changing.

use ndarray::{Array1, ArrayD, Axis, Slice};

use super::layer::{self, Accept};
use crate::{GraphError, GraphResult, Module};

/// PyTorch's default `threshold` of [`equalize`] and [`converged`].
pub const DEFAULT_THRESHOLD: f32 = 1e-4;

/// The most sweeps [`equalize`] makes before giving up (PyTorch loops without bound).
pub const MAX_ITERATIONS: usize = 10_000;

/// `channel_range(input, axis)`: per index of `axis`, the largest minus the smallest element of
/// `weight` with that index (f32, exact). An error if `axis` is out of range or the weight holds
/// a NaN or an infinity.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, -2.0, 0.5, 3.0, 3.0, 4.0]).unwrap();
/// let r = qgraph::equalize::channel_range(&w, 0)?;
/// assert_eq!(r.to_vec(), [3.0, 1.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn channel_range(weight: &ArrayD<f32>, axis: usize) -> GraphResult<Array1<f32>> {
    if axis >= weight.ndim() {
        return Err(crate::invalid(
            "channel_range",
            "axis",
            axis,
            format!("the weight has {} dimensions; pass an axis below that", weight.ndim()),
        ));
    }
    check_finite("channel_range", weight)?;
    Ok(weight.axis_iter(Axis(axis)).map(|lane| range_of(lane.iter().copied())).collect())
}

/// Max minus min of `values` (which are finite).
fn range_of(values: impl Iterator<Item = f32>) -> f32 {
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    hi - lo
}

/// An error naming `context` and the first non-finite element of `weight`.
fn check_finite(context: &'static str, weight: &ArrayD<f32>) -> GraphResult<()> {
    match weight.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(crate::invalid(
            context,
            "weight element",
            (i, weight.iter().nth(i).copied().unwrap_or(f32::NAN)),
            "is not finite; equalize a model whose weights are all finite",
        )),
    }
}

/// The range of each input channel of a (possibly grouped) layer 2: input channel `c` of a
/// convolution with `groups` groups is column `c % (in / groups)` of the rows of group
/// `c / (in / groups)`. With one group this is `channel_range(weight, 1)`.
fn input_channel_range(weight: &ArrayD<f32>, groups: usize) -> Array1<f32> {
    let (out, per_group) = (weight.shape()[0], weight.shape()[1]);
    let rows = out / groups;
    (0..groups * per_group)
        .map(|c| {
            let (g, j) = (c / per_group, c % per_group);
            let block = weight.slice_axis(Axis(0), Slice::from(g * rows..(g + 1) * rows));
            range_of(block.index_axis(Axis(1), j).iter().copied())
        })
        .collect()
}

/// `cross_layer_equalization(module1, module2)` on the layers at `first` and `second` of
/// `model`, in place: with `r1` the range of each output channel of the first weight and `r2`
/// that of each input channel of the second, `s = sqrt(r1 / (r2 + 1e-9))`; the first weight's
/// rows and its bias are multiplied by `1 / s`, the second weight's input channels by `s`, each
/// step in f32 as PyTorch computes it, so the weights are PyTorch's bit for bit.
///
/// Both layers are a `Conv`, a `Linear` or one fused with `ReLU` (PyTorch's types; any conv
/// dimension). Beyond PyTorch, the second layer may be a grouped convolution (a depthwise conv of
/// MobileNetV2): each input channel's range is taken within its group. Errors: the first layer's
/// output channels differ from the second's input channels, a weight is not finite, or an output
/// channel of the first layer is constant (range 0, where PyTorch would write NaN).
pub fn cross_layer_equalization(model: &mut Box<dyn Module>, first: &str, second: &str) -> GraphResult<()> {
    let base1 = layer::base_path(model.as_ref(), first, Accept::Equalizable)?;
    let base2 = layer::base_path(model.as_ref(), second, Accept::Equalizable)?;
    let l1 = layer::read(model.as_ref(), &base1)?;
    let l2 = layer::read(model.as_ref(), &base2)?;
    let out1 = l1.weight.shape()[0];
    let in2 = l2.groups * l2.weight.shape()[1];
    if out1 != in2 {
        return Err(crate::invalid(
            "cross_layer_equalization",
            "pair",
            (first, second),
            format!(
                "{first} has {out1} output channels but {second} takes {in2} input channels; pair a layer \
                 with the layer that consumes its output"
            ),
        ));
    }
    check_finite("cross_layer_equalization", &l1.weight).map_err(|e| e.within_path(first))?;
    check_finite("cross_layer_equalization", &l2.weight).map_err(|e| e.within_path(second))?;
    let r1 = channel_range(&l1.weight, 0)?;
    let r2 = input_channel_range(&l2.weight, l2.groups);
    if let Some(c) = r1.iter().position(|&r| r == 0.0) {
        return Err(crate::invalid(
            "cross_layer_equalization",
            "output channel",
            c,
            format!(
                "of {first} has constant weights (range 0), so its scale would be 0; remove the dead \
                 channel or leave the pair ({first}, {second}) out"
            ),
        ));
    }
    // PyTorch: weight2_range += 1e-9; s = sqrt(weight1_range / weight2_range); 1 / s, in f32.
    let scale: Vec<f32> = r1.iter().zip(&r2).map(|(&a, &b)| (a / (b + 1e-9f32)).sqrt()).collect();
    let inverse: Vec<f32> = scale.iter().map(|s| 1.0f32 / s).collect();

    let mut w1 = l1.weight;
    for (mut row, &inv) in w1.axis_iter_mut(Axis(0)).zip(&inverse) {
        row.mapv_inplace(|v| v * inv);
    }
    let b1 = l1.bias.map(|mut b| {
        b.iter_mut().zip(&inverse).for_each(|(v, &inv)| *v *= inv);
        b
    });
    let mut w2 = l2.weight;
    let (rows, per_group) = (w2.shape()[0] / l2.groups, w2.shape()[1]);
    for (c, &s) in scale.iter().enumerate() {
        let (g, j) = (c / per_group, c % per_group);
        let mut block = w2.slice_axis_mut(Axis(0), Slice::from(g * rows..(g + 1) * rows));
        block.index_axis_mut(Axis(1), j).mapv_inplace(|v| v * s);
    }
    layer::write(model, &base1, w1, b1).map_err(|e| e.within_path(first))?;
    let b2 = l2.bias;
    layer::write(model, &base2, w2, b2).map_err(|e| e.within_path(second))
}

/// `converged(curr_modules, prev_modules, threshold)`: true if the sum over the layers of
/// `‖current weight − previous weight‖₂` is below `threshold`; false while any previous weight is
/// unknown (`None`, before the first sweep). Both lists name the same layers in the same order
/// (an error otherwise). Each norm is summed in f64 and rounded to f32, and the norms are added in
/// f32 (PyTorch reduces in f32 in its own order: the two can differ only within float rounding of
/// the threshold).
pub fn converged(
    current: &[(String, ArrayD<f32>)],
    previous: &[(String, Option<ArrayD<f32>>)],
    threshold: f32,
) -> GraphResult<bool> {
    let same = current.len() == previous.len() && current.iter().zip(previous).all(|(a, b)| a.0 == b.0);
    if !same {
        return Err(GraphError::Mismatch {
            context: "converged",
            reason: "the current and previous layers must have the same names in the same order".to_string(),
        });
    }
    let mut summed = 0.0f32;
    for ((name, cur), (_, prev)) in current.iter().zip(previous) {
        let Some(prev) = prev else { return Ok(false) };
        if prev.shape() != cur.shape() {
            return Err(GraphError::Mismatch {
                context: "converged",
                reason: format!("{name}: weight shape {:?} before and {:?} now", prev.shape(), cur.shape()),
            });
        }
        let sq: f64 = cur.iter().zip(prev).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
        summed += sq.sqrt() as f32;
    }
    Ok(summed < threshold)
}

/// `expand_groups_in_paired_modules_list`: each group of n layers becomes its n − 1 adjacent
/// pairs; a group of fewer than two is an error.
pub fn expand_groups<G: AsRef<[S]>, S: AsRef<str>>(groups: &[G]) -> GraphResult<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for group in groups {
        let group: Vec<&str> = group.as_ref().iter().map(AsRef::as_ref).collect();
        if group.len() < 2 {
            return Err(crate::invalid(
                "equalize",
                "group",
                &group,
                "must have at least two modules (a layer and the layer that consumes its output)",
            ));
        }
        pairs.extend(group.windows(2).map(|w| (w[0].to_string(), w[1].to_string())));
    }
    Ok(pairs)
}

/// `equalize(model, paired_modules_list, threshold, inplace=True)`: applies
/// [`cross_layer_equalization`] to each adjacent pair of each group, in order, and repeats the
/// sweep until [`converged`] (PyTorch's loop: before each pair the pair's weights are kept, and
/// the sweep stops once the summed change of every named layer's weight since it was kept is
/// below `threshold`). Returns the number of sweeps. For PyTorch's `inplace=False`, equalize a
/// clone (`model.clone()`).
///
/// The layers of a pair must be adjacent with only piecewise-linear, positively homogeneous
/// functions between them (ReLU, identity, max pooling) for the float function to stay the same.
/// An error (nothing changed by the failing pair) for a group of fewer than two, a path that is
/// not a supported layer, or a pair whose channels do not match; an error after
/// [`MAX_ITERATIONS`] sweeps without converging.
///
/// ```
/// use qgraph::nn::{Linear, ReLU};
/// use qgraph::{Module, Sequential};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Linear::new(4, 8, true)),
///     Box::new(ReLU::new()),
///     Box::new(Linear::new(8, 2, true)),
/// ]));
/// let sweeps = qgraph::equalize::equalize(&mut model, &[["0", "2"]], 1e-4)?;
/// assert!(sweeps >= 1);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn equalize<G: AsRef<[S]>, S: AsRef<str>>(
    model: &mut Box<dyn Module>,
    groups: &[G],
    threshold: f32,
) -> GraphResult<usize> {
    let pairs = expand_groups(groups)?;
    // The named layers in the model's module order, as PyTorch's `named_modules` walk finds them.
    let wanted: std::collections::HashSet<&str> =
        pairs.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]).collect();
    let mut names = Vec::new();
    for name in wanted.iter().copied() {
        layer::base_path(model.as_ref(), name, Accept::Equalizable)?;
    }
    for (path, _) in model.named_modules() {
        if wanted.contains(path.as_str()) {
            names.push(path);
        }
    }
    let base: Vec<String> = names
        .iter()
        .map(|n| layer::base_path(model.as_ref(), n, Accept::Equalizable))
        .collect::<GraphResult<_>>()?;
    let weights_now = |model: &dyn Module| -> GraphResult<Vec<(String, ArrayD<f32>)>> {
        names.iter().zip(&base).map(|(n, b)| Ok((n.clone(), layer::read(model, b)?.weight))).collect()
    };
    let mut previous: Vec<(String, Option<ArrayD<f32>>)> = names.iter().map(|n| (n.clone(), None)).collect();
    let index = |name: &str| names.iter().position(|n| n == name).expect("every pair's layers are named");
    let mut sweeps = 0;
    while !converged(&weights_now(model.as_ref())?, &previous, threshold)? {
        if sweeps == MAX_ITERATIONS {
            return Err(crate::invalid(
                "equalize",
                "threshold",
                threshold,
                format!("not reached after {MAX_ITERATIONS} sweeps; raise the threshold"),
            ));
        }
        for (a, b) in &pairs {
            for name in [a, b] {
                let i = index(name);
                previous[i].1 = Some(layer::read(model.as_ref(), &base[i])?.weight);
            }
            cross_layer_equalization(model, a, b)?;
        }
        sweeps += 1;
    }
    Ok(sweeps)
}
