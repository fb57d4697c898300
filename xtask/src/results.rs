//! Reads criterion's per-benchmark files: `new/benchmark.json` (id, throughput) and
//! `new/estimates.json` (median time).

use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;

/// What a benchmark's throughput counts (tools/bench/README.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Arithmetic operations (2 per multiply-add): reported as GOPS.
    Ops(u64),
    /// Bytes read plus written: reported as GB/s.
    Bytes(u64),
    /// No throughput declared: time only.
    Unknown,
}

/// One benchmark result.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// Criterion's full id, `<group>/<case>/t<threads>`.
    pub id: String,
    /// Median time per iteration, nanoseconds.
    pub median_ns: f64,
    /// The work one iteration does.
    pub work: Work,
}

impl BenchResult {
    /// The thread count from the `/t<N>` suffix of the id (1 without one).
    pub fn threads(&self) -> usize {
        self.id
            .rsplit('/')
            .next()
            .and_then(|last| last.strip_prefix('t'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }

    /// The group: the id up to its first `/`.
    pub fn group(&self) -> &str {
        self.id.split('/').next().unwrap_or(&self.id)
    }
}

#[derive(Deserialize)]
struct BenchmarkFile {
    full_id: String,
    throughput: Option<Throughput>,
}

#[derive(Deserialize)]
enum Throughput {
    Bytes(u64),
    BytesDecimal(u64),
    Elements(u64),
}

#[derive(Deserialize)]
struct EstimatesFile {
    median: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

/// Every result under `criterion_dir` written at or after `since` whose id contains `filter`
/// (or one of its `|`-separated alternatives, as criterion's regex reads it), sorted by id.
pub fn collect(
    criterion_dir: &Path,
    since: SystemTime,
    filter: Option<&str>,
) -> Result<Vec<BenchResult>, String> {
    let mut found = Vec::new();
    visit(criterion_dir, &mut |dir| {
        let (bench, estimates) = (dir.join("benchmark.json"), dir.join("estimates.json"));
        let fresh = std::fs::metadata(&estimates).and_then(|m| m.modified()).is_ok_and(|t| t >= since);
        if dir.file_name().is_some_and(|n| n == "new") && fresh {
            found.push(read_one(&bench, &estimates)?);
        }
        Ok(())
    })?;
    found.retain(|r: &BenchResult| filter.is_none_or(|f| f.split('|').any(|alt| r.id.contains(alt))));
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

fn read_one(bench: &Path, estimates: &Path) -> Result<BenchResult, String> {
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let file: BenchmarkFile =
        serde_json::from_str(&read(bench)?).map_err(|e| format!("{}: {e}", bench.display()))?;
    let est: EstimatesFile =
        serde_json::from_str(&read(estimates)?).map_err(|e| format!("{}: {e}", estimates.display()))?;
    let work = match file.throughput {
        Some(Throughput::Elements(n)) => Work::Ops(n),
        Some(Throughput::Bytes(n) | Throughput::BytesDecimal(n)) => Work::Bytes(n),
        None => Work::Unknown,
    };
    Ok(BenchResult { id: file.full_id, median_ns: est.median.point_estimate, work })
}

/// Calls `f` on `dir` and every directory below it.
fn visit(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<(), String>) -> Result<(), String> {
    if !dir.is_dir() {
        return Ok(());
    }
    f(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            visit(&entry.path(), f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_group_and_threads() {
        let r = BenchResult { id: "conv/resnet18_3x3/t2".into(), median_ns: 1.0, work: Work::Unknown };
        assert_eq!((r.group(), r.threads()), ("conv", 2));
        let plain = BenchResult { id: "qcore/x".into(), median_ns: 1.0, work: Work::Unknown };
        assert_eq!((plain.group(), plain.threads()), ("qcore", 1));
    }

    #[test]
    fn criterion_files_are_read() {
        let dir = std::env::temp_dir().join(format!("xtask-results-{}", std::process::id()));
        let new = dir.join("g/case_t1/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"g/case/t1","throughput":{"Elements":2000}}"#,
        )
        .unwrap();
        std::fs::write(new.join("estimates.json"), r#"{"median":{"point_estimate":1000.0}}"#).unwrap();
        let rows = collect(&dir, SystemTime::UNIX_EPOCH, None).unwrap();
        assert_eq!(rows, [BenchResult { id: "g/case/t1".into(), median_ns: 1000.0, work: Work::Ops(2000) }]);
        assert!(collect(&dir, SystemTime::UNIX_EPOCH, Some("nope")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
