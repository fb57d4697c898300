//! The signal-to-quantization-noise ratio, and how reports print it.

use ndarray::ArrayD;

use crate::{GraphError, GraphResult};

/// `compute_sqnr(x, y)`: the signal-to-quantization-noise ratio of `y` against the reference
/// `x`, `20 log10(‖x‖ / ‖x − y‖)` in dB (sums in f64; PyTorch's `torch.norm` sums in float32).
/// Equal tensors give `+inf`; a zero reference with a nonzero `y` gives `-inf`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f32, 4.0]).unwrap();
/// let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f32, 4.5]).unwrap();
/// // ‖x‖ = 5, ‖x − y‖ = 0.5: 20 log10(10) = 20 dB.
/// assert!((qgraph::ns::compute_sqnr(&x, &y)? - 20.0).abs() < 1e-9);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn compute_sqnr(x: &ArrayD<f32>, y: &ArrayD<f32>) -> GraphResult<f64> {
    let mut acc = SqnrSum::default();
    acc.add(x, y)?;
    Ok(acc.db())
}

/// Signal and noise energies summed over several tensor pairs (all batches of one layer), so
/// that the SQNR of a whole data set is [`compute_sqnr`] of everything laid end to end.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qgraph::ns::SqnrSum;
/// let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f32, 4.0]).unwrap();
/// let mut sum = SqnrSum::default();
/// sum.add(&x, &x.mapv(|v| v + 0.25))?;
/// sum.add(&x, &x)?;
/// // ‖x‖² summed twice = 50, noise 2 · 0.0625: 10 log10(400).
/// assert!((sum.db() - 10.0 * 400f64.log10()).abs() < 1e-9);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SqnrSum {
    signal: f64,
    noise: f64,
}

impl SqnrSum {
    /// Adds `‖x‖²` and `‖x − y‖²`; an error if the shapes differ.
    pub fn add(&mut self, x: &ArrayD<f32>, y: &ArrayD<f32>) -> GraphResult<()> {
        if x.shape() != y.shape() {
            return Err(GraphError::Mismatch {
                context: "compute_sqnr",
                reason: format!(
                    "the reference has shape {:?} and the compared tensor {:?}; compare outputs of the same layer",
                    x.shape(),
                    y.shape()
                ),
            });
        }
        for (&a, &b) in x.iter().zip(y) {
            let (a, b) = (f64::from(a), f64::from(b));
            self.signal += a * a;
            self.noise += (a - b) * (a - b);
        }
        Ok(())
    }

    /// The noise-to-signal power ratio (`+inf` for noise on a zero signal, 0 without noise).
    pub(crate) fn nsr(&self) -> f64 {
        if self.noise == 0.0 { 0.0 } else { self.noise / self.signal }
    }

    /// `10 log10(signal / noise)` in dB (`+inf` without noise).
    pub fn db(&self) -> f64 {
        if self.noise == 0.0 { f64::INFINITY } else { 10.0 * (self.signal / self.noise).log10() }
    }
}

/// `inf`, `-` for none, else two decimals.
pub(crate) fn db_text(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.to_string(),
        Some(v) => format!("{v:.2}"),
    }
}

/// `Option<f64>` decibels in serde: `null`, a number, or `"inf"` / `"-inf"` / `"nan"` (JSON has
/// no infinities).
pub(super) mod decibels {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Db {
        Number(f64),
        Text(String),
    }

    pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(v) if v.is_finite() => s.serialize_some(&Db::Number(*v)),
            Some(v) => s.serialize_some(&Db::Text(v.to_string().to_lowercase())),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Db>::deserialize(d)? {
            None => Ok(None),
            Some(Db::Number(v)) => Ok(Some(v)),
            Some(Db::Text(t)) => t
                .parse::<f64>()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number of decibels"))),
        }
    }
}
