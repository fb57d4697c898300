//! Runs the PyTorch side of the benchmarks: every `tools/bench/torch_<family>.py`, once per thread
//! count in the results, each printing `{"<group>/<case>": {"<engine>": median_ns}}`.
//! `torch_models.py` is left to `cargo xtask bench --models` (crate::models), which runs it with
//! its own arguments through [`run_script`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::results::BenchResult;

/// PyTorch's median time in ns per benchmark id (`<group>/<case>/t<threads>`) and engine.
pub type TorchTimes = BTreeMap<String, BTreeMap<String, f64>>;

/// What one script writes: `{"<group>/<case>": {"<engine>": number}}` (plus, for
/// `torch_models.py`, maps of other numbers per case under keys such as `memory`).
pub type ScriptOutput = BTreeMap<String, BTreeMap<String, f64>>;

/// The whole-model script, run only by `cargo xtask bench --models`.
pub const MODELS_SCRIPT: &str = "torch_models.py";

/// The interpreter with PyTorch: `$QTOOLKIT_TORCH_PYTHON`, else the one `torch-env.sh` sets up.
pub fn python() -> Result<PathBuf, String> {
    let path = match std::env::var_os("QTOOLKIT_TORCH_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".torch-ref/bin/python"),
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "--vs-torch needs PyTorch: {} does not exist; run ../shared/tools/torch-env.sh or set QTOOLKIT_TORCH_PYTHON",
            path.display()
        ))
    }
}

/// Times PyTorch on every family of benchmarks that has a script, at the thread counts `rows` use.
pub fn run(root: &Path, rows: &[BenchResult]) -> Result<TorchTimes, String> {
    let python = python()?;
    let dir = root.join("tools/bench");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("torch_") && n.ends_with(".py") && n != MODELS_SCRIPT)
        })
        .collect();
    scripts.sort();
    let wanted: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let threads: BTreeSet<usize> = rows.iter().map(BenchResult::threads).collect();
    let mut times = TorchTimes::new();
    for script in &scripts {
        for &t in &threads {
            for (case, engines) in run_script(&python, script, t, &[])? {
                let id = format!("{case}/t{t}");
                if wanted.contains(id.as_str()) {
                    times.insert(id, engines);
                }
            }
        }
    }
    Ok(times)
}

/// Runs `python script --threads N --out TMP ARGS` and reads the JSON it writes to TMP.
pub fn run_script(
    python: &Path,
    script: &Path,
    threads: usize,
    args: &[&OsStr],
) -> Result<ScriptOutput, String> {
    let out = std::env::temp_dir().join(format!("xtask-torch-{}-{threads}.json", std::process::id()));
    eprintln!("xtask bench: PyTorch, {} at {threads} thread(s)...", script.display());
    let status = Command::new(python)
        .arg(script)
        .args(["--threads", &threads.to_string(), "--out"])
        .arg(&out)
        .args(args)
        .status()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", script.display()));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", script.display()))
}
