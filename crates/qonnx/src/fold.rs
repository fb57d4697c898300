//! Constant folding of the shape arithmetic exporters write (`x.view(x.size(0), -1)` becomes
//! `Shape`, `Gather`, `Unsqueeze`, `Concat`, `Reshape`): values known at import time are
//! constants, and the dimensions of a graph value are symbols that a `Reshape` can copy.

use ndarray::{ArrayD, Axis, IxDyn};

use crate::tensor::Tensor;

/// One entry of a folded shape vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Dim {
    /// A number known at import time.
    Known(i64),
    /// Dimension `axis` of the graph value `value` (known only when the model runs).
    Of {
        /// The value's id.
        value: String,
        /// The axis.
        axis: usize,
    },
}

/// A vector (or, if `scalar`, a 0-d value) of dimensions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dims {
    /// The entries.
    pub dims: Vec<Dim>,
    /// True for a 0-d value (one entry).
    pub scalar: bool,
}

impl Dims {
    /// The dims of a constant integer vector or scalar.
    pub(crate) fn from_tensor(t: &Tensor) -> Option<Dims> {
        let a = t.as_i64()?;
        if a.ndim() > 1 {
            return None;
        }
        Some(Dims { dims: a.iter().map(|&v| Dim::Known(v)).collect(), scalar: a.ndim() == 0 })
    }

    /// The constant, if every entry is known.
    pub(crate) fn to_tensor(&self) -> Option<Tensor> {
        let v: Option<Vec<i64>> =
            self.dims.iter().map(|d| if let Dim::Known(v) = d { Some(*v) } else { None }).collect();
        let v = v?;
        let shape: &[usize] = if self.scalar { &[] } else { &[v.len()] };
        Some(Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).expect("length")))
    }
}

/// The most elements a folded constant may have (and at most `qgraph::memory::max_elements()`):
/// shape arithmetic and weights stay far below it; a file that asks for more is refused rather
/// than allocated.
const FOLD_LIMIT: usize = 1 << 26;

pub(crate) fn too_large(n: usize) -> bool {
    n > FOLD_LIMIT.min(qgraph::memory::max_elements())
}

/// Elementwise binary arithmetic on constants, with broadcasting.
pub(crate) fn binary(op: &str, a: &Tensor, b: &Tensor) -> Option<Tensor> {
    match (a, b) {
        (Tensor::I64(a), Tensor::I64(b)) => {
            let f = |x: i64, y: i64| match op {
                "Add" => x.checked_add(y),
                "Sub" => x.checked_sub(y),
                "Mul" => x.checked_mul(y),
                "Div" => x.checked_div(y),
                _ => None,
            };
            zip(a, b, f).map(Tensor::I64)
        }
        _ => {
            let (a, b) = (a.to_f32(), b.to_f32());
            let f = |x: f32, y: f32| match op {
                "Add" => Some(x + y),
                "Sub" => Some(x - y),
                "Mul" => Some(x * y),
                "Div" => Some(x / y),
                _ => None,
            };
            zip(&a, &b, f).map(Tensor::F32)
        }
    }
}

fn zip<T: Copy>(a: &ArrayD<T>, b: &ArrayD<T>, f: impl Fn(T, T) -> Option<T>) -> Option<ArrayD<T>> {
    let rank = a.ndim().max(b.ndim());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (sa, sb) = (pad(a.shape()), pad(b.shape()));
    let mut shape = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        });
    }
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    if too_large(n) {
        return None;
    }
    let a = a.view().into_shape_with_order(IxDyn(&sa)).ok()?;
    let b = b.view().into_shape_with_order(IxDyn(&sb)).ok()?;
    let a = a.broadcast(IxDyn(&shape))?;
    let b = b.broadcast(IxDyn(&shape))?;
    let v: Option<Vec<T>> = a.iter().zip(b.iter()).map(|(&x, &y)| f(x, y)).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), v?).ok()
}

/// `Concat` of constants along `axis`.
pub(crate) fn concat(parts: &[&Tensor], axis: i64) -> Option<Tensor> {
    let rank = parts.first()?.shape().len();
    let axis =
        usize::try_from(if axis < 0 { axis + rank as i64 } else { axis }).ok().filter(|&a| a < rank)?;
    if parts.iter().all(|p| p.as_i64().is_some()) {
        let views: Vec<_> = parts.iter().map(|p| p.as_i64().expect("checked").view()).collect();
        ndarray::concatenate(Axis(axis), &views).ok().map(Tensor::I64)
    } else {
        let owned: Vec<_> = parts.iter().map(|p| p.to_f32()).collect();
        let views: Vec<_> = owned.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(axis), &views).ok().map(Tensor::F32)
    }
}

/// `Expand` / `ConstantOfShape` to a known shape, within the element limit.
pub(crate) fn expand(t: &Tensor, shape: &[i64]) -> Option<Tensor> {
    let rank = shape.len().max(t.shape().len());
    let mut target: Vec<usize> = Vec::with_capacity(rank);
    let ts = t.shape();
    for i in 0..rank {
        let s = shape.len().checked_sub(rank - i).map(|j| shape[j]).unwrap_or(1);
        let d = ts.len().checked_sub(rank - i).map(|j| ts[j]).unwrap_or(1);
        let s = usize::try_from(s).ok()?;
        target.push(if s == 1 { d } else { s });
    }
    let n = target.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if too_large(n) {
        return None;
    }
    let pad = |a: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - a.len()];
        v.extend_from_slice(a);
        v
    };
    Some(match t {
        Tensor::F32(a) => Tensor::F32(
            a.view()
                .into_shape_with_order(IxDyn(&pad(a.shape())))
                .ok()?
                .broadcast(IxDyn(&target))?
                .to_owned(),
        ),
        Tensor::I64(a) => Tensor::I64(
            a.view()
                .into_shape_with_order(IxDyn(&pad(a.shape())))
                .ok()?
                .broadcast(IxDyn(&target))?
                .to_owned(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
    }

    #[test]
    fn arithmetic_broadcasts_and_refuses_overflow() {
        let a = ints(&[1, 2, 3]);
        let b = Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 2));
        assert_eq!(binary("Mul", &a, &b), Some(ints(&[2, 4, 6])));
        assert_eq!(binary("Div", &a, &Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 0))), None);
        assert_eq!(binary("Add", &ints(&[i64::MAX]), &ints(&[1])), None);
        assert_eq!(binary("Add", &ints(&[1, 2]), &ints(&[1, 2, 3])), None);
        assert_eq!(concat(&[&a, &ints(&[-1])], 0), Some(ints(&[1, 2, 3, -1])));
        assert_eq!(expand(&b, &[2, 2]).unwrap().shape(), &[2, 2]);
        assert!(expand(&b, &[1 << 40, 1 << 40]).is_none());
        // Broadcasting two vectors to a matrix beyond the element limit is refused.
        let long = Tensor::I64(ArrayD::zeros(IxDyn(&[1 << 14])));
        let column = Tensor::I64(ArrayD::zeros(IxDyn(&[1 << 14, 1])));
        assert_eq!(binary("Add", &long, &column), None);
    }
}
