//! [`OutQ`]: a quantized module's output parameters, checked as quint8 parameters whenever they
//! are made, including when a saved configuration is read back.

use qcore::{AffineQuantizer, QDType};
use qkernels::elementwise::PerTensor;
use serde::{Deserialize, Serialize};

use crate::GraphResult;
use crate::record::Record;

/// A quantized module's output parameters: a [`PerTensor`] that is known to be valid for quint8
/// (a positive finite scale, a zero point in 0..=255). It saves as `{"scale", "zero_point"}` and
/// is checked again when deserialized, so a saved configuration cannot smuggle in parameters the
/// constructors refuse.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Saved", into = "Saved")]
pub(crate) struct OutQ(PerTensor);

/// How [`OutQ`] is saved.
#[derive(Serialize, Deserialize)]
struct Saved {
    scale: f64,
    zero_point: i64,
}

impl TryFrom<Saved> for OutQ {
    type Error = crate::GraphError;

    fn try_from(saved: Saved) -> GraphResult<Self> {
        Self::new(PerTensor::new(saved.scale, saved.zero_point))
    }
}

impl From<OutQ> for Saved {
    fn from(q: OutQ) -> Self {
        Self { scale: q.0.scale, zero_point: q.0.zero_point }
    }
}

impl OutQ {
    /// Checks `q` as quint8 output parameters (a positive finite scale, a zero point in 0..=255).
    pub(crate) fn new(q: PerTensor) -> GraphResult<Self> {
        AffineQuantizer::new(q.scale, q.zero_point, QDType::QUInt8)?;
        Ok(Self(q))
    }

    /// Checks `q` and rounds its scale to f32, as PyTorch does for the modules that keep it in a
    /// float32 tensor (`nnq.LeakyReLU`'s buffer) or whose kernel makes its output with an f32
    /// scale (`quantized::hardswish`).
    pub(crate) fn new_f32(q: PerTensor) -> GraphResult<Self> {
        Self::new(PerTensor::new(f64::from(q.scale as f32), q.zero_point))
    }

    /// The parameters of a module whose whole configuration is an `OutQ` (checked as it is read).
    pub(crate) fn from_record(record: Record<'_>) -> GraphResult<Self> {
        record.config::<Self>()
    }

    /// The parameters.
    pub(crate) fn get(self) -> PerTensor {
        self.0
    }
}

/// `new`, `qparams` and `from_record` of a module that is a newtype over [`OutQ`] (its output
/// parameters are all it has): `outq_newtype!(Quantize, "doc of new")`.
macro_rules! outq_newtype {
    ($ty:ident, $new_doc:literal) => {
        impl $ty {
            #[doc = $new_doc]
            pub fn new(q: PerTensor) -> GraphResult<Self> {
                Ok(Self(OutQ::new(q)?))
            }

            /// The output parameters.
            pub fn qparams(&self) -> PerTensor {
                self.0.get()
            }

            #[doc = concat!("Rebuilds a saved `", stringify!($ty), "`.")]
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                Ok(Self(OutQ::from_record(record)?))
            }
        }
    };
}
pub(crate) use outq_newtype;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_as_scale_and_zero_point_and_checks_when_read() {
        let q = OutQ::new(PerTensor::new(0.25, 3)).unwrap();
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(json, r#"{"scale":0.25,"zero_point":3}"#);
        assert_eq!(serde_json::from_str::<OutQ>(&json).unwrap(), q);
        for bad in [r#"{"scale":0.25,"zero_point":300}"#, r#"{"scale":-1.0,"zero_point":0}"#] {
            let err = serde_json::from_str::<OutQ>(bad).unwrap_err().to_string();
            assert!(err.contains("zero point") || err.contains("scale"), "{err}");
        }
        assert!(OutQ::new(PerTensor::new(0.1, 256)).is_err());
        assert_eq!(OutQ::new_f32(PerTensor::new(0.1, 0)).unwrap().get().scale, f64::from(0.1f32));
    }
}
