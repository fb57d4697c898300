//! How a quantized output uses its codes: clipping at either end, codes never reached.

use serde::{Deserialize, Serialize};

use crate::Value;

/// How a layer's quantized output uses its integer range, over all inputs of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeUse {
    /// The output's dtype (`quint8`, `qint8`).
    pub dtype: String,
    /// The output's scale.
    pub scale: f64,
    /// The output's zero point.
    pub zero_point: i64,
    /// Percent of the elements clipped at the dtype's lowest code. Counted only when that code
    /// is not the zero point: at a zero point of `qmin` (after a ReLU) it stands for 0.0.
    pub saturated_low: f64,
    /// Percent of the elements at the dtype's highest code (clipped).
    pub saturated_high: f64,
    /// Percent of the dtype's codes outside the span `[lowest, highest]` of the codes seen
    /// (`reduce_range` observers leave half of them unused by design).
    pub unused_codes: f64,
}

/// Codes seen in a layer's quantized outputs.
#[derive(Debug, Clone)]
pub(crate) struct Codes {
    dtype: &'static str,
    qmin: i64,
    qmax: i64,
    scale: f64,
    zero_point: i64,
    count: usize,
    at_min: usize,
    at_max: usize,
    lowest: i64,
    highest: i64,
}

impl Codes {
    /// The empty tally for `value`'s dtype and parameters, and its codes; `None` unless it is
    /// a quint8 or qint8 value.
    pub(crate) fn of(value: &Value) -> Option<(Self, Vec<i64>)> {
        let (dtype, qmin, qmax, q, codes): (_, _, _, _, Vec<i64>) = match value {
            Value::Quant(t) => {
                ("quint8", 0, 255, t.qparams(), t.data().iter().map(|&c| i64::from(c)).collect())
            }
            Value::QInt8(t) => {
                ("qint8", -128, 127, t.qparams(), t.data().iter().map(|&c| i64::from(c)).collect())
            }
            _ => return None,
        };
        let empty = Self {
            dtype,
            qmin,
            qmax,
            scale: q.scale,
            zero_point: q.zero_point,
            count: 0,
            at_min: 0,
            at_max: 0,
            lowest: qmax,
            highest: qmin,
        };
        Some((empty, codes))
    }

    /// Counts `codes`.
    pub(crate) fn add(&mut self, codes: &[i64]) {
        self.count += codes.len();
        for &c in codes {
            self.at_min += usize::from(c == self.qmin);
            self.at_max += usize::from(c == self.qmax);
            self.lowest = self.lowest.min(c);
            self.highest = self.highest.max(c);
        }
    }

    /// The tally as a [`RangeUse`].
    pub(crate) fn range_use(&self) -> RangeUse {
        let percent = |n: usize| if self.count == 0 { 0.0 } else { 100.0 * n as f64 / self.count as f64 };
        let span = if self.count == 0 { 0 } else { self.highest - self.lowest + 1 };
        let codes = self.qmax - self.qmin + 1;
        RangeUse {
            dtype: self.dtype.to_string(),
            scale: self.scale,
            zero_point: self.zero_point,
            saturated_low: if self.zero_point == self.qmin { 0.0 } else { percent(self.at_min) },
            saturated_high: percent(self.at_max),
            unused_codes: 100.0 * (codes - span) as f64 / codes as f64,
        }
    }
}
