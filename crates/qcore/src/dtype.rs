//! Quantized dtypes and quantization schemes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A quantized element type, named as in PyTorch (`torch.quint8`, `torch.qint8`, `torch.qint32`,
/// `torch.quint4x2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QDType {
    /// Unsigned 8-bit, [0, 255]: activations.
    QUInt8,
    /// Signed 8-bit, [-128, 127]: weights.
    QInt8,
    /// Signed 32-bit: biases and accumulators.
    QInt32,
    /// Unsigned 4-bit, [0, 15], two to a byte (`torch.quint4x2`): 4-bit embedding weights.
    /// Stored packed as [`crate::subbyte`] describes; [`crate::IntRepr::U4`] holds it unpacked.
    QUInt4x2,
}

impl QDType {
    /// Every dtype, in declaration order.
    pub const ALL: [QDType; 4] = [QDType::QUInt8, QDType::QInt8, QDType::QInt32, QDType::QUInt4x2];

    /// Smallest value the storage type holds.
    pub const fn min(self) -> i64 {
        match self {
            QDType::QUInt8 => 0,
            QDType::QInt8 => -128,
            QDType::QInt32 => i32::MIN as i64,
            QDType::QUInt4x2 => 0,
        }
    }

    /// Largest value the storage type holds.
    pub const fn max(self) -> i64 {
        match self {
            QDType::QUInt8 => 255,
            QDType::QInt8 => 127,
            QDType::QInt32 => i32::MAX as i64,
            QDType::QUInt4x2 => 15,
        }
    }

    /// PyTorch's name, e.g. `torch.quint8`.
    pub const fn torch_name(self) -> &'static str {
        match self {
            QDType::QUInt8 => "torch.quint8",
            QDType::QInt8 => "torch.qint8",
            QDType::QInt32 => "torch.qint32",
            QDType::QUInt4x2 => "torch.quint4x2",
        }
    }
}

/// How scales and zero points are chosen and laid out, as PyTorch's `torch.qscheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QScheme {
    /// One scale and zero point for the whole tensor.
    PerTensorAffine,
    /// One scale, zero point fixed at the middle of the range (0 for signed types).
    PerTensorSymmetric,
    /// A scale and integer zero point per slice along an axis.
    PerChannelAffine,
    /// A scale per slice, zero points fixed at the middle of the range.
    PerChannelSymmetric,
    /// A float scale and float zero point per slice (embedding weights).
    PerChannelAffineFloatQParams,
}

impl QScheme {
    /// True for the three per-channel schemes.
    pub const fn is_per_channel(self) -> bool {
        matches!(
            self,
            QScheme::PerChannelAffine | QScheme::PerChannelSymmetric | QScheme::PerChannelAffineFloatQParams
        )
    }

    /// True for the two symmetric schemes.
    pub const fn is_symmetric(self) -> bool {
        matches!(self, QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric)
    }

    /// PyTorch's name, e.g. `torch.per_tensor_affine`.
    pub const fn torch_name(self) -> &'static str {
        match self {
            QScheme::PerTensorAffine => "torch.per_tensor_affine",
            QScheme::PerTensorSymmetric => "torch.per_tensor_symmetric",
            QScheme::PerChannelAffine => "torch.per_channel_affine",
            QScheme::PerChannelSymmetric => "torch.per_channel_symmetric",
            QScheme::PerChannelAffineFloatQParams => "torch.per_channel_affine_float_qparams",
        }
    }
}

/// Displays each type as its PyTorch name (`torch.quint8`, `torch.per_tensor_affine`).
macro_rules! display_as_torch_name {
    ($($ty:ty),+) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.torch_name())
            }
        }
    )+};
}

display_as_torch_name!(QDType, QScheme);
