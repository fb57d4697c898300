//! What a module saves and how it is rebuilt: its configuration as JSON, its tensors by name,
//! and its children. The file format around these lives in [`crate::io`].

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use serde::de::DeserializeOwned;

pub use crate::module::TensorView;
use crate::{GraphError, GraphResult, Module};

/// Little-endian element types a record can hold.
pub trait RecordElement: Copy + 'static {
    /// The safetensors dtype.
    const DTYPE: safetensors::Dtype;
    /// Reads one element from its little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! record_element {
    ($t:ty, $d:ident) => {
        impl RecordElement for $t {
            const DTYPE: safetensors::Dtype = safetensors::Dtype::$d;
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("chunked by element size"))
            }
        }
    };
}
record_element!(f32, F32);
record_element!(i8, I8);
record_element!(f64, F64);
record_element!(i64, I64);
record_element!(u8, U8);
record_element!(i32, I32);

/// A tensor as read from a file: dtype, shape and little-endian bytes (borrowed from the mapped
/// file).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// The bytes, little-endian, row-major.
    pub bytes: &'a [u8],
}

/// The tensors of one module being loaded, by their names within the module.
#[derive(Debug)]
pub struct Tensors<'a> {
    module: String,
    map: BTreeMap<String, RawTensor<'a>>,
}

impl<'a> Tensors<'a> {
    /// The tensors of the module at `module` (its path, for error messages).
    pub fn new(module: impl Into<String>, map: BTreeMap<String, RawTensor<'a>>) -> Self {
        Self { module: module.into(), map }
    }

    /// The tensor `name`, which must exist and have element type `T`.
    pub fn get<T: RecordElement>(&self, name: &str) -> GraphResult<ArrayD<T>> {
        self.optional(name)?.ok_or_else(|| self.mismatch(format!("tensor `{name}` is missing")))
    }

    /// The tensor `name` if present (it must then have element type `T`).
    pub fn optional<T: RecordElement>(&self, name: &str) -> GraphResult<Option<ArrayD<T>>> {
        let Some(raw) = self.map.get(name) else { return Ok(None) };
        if raw.dtype != T::DTYPE {
            return Err(self.mismatch(format!(
                "tensor `{name}` is {:?}, expected {:?}",
                raw.dtype,
                T::DTYPE
            )));
        }
        let size = std::mem::size_of::<T>();
        let len = raw.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if len.and_then(|n| n.checked_mul(size)) != Some(raw.bytes.len()) {
            return Err(self.mismatch(format!(
                "tensor `{name}` has {} bytes for shape {:?}",
                raw.bytes.len(),
                raw.shape
            )));
        }
        let data = raw.bytes.chunks_exact(size).map(T::from_le).collect();
        // The length matches; the shape can still be undescribable: a zero-sized tensor whose
        // other sizes multiply past isize::MAX.
        ArrayD::from_shape_vec(IxDyn(raw.shape), data).map(Some).map_err(|e| {
            self.mismatch(format!("tensor `{name}` has shape {:?}: {e}; re-save the model", raw.shape))
        })
    }

    /// The tensor `name` with shape `shape`.
    pub fn shaped<T: RecordElement>(&self, name: &str, shape: &[usize]) -> GraphResult<ArrayD<T>> {
        let x = self.get::<T>(name)?;
        if x.shape() != shape {
            return Err(
                self.mismatch(format!("tensor `{name}` has shape {:?}, expected {shape:?}", x.shape()))
            );
        }
        Ok(x)
    }

    /// An error about this module's saved data.
    pub fn mismatch(&self, reason: String) -> GraphError {
        GraphError::Mismatch { context: "load", reason: format!("module `{}`: {reason}", self.module) }
    }
}

/// Everything saved for one module.
#[derive(Debug)]
pub struct Record<'a> {
    /// The module's path (for messages).
    pub path: String,
    /// Its configuration, as [`Module::config`] wrote it.
    pub config: serde_json::Value,
    /// Its own tensors.
    pub tensors: Tensors<'a>,
    /// Its children, already rebuilt, in order.
    pub children: Vec<(String, Box<dyn Module>)>,
}

impl Record<'_> {
    /// The configuration as a `T`.
    pub fn config<T: DeserializeOwned>(&self) -> GraphResult<T> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| self.tensors.mismatch(format!("configuration {}: {e}", self.config)))
    }

    /// Takes the child `name`.
    pub fn take_child(&mut self, name: &str) -> GraphResult<Box<dyn Module>> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| self.tensors.mismatch(format!("child `{name}` is missing")))?;
        Ok(self.children.remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quint8_and_qint32_integers_read_back_and_a_wrong_dtype_names_the_module() {
        let (u8_bytes, i32_bytes) = ([1u8, 255, 0, 7], [-5i32, 70000].map(i32::to_le_bytes).concat());
        let map = BTreeMap::from([
            ("q".to_string(), RawTensor { dtype: safetensors::Dtype::U8, shape: &[2, 2], bytes: &u8_bytes }),
            ("b".to_string(), RawTensor { dtype: safetensors::Dtype::I32, shape: &[2], bytes: &i32_bytes }),
        ]);
        let tensors = Tensors::new("head.conv", map);
        assert_eq!(tensors.shaped::<u8>("q", &[2, 2]).unwrap().into_raw_vec_and_offset().0, [1, 255, 0, 7]);
        assert_eq!(tensors.get::<i32>("b").unwrap().into_raw_vec_and_offset().0, [-5, 70000]);
        let err = tensors.get::<i8>("q").unwrap_err().to_string();
        assert!(err.contains("module `head.conv`") && err.contains("U8"), "{err}");
    }
}
