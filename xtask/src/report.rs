//! The table `cargo xtask bench` prints and writes as JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use qkernels::Isa;
use serde::Serialize;

use crate::peak::Peaks;
use crate::results::{BenchResult, Work};
use crate::torch::TorchTimes;

/// One benchmark, with its rate against the matching peak and PyTorch.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    median_ns: f64,
    /// `GOPS`, `GB/s`, or empty when the benchmark declares no throughput.
    unit: &'static str,
    rate: Option<f64>,
    /// The peak `rate` is compared with (per core times threads, or copy bandwidth).
    peak: Option<f64>,
    percent_of_peak: Option<f64>,
    /// PyTorch engine, its median ns, and ours / PyTorch.
    torch: Vec<(String, f64, f64)>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    date: String,
    cpu: String,
    isa: String,
    peaks: Peaks,
    rows: Vec<Row>,
}

impl Report {
    /// Builds the report from the measured peaks, criterion's results and PyTorch's times.
    pub fn new(peaks: &Peaks, results: &[BenchResult], torch: &TorchTimes) -> Self {
        let isa = Isa::active();
        let rows = results.iter().map(|r| row(r, peaks, isa, torch)).collect();
        Report {
            date: utc_date(SystemTime::now()),
            cpu: cpu_name(),
            isa: isa.to_string(),
            peaks: *peaks,
            rows,
        }
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let p = &self.peaks;
        let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        let mut out = String::new();
        let _ = writeln!(out, "{} | {} | qkernels tier: {}", self.date, self.cpu, self.isa);
        let _ = writeln!(
            out,
            "peaks per core: int8 tdpbusd {} GOPS, int8 vpdpbusd {} GOPS, int8 vpmaddubsw {} GOPS, f32 FMA {} GFLOPS; copy {:.1} GB/s (1 thread), {:.1} GB/s (2 threads)",
            show(p.int8_amx_gops),
            show(p.int8_vnni_gops),
            show(p.int8_avx2_gops),
            show(p.f32_fma_gflops),
            p.copy_gbps_1t,
            p.copy_gbps_2t
        );
        let engines: Vec<String> = {
            let mut e: Vec<String> =
                self.rows.iter().flat_map(|r| r.torch.iter().map(|t| t.0.clone())).collect();
            e.sort();
            e.dedup();
            e
        };
        let mut header = vec!["benchmark".to_string(), "median".into(), "rate".into(), "% peak".into()];
        header.extend(engines.iter().map(|e| format!("/torch {e}")));
        let mut lines = vec![header];
        for r in &self.rows {
            let mut cells = vec![
                r.id.clone(),
                format_time(r.median_ns),
                r.rate.map_or(String::new(), |v| format!("{v:.1} {}", r.unit)),
                r.percent_of_peak.map_or(String::new(), |v| format!("{v:.0}%")),
            ];
            for e in &engines {
                cells.push(
                    r.torch.iter().find(|t| &t.0 == e).map_or(String::new(), |t| format!("{:.2}", t.2)),
                );
            }
            lines.push(cells);
        }
        out.push_str(&align(&lines));
        out
    }

    /// Writes the report as `bench-<unix seconds>.json` and `latest.json` in `dir`.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let path = dir.join(format!("bench-{stamp}.json"));
        for file in [&path, &dir.join("latest.json")] {
            std::fs::write(file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(path)
    }
}

/// A result row: rate from the declared work, peak by kind of work, group and tier.
fn row(r: &BenchResult, peaks: &Peaks, isa: Isa, torch: &TorchTimes) -> Row {
    let threads = r.threads() as f64;
    let (unit, rate, peak) = match r.work {
        Work::Ops(ops) => {
            let per_core = if r.group() == "float" {
                peaks.f32_fma_gflops
            } else {
                match isa {
                    Isa::Amx => peaks.int8_amx_gops,
                    Isa::Avx512Vnni => peaks.int8_vnni_gops,
                    Isa::Avx2 | Isa::Avx512 => peaks.int8_avx2_gops,
                    // Scalar, and tiers of other architectures.
                    _ => None,
                }
            };
            ("GOPS", Some(ops as f64 / r.median_ns), per_core.map(|p| p * threads))
        }
        Work::Bytes(bytes) => {
            let copy = if r.threads() >= 2 { peaks.copy_gbps_2t } else { peaks.copy_gbps_1t };
            ("GB/s", Some(bytes as f64 / r.median_ns), Some(copy))
        }
        Work::Unknown => ("", None, None),
    };
    let percent_of_peak = rate.zip(peak).map(|(rate, peak)| 100.0 * rate / peak);
    let torch = torch
        .get(&r.id)
        .map(|engines| engines.iter().map(|(e, &ns)| (e.clone(), ns, r.median_ns / ns)).collect())
        .unwrap_or_default();
    Row { id: r.id.clone(), median_ns: r.median_ns, unit, rate, peak, percent_of_peak, torch }
}

/// `1.23 ms`-style time.
pub(crate) fn format_time(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.3} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

/// Left-aligns the first column and right-aligns the others.
pub(crate) fn align(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let width =
        |c: usize| lines.iter().filter_map(|l| l.get(c)).map(|s| s.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let mut out = String::new();
    for line in lines {
        for (c, cell) in line.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

/// The CPU's model name from /proc/cpuinfo.
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `YYYY-MM-DD HH:MM UTC` (days-to-civil conversion, proleptic Gregorian calendar).
pub(crate) fn utc_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        assert_eq!(
            utc_date(UNIX_EPOCH + std::time::Duration::from_secs(1_795_754_100)),
            "2026-11-27 04:35 UTC"
        );
    }

    #[test]
    fn rows_compare_with_the_right_peak() {
        let peaks = Peaks {
            int8_amx_gops: Some(3200.0),
            int8_vnni_gops: Some(400.0),
            int8_avx2_gops: Some(200.0),
            f32_fma_gflops: Some(100.0),
            copy_gbps_1t: 20.0,
            copy_gbps_2t: 30.0,
        };
        let torch: TorchTimes = [("conv/a/t2".to_string(), [("x86".to_string(), 2000.0)].into())].into();
        let conv = BenchResult { id: "conv/a/t2".into(), median_ns: 1000.0, work: Work::Ops(640_000) };
        let r = row(&conv, &peaks, Isa::Avx512Vnni, &torch);
        assert_eq!((r.rate, r.peak, r.percent_of_peak), (Some(640.0), Some(800.0), Some(80.0)));
        assert_eq!(r.torch, [("x86".to_string(), 2000.0, 0.5)]);
        let f = BenchResult { id: "float/b/t1".into(), median_ns: 10.0, work: Work::Ops(500) };
        assert_eq!(row(&f, &peaks, Isa::Avx512Vnni, &torch).percent_of_peak, Some(50.0));
        let add = BenchResult { id: "elementwise/add/t2".into(), median_ns: 10.0, work: Work::Bytes(150) };
        assert_eq!(row(&add, &peaks, Isa::Avx2, &torch).percent_of_peak, Some(50.0));
        assert_eq!(
            align(&[vec!["a".into(), "bb".into()], vec!["ccc".into(), "d".into()]]),
            "a    bb\nccc   d\n"
        );
    }
}
