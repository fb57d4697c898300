//! The `quant_min`/`quant_max` rules: which integers a dtype, or an observer's custom range,
//! lets values and zero points take.

use crate::{QDType, QError, QResult};

impl QDType {
    /// Checks that `zero_point` fits the dtype.
    pub(crate) fn check_zero_point(self, context: &'static str, zero_point: i64) -> QResult<()> {
        if (self.min()..=self.max()).contains(&zero_point) {
            Ok(())
        } else {
            Err(QError::ZeroPointOutOfRange {
                context,
                zero_point,
                dtype: self,
                qmin: self.min(),
                qmax: self.max(),
            })
        }
    }
}

/// The `[qmin, qmax]` an observer quantizes to, by PyTorch 2.x's `calculate_qmin_qmax`.
///
/// * No custom range (`None, None`): the dtype's full range, halved by `reduce_range` for the
///   8-bit types (`[0, 127]`, `[-64, 63]`); qint32 ignores `reduce_range`.
/// * A custom range (both bounds given) is used as given, floor-halved by `reduce_range`.
///   It must include 0 and have `quant_min < quant_max` (PyTorch's observer checks), and must
///   fit the dtype (PyTorch checks only the length; a range outside the storage type cannot work).
///
/// Giving only one bound is an error here; PyTorch silently ignores it.
///
/// ```
/// use qcore::{calculate_qmin_qmax, QDType};
/// assert_eq!(calculate_qmin_qmax(None, None, QDType::QUInt8, true)?, (0, 127));
/// assert_eq!(calculate_qmin_qmax(Some(-127), Some(127), QDType::QInt8, false)?, (-127, 127));
/// assert_eq!(calculate_qmin_qmax(Some(-127), Some(127), QDType::QInt8, true)?, (-64, 63));
/// # Ok::<(), qcore::QError>(())
/// ```
pub fn calculate_qmin_qmax(
    quant_min: Option<i64>,
    quant_max: Option<i64>,
    dtype: QDType,
    reduce_range: bool,
) -> QResult<(i64, i64)> {
    const CONTEXT: &str = "calculate_qmin_qmax";
    let invalid = |quant_min, quant_max, reason| QError::InvalidQuantRange {
        context: CONTEXT,
        quant_min,
        quant_max,
        dtype,
        reason,
    };
    match (quant_min, quant_max) {
        (None, None) => Ok(match (dtype, reduce_range) {
            (QDType::QInt32 | QDType::QUInt4x2, _) => (dtype.min(), dtype.max()),
            (_, false) => (dtype.min(), dtype.max()),
            (QDType::QInt8, true) => (-64, 63),
            (QDType::QUInt8, true) => (0, 127),
        }),
        (Some(lo), Some(hi)) => {
            if !(lo <= 0 && 0 <= hi) {
                return Err(invalid(lo, hi, "a custom range must include 0"));
            }
            if lo >= hi {
                return Err(invalid(lo, hi, "quant_min must be strictly less than quant_max"));
            }
            if lo < dtype.min() || hi > dtype.max() {
                return Err(invalid(lo, hi, "the range must lie within the dtype's own range"));
            }
            Ok(if reduce_range { (lo.div_euclid(2), hi.div_euclid(2)) } else { (lo, hi) })
        }
        (lo, hi) => Err(invalid(
            lo.unwrap_or(i64::MIN),
            hi.unwrap_or(i64::MAX),
            "give both quant_min and quant_max, or neither",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ranges_follow_pytorch() {
        let cases = [
            (QDType::QUInt8, false, (0, 255)),
            (QDType::QUInt8, true, (0, 127)),
            (QDType::QInt8, false, (-128, 127)),
            (QDType::QInt8, true, (-64, 63)),
            (QDType::QInt32, false, (-(1 << 31), (1 << 31) - 1)),
            (QDType::QInt32, true, (-(1 << 31), (1 << 31) - 1)),
            // quint4x2 takes the `else` branch of PyTorch's function whatever reduce_range says.
            (QDType::QUInt4x2, false, (0, 15)),
            (QDType::QUInt4x2, true, (0, 15)),
        ];
        for (dtype, reduce, expected) in cases {
            assert_eq!(calculate_qmin_qmax(None, None, dtype, reduce).unwrap(), expected, "{dtype} {reduce}");
        }
    }

    #[test]
    fn custom_ranges_are_used_as_given_and_floor_halved() {
        assert_eq!(calculate_qmin_qmax(Some(0), Some(15), QDType::QUInt8, false).unwrap(), (0, 15));
        assert_eq!(calculate_qmin_qmax(Some(-127), Some(127), QDType::QInt8, true).unwrap(), (-64, 63));
        assert_eq!(calculate_qmin_qmax(Some(-7), Some(7), QDType::QInt8, true).unwrap(), (-4, 3));
    }

    #[test]
    fn bad_custom_ranges_are_errors_naming_the_range() {
        for (lo, hi) in [(1, 10), (-10, -1), (0, 0), (-200, 100), (0, 256)] {
            let err = calculate_qmin_qmax(Some(lo), Some(hi), QDType::QInt8, false).unwrap_err();
            assert!(
                matches!(err, QError::InvalidQuantRange { quant_min, quant_max, .. } if quant_min == lo && quant_max == hi)
            );
        }
        let half = calculate_qmin_qmax(Some(0), None, QDType::QUInt8, false).unwrap_err();
        assert!(half.to_string().contains("give both quant_min and quant_max"), "{half}");
    }
}
