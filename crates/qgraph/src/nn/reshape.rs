//! `Tensor.squeeze(dim)` and `Tensor.permute(*dims)` as modules, on float values: the steps that
//! turn a CNN's `[N, C, 1, W]` feature map into an RNN's `[W, N, C]` sequence
//! (`f.squeeze(2).permute(2, 0, 1)`). A [`Graph`](crate::Graph) runs them as the ops
//! [`Op::Squeeze`](crate::Op::Squeeze) and [`Op::Permute`](crate::Op::Permute), which print
//! nothing, as PyTorch's tensor methods do not appear in `str(model)`.
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use qgraph::nn::{Permute, Squeeze};
//! use qgraph::{Module, Value};
//! let f = ArrayD::from_shape_fn(IxDyn(&[1, 3, 1, 4]), |i| (i[1] * 10 + i[3]) as f32);
//! let seq = Squeeze::new(2).forward(Value::Float(f))?;
//! let seq = Permute::new(&[2, 0, 1])?.forward(seq)?.into_float("example")?;
//! assert_eq!(seq.shape(), [4, 1, 3]);
//! assert_eq!(seq[[3, 0, 2]], 23.0);
//! # Ok::<(), qgraph::GraphError>(())
//! ```

use ndarray::IxDyn;
use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::{GraphResult, Module, Value, invalid};

/// A dimension `dim` (negative counts from the end) of a rank-`rank` tensor, as PyTorch wraps it;
/// an error naming `module` and the valid range otherwise.
fn wrap_dim(module: &'static str, dim: i64, rank: usize) -> GraphResult<usize> {
    let r = rank.max(1) as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if (0..r).contains(&d) {
        Ok(d as usize)
    } else {
        Err(invalid(
            module,
            "dim",
            dim,
            format!("out of range for a rank-{rank} tensor; use a dimension in [{}, {}]", -r, r - 1),
        ))
    }
}

/// `x.squeeze(dim)`: removes dimension `dim` (negative counts from the end) if its size is 1, and
/// returns the input unchanged otherwise, as PyTorch does. Float values only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Squeeze {
    dim: i64,
}

impl Squeeze {
    /// `squeeze(dim)`.
    pub fn new(dim: i64) -> Self {
        Self { dim }
    }

    /// The dimension squeezed.
    pub fn dim(&self) -> i64 {
        self.dim
    }
}

impl Module for Squeeze {
    fn type_name(&self) -> &str {
        "Squeeze"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("Squeeze")?;
        let dim = wrap_dim("Squeeze", self.dim, x.ndim())?;
        if x.ndim() == 0 || x.shape()[dim] != 1 {
            return Ok(Value::Float(x));
        }
        let mut shape = x.shape().to_vec();
        shape.remove(dim);
        let x = x
            .into_shape_with_order(IxDyn(&shape))
            .map_err(|e| invalid("Squeeze", "input", e, "not contiguous"))?;
        Ok(Value::Float(x))
    }

    fn extra_repr(&self) -> String {
        format!("dim={}", self.dim)
    }

    serde_config!();
}

/// `x.permute(*dims)`: reorders the dimensions (output dimension `i` is input dimension
/// `dims[i]`; negative entries count from the end). Float values only; the result is stored in
/// standard layout like every float value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permute {
    dims: Vec<i64>,
}

impl Permute {
    /// `permute(dims)`; an error unless `dims` names each dimension of a rank-`dims.len()` tensor
    /// once.
    pub fn new(dims: &[i64]) -> GraphResult<Self> {
        let permute = Self { dims: dims.to_vec() };
        permute.axes(dims.len())?;
        Ok(permute)
    }

    /// Rebuilds a saved module (its `dims` checked as by [`new`](Permute::new)).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let permute: Self = record.config()?;
        Self::new(&permute.dims)
    }

    /// The dimensions, as given.
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    /// The wrapped dimensions for a rank-`rank` input.
    fn axes(&self, rank: usize) -> GraphResult<Vec<usize>> {
        if self.dims.len() != rank {
            return Err(invalid(
                "Permute",
                "dims",
                &self.dims,
                format!("a rank-{rank} tensor needs {rank} dimensions, one per input dimension"),
            ));
        }
        let axes =
            self.dims.iter().map(|&d| wrap_dim("Permute", d, rank)).collect::<GraphResult<Vec<_>>>()?;
        let mut seen = vec![false; rank];
        for &a in &axes {
            if std::mem::replace(&mut seen[a], true) {
                return Err(invalid(
                    "Permute",
                    "dims",
                    &self.dims,
                    format!("dimension {a} appears twice; name each of the {rank} dimensions once"),
                ));
            }
        }
        Ok(axes)
    }
}

impl Module for Permute {
    fn type_name(&self) -> &str {
        "Permute"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("Permute")?;
        let axes = self.axes(x.ndim())?;
        let x = x.permuted_axes(IxDyn(&axes)).as_standard_layout().into_owned();
        Ok(Value::Float(x))
    }

    fn extra_repr(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(i64::to_string).collect();
        format!("dims=({})", dims.join(", "))
    }

    serde_config!();
}
