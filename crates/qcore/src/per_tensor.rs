//! Per-tensor quantization parameters, the form the kernels and the graph pass around.

use crate::{AffineQuantizer, QDType, QParams, QResult};

/// Per-tensor quantization parameters, as PyTorch holds them: a double scale and an integer zero
/// point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerTensor {
    /// The scale (used as `f32(scale)` by every kernel, as in PyTorch).
    pub scale: f64,
    /// The zero point, within the dtype's range.
    pub zero_point: i64,
}

impl PerTensor {
    /// `(scale, zero_point)`; checked when an op uses it.
    pub const fn new(scale: f64, zero_point: i64) -> Self {
        Self { scale, zero_point }
    }

    /// Checks the parameters for `dtype` and returns the quantizer they define.
    pub fn quantizer(self, dtype: QDType) -> QResult<AffineQuantizer> {
        AffineQuantizer::new(self.scale, self.zero_point, dtype)
    }

    /// `(scale, zero_point)` as a tuple, the form `qcore::requant` takes.
    pub const fn pair(self) -> (f64, i64) {
        (self.scale, self.zero_point)
    }
}

impl From<PerTensor> for QParams {
    fn from(q: PerTensor) -> Self {
        QParams::PerTensor { scale: q.scale, zero_point: q.zero_point }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_qparams_and_checks_through_the_quantizer() {
        let q = PerTensor::new(0.5, 3);
        assert_eq!(QParams::from(q), QParams::PerTensor { scale: 0.5, zero_point: 3 });
        assert_eq!(q.pair(), (0.5, 3));
        assert_eq!(q.quantizer(QDType::QUInt8).unwrap().zero_point(), 3);
        assert!(PerTensor::new(0.5, 300).quantizer(QDType::QUInt8).is_err());
        assert!(PerTensor::new(-1.0, 0).quantizer(QDType::QInt8).is_err());
    }
}
