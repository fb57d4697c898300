//! Modules that only move values: `Identity`, `Flatten`, and adaptive average pooling.

use ndarray::IxDyn;
use qkernels::{Isa, float, pool};
use serde::{Deserialize, Serialize};

use super::args::{check_sizes, py_tuple};
use super::pool::Size;
use crate::record::Record;
use crate::value::{QuantTensor, to_channels_last};
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

identity_module!(
    /// `nn.Identity`: returns its input (what `fuse_modules` leaves in the fused slots).
    Identity,
    "Identity",
    "The identity."
);

/// `nn.Flatten(start_dim, end_dim)`: merges dimensions `start_dim..=end_dim` (negative counts
/// from the end), on float and quantized values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flatten {
    start_dim: i64,
    end_dim: i64,
}

impl Flatten {
    /// `nn.Flatten(start_dim, end_dim)`; PyTorch's default is `(1, -1)`.
    pub fn new(start_dim: i64, end_dim: i64) -> Self {
        Self { start_dim, end_dim }
    }

    fn out_shape(&self, shape: &[usize]) -> GraphResult<Vec<usize>> {
        let rank = shape.len() as i64;
        let axis = |d: i64| if d < 0 { d + rank } else { d };
        let (s, e) = (axis(self.start_dim), axis(self.end_dim));
        if !(0..rank.max(1)).contains(&s) || !(0..rank.max(1)).contains(&e) || s > e {
            return Err(invalid(
                "Flatten",
                "(start_dim, end_dim)",
                (self.start_dim, self.end_dim),
                format!("out of range for a tensor of shape {shape:?}"),
            ));
        }
        let (s, e) = (s as usize, e as usize);
        let mut out = shape[..s].to_vec();
        out.push(shape[s..=e].iter().product());
        out.extend_from_slice(&shape[e + 1..]);
        Ok(out)
    }
}

impl Module for Flatten {
    fn type_name(&self) -> &str {
        "Flatten"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let shape = self.out_shape(input.shape()?)?;
        match input {
            Value::Float(x) => Ok(Value::Float(
                x.into_shape_with_order(IxDyn(&shape))
                    .map_err(|e| invalid("Flatten", "input", e, "not contiguous"))?,
            )),
            other => {
                let q = other.into_quant("Flatten")?;
                // Channels-last storage equals PyTorch's order when there is no spatial extent,
                // so flattening [N, C, 1, 1] (or a rank-2 tensor) to rank 2 only relabels it.
                let spatial: usize = q.shape().iter().skip(2).product();
                if shape.len() < 3 && spatial == 1 {
                    return Ok(Value::Quant(q.with_storage_shape(shape)));
                }
                let params = q.qparams();
                let logical = q.int_repr().into_shape_with_order(IxDyn(&shape)).expect("same length");
                let data = to_channels_last(&logical);
                Ok(Value::Quant(QuantTensor::new(data, shape, params)?))
            }
        }
    }

    fn extra_repr(&self) -> String {
        format!("start_dim={}, end_dim={}", self.start_dim, self.end_dim)
    }

    serde_config!();
}

/// `nn.AdaptiveAvgPool2d(output_size)`: average pooling to a fixed output size, in f32 or on
/// quantized values (PyTorch's `quantized::adaptive_avg_pool2d`, same parameters out as in).
/// `new(1)` and `new([1, 1])` pool alike and print as PyTorch prints them (`output_size=1`,
/// `output_size=(1, 1)`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptiveAvgPool2d {
    output_size: [usize; 2],
    #[serde(default)]
    scalar: bool,
}

impl AdaptiveAvgPool2d {
    /// Pools `[N, C, H, W]` to `[N, C, output_size[0], output_size[1]]`.
    pub fn new(output_size: impl Into<Size<2>>) -> Self {
        let size = output_size.into();
        Self { output_size: size.values(), scalar: size.is_scalar() }
    }

    /// Rebuilds a saved module (output sizes positive and at most [`MAX_SIZE`](super::MAX_SIZE)).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let pool: Self = record.config()?;
        check_sizes("AdaptiveAvgPool2d", "output_size", &pool.output_size, 1)?;
        Ok(pool)
    }
}

impl Module for AdaptiveAvgPool2d {
    fn type_name(&self) -> &str {
        "AdaptiveAvgPool2d"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        const NAME: &str = "AdaptiveAvgPool2d";
        let shape = input.shape()?.to_vec();
        if shape.len() != 4 {
            return Err(GraphError::ShapeMismatch {
                context: NAME,
                what: "input rank (N, C, H, W)",
                got: shape.len(),
                expected: 4,
            });
        }
        let [oh, ow] = self.output_size;
        let out_shape = vec![shape[0], shape[1], oh, ow];
        let isa = Isa::active();
        match input {
            Value::Float(x) => {
                let mut out = memory::zeroed(NAME, &out_shape)?;
                let x = x.as_standard_layout();
                float::adaptive_avg_pool2d(
                    x.as_slice().expect("standard layout"),
                    &shape,
                    self.output_size,
                    &mut out,
                    isa,
                )?;
                Ok(Value::Float(ndarray::ArrayD::from_shape_vec(IxDyn(&out_shape), out).expect("length")))
            }
            other => {
                let q = other.into_quant(NAME)?;
                let mut out = memory::zeroed(NAME, &out_shape)?;
                let nhwc = [shape[0], shape[2], shape[3], shape[1]];
                pool::adaptive_avg_pool2d(q.data(), &nhwc, q.qparams(), self.output_size, &mut out, isa)?;
                Ok(Value::Quant(
                    QuantTensor::new(out, out_shape, q.qparams())?.with_memory_format(q.memory_format()),
                ))
            }
        }
    }

    fn extra_repr(&self) -> String {
        match self.output_size {
            [h, w] if self.scalar && h == w => format!("output_size={h}"),
            size => format!("output_size={}", py_tuple(&size)),
        }
    }

    serde_config!();
}
