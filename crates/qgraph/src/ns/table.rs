//! A [`Report`] as an aligned text table.

use std::fmt;

use super::range::RangeUse;
use super::report::Report;
use super::sqnr::db_text;

impl fmt::Display for Report {
    /// An aligned text table, one row per layer, then the worst layer and the model output (SQNR,
    /// and top-1 agreement for a classifier's output).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "layer",
            "module",
            "weight dB",
            "output dB",
            "input dB",
            "forced dB",
            "own dB",
            "sat lo %",
            "sat hi %",
            "unused %",
            "observer",
        ];
        let pct = |r: &Option<RangeUse>, get: fn(&RangeUse) -> f64| {
            r.as_ref().map_or("-".to_string(), |r| format!("{:.2}", get(r)))
        };
        let rows: Vec<[String; 11]> = self
            .layers
            .iter()
            .map(|l| {
                [
                    l.name.clone(),
                    l.module.clone(),
                    db_text(l.weight_sqnr),
                    db_text(l.output_sqnr),
                    db_text(l.input_sqnr),
                    db_text(l.forced_sqnr),
                    db_text(l.own_sqnr),
                    pct(&l.range, |r| r.saturated_low),
                    pct(&l.range, |r| r.saturated_high),
                    pct(&l.range, |r| r.unused_codes),
                    l.observer.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: Vec<&str>| -> fmt::Result {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                let sep = if i == 0 { "" } else { "  " };
                // Names and the observer are left-aligned, numbers right-aligned.
                if i < 2 || i == 10 {
                    text.push_str(&format!("{sep}{cell:<w$}"));
                } else {
                    text.push_str(&format!("{sep}{cell:>w$}"));
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(f, header.to_vec())?;
        line(
            f,
            widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().iter().map(String::as_str).collect(),
        )?;
        for row in &rows {
            line(f, row.iter().map(String::as_str).collect())?;
        }
        match self.worst_layer() {
            Some(l) => write!(
                f,
                "worst layer: {} ({}), own SQNR {} dB, teacher-forced {} dB, free-running {} dB ({} input batches)",
                l.name,
                l.module,
                db_text(l.own_sqnr),
                db_text(l.forced_sqnr),
                db_text(l.output_sqnr),
                self.inputs
            ),
            None => write!(f, "no layer could be compared ({} input batches)", self.inputs),
        }?;
        if let Some(output) = &self.output {
            write!(f, "\nmodel output: SQNR {} dB", db_text(output.sqnr))?;
            if let Some(top1) = output.top1.filter(|t| t.classes > 1) {
                let percent = 100.0 * top1.fraction();
                write!(f, "\ntop-1 agreement: {}/{} ({percent:.2}%)", top1.agree, top1.rows)?;
            }
        }
        Ok(())
    }
}
