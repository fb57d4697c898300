//! The trade-off curve's rows and how a [`Fallback`](super::Fallback) prints.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which step of the search evaluated a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Every layer quantized.
    Quantized,
    /// The greedy pass: the previous row's float layers plus the next most damaging layer.
    Greedy,
    /// The greedy pass's last possible row: every candidate layer float.
    AllFloat,
    /// The pruning pass: the current choice without one of its layers.
    Prune,
    /// The swapping pass: the current choice with two of its layers traded for one other.
    Swap,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Quantized => "quantized",
            Step::Greedy => "greedy",
            Step::AllFloat => "all float",
            Step::Prune => "prune",
            Step::Swap => "swap",
        }
    }
}

/// One evaluated configuration: which layers were float, the metric, whether it met the target,
/// and the latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The step that evaluated it.
    pub step: Step,
    /// The float layers (paths), most damaging first.
    pub float_layers: Vec<String>,
    /// What this row changed in the set it started from: `+layer` (greedy), `-layer` (prune),
    /// `-a -b +c` (swap); none for the all-quantized row.
    pub changed: Option<String>,
    /// The evaluation closure's metric (dB for an SQNR target). JSON has no infinities: a
    /// non-finite metric is written as `null` and read back as NaN.
    #[serde(deserialize_with = "null_as_nan")]
    pub metric: f64,
    /// Whether the metric meets the target.
    pub meets: bool,
    /// Median latency of a batch-1 forward pass, in milliseconds.
    pub latency_ms: f64,
}

/// An `f64` that serde_json wrote as `null` (it writes non-finite numbers so) as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// `rows` as an aligned text table (step, change and float layers left-aligned, numbers
/// right-aligned).
pub(super) fn write_rows(f: &mut fmt::Formatter<'_>, rows: &[Row]) -> fmt::Result {
    let header = ["step", "k", "metric", "meets", "latency ms", "change", "float layers"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.step.name().to_string(),
                r.float_layers.len().to_string(),
                format!("{:.2}", r.metric),
                if r.meets { "yes" } else { "no" }.to_string(),
                format!("{:.3}", r.latency_ms),
                r.changed.clone().unwrap_or_else(|| "-".to_string()),
                if r.float_layers.is_empty() { "-".to_string() } else { r.float_layers.join(", ") },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, row: &[&str]| -> fmt::Result {
        let mut text = String::new();
        for (i, (cell, &w)) in row.iter().zip(&widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if i == 0 || i + 2 >= row.len() {
                text.push_str(&format!("{sep}{cell:<w$}"));
            } else {
                text.push_str(&format!("{sep}{cell:>w$}"));
            }
        }
        writeln!(f, "{}", text.trim_end())
    };
    line(f, &header)?;
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    line(f, &rule.iter().map(String::as_str).collect::<Vec<_>>())?;
    for row in &cells {
        line(f, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}
