//! `cargo xtask bench --models`: whole-model latency, throughput, memory and file size, ours
//! against PyTorch.
//!
//! Builds `qbench-models` (benches/bin/models.rs) in release and runs it once per (model, kind,
//! threads, batch), each configuration in its own process so that its memory is its own. With
//! `--vs-torch` it first exports each model's float weights with `tools/export_torchvision.py`
//! into `<target>/models/<model>.safetensors` (unless present), so that both sides run the same
//! weights, and runs `tools/bench/torch_models.py` for each (model, threads, batch) right after
//! ours. Prints one table (time of one batch and images/s), writes it as
//! `<target>/xtask-bench/models.json` and, with `--chart`, the latencies at the smallest batch
//! (batch 1 by default) as an SVG bar chart.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::bench::Options;
use crate::report::{align, cpu_name, format_time, utc_date};
use crate::torch::{self, MODELS_SCRIPT, ScriptOutput};

/// The zoo's models, in table order.
const MODELS: [&str; 3] = ["resnet18", "resnet50", "mobilenet_v2"];
/// Float, then int8 (the workflow of `torch_models.py`).
const KINDS: [&str; 2] = ["float", "int8"];
/// The thread counts every configuration runs at.
const THREADS: [usize; 2] = [1, 2];
/// The binary that times one configuration.
const BINARY: &str = "qbench-models";
/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// One configuration as `qbench-models` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ours {
    model: String,
    kind: String,
    threads: usize,
    /// Images per inference (the input is `[batch, 3, 224, 224]`).
    #[serde(default = "batch_one")]
    batch: usize,
    /// Median time of one inference of the whole batch.
    median_ns: f64,
    runs: usize,
    /// Peak RSS during inference minus the RSS before the model was built, bytes.
    memory: u64,
    /// Peak RSS of the process over its life, bytes.
    peak_rss: u64,
    /// `qgraph::io::to_bytes(model).len()`.
    file_size: u64,
    /// Seconds to build (and for int8 fuse, calibrate and convert) the model.
    build_s: f64,
}

/// The batch of a `qbench-models` line that does not name one (before `--batch` existed).
fn batch_one() -> usize {
    1
}

/// PyTorch's numbers for one configuration, from `torch_models.py`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Torch {
    /// Median time of one inference of the whole batch.
    median_ns: f64,
    /// Same definition as [`Ours::memory`] (NaN if the script did not report it, `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    memory: f64,
    /// `torch.save(model.state_dict())` size in bytes (NaN / `null` likewise).
    #[serde(deserialize_with = "nan_if_null")]
    file_size: f64,
}

/// A number, or NaN for the `null` that serde_json writes for NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    model: String,
    kind: String,
    threads: usize,
    batch: usize,
    ours: Ours,
    torch: Option<Torch>,
    /// Our throughput: images of the batch per second of its median.
    images_per_s: f64,
    /// PyTorch's throughput, as [`Row::images_per_s`].
    torch_images_per_s: Option<f64>,
    /// Our median / PyTorch's (the same batch on both sides, so also PyTorch's images/s / ours).
    ours_over_torch: Option<f64>,
    /// int8 rows: our float median / our int8 median (same threads and batch).
    int8_speedup: Option<f64>,
    /// int8 rows: PyTorch's float median / its int8 median.
    torch_int8_speedup: Option<f64>,
    /// int8 rows: our int8 file size / our float file size.
    int8_file_ratio: Option<f64>,
}

/// The whole `--models` report.
#[derive(Debug, Serialize, Deserialize)]
struct ModelsReport {
    date: String,
    cpu: String,
    /// `/proc/loadavg` before and after the measurements (the machine may be shared).
    load_before: String,
    load_after: String,
    /// Each configuration was measured this many times; the fastest median is kept.
    rounds: usize,
    /// The batch sizes measured (`--batches`).
    batches: Vec<usize>,
    rows: Vec<Row>,
}

/// Runs `--models`: measure, print, write JSON (and the chart); or, with `--from`, print and
/// chart a kept report.
pub fn run(root: &Path, target: &Path, options: &Options) -> Result<(), String> {
    if let Some(from) = &options.from {
        let text = std::fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let report: ModelsReport =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a models.json: {e}", from.display()))?;
        println!("{}", render(&report));
        return write_chart(options, &report);
    }
    let models = selected_models(options.filter.as_deref())?;
    let binary = build_binary(root, target)?;
    let weights_dir = target.join("models");
    let python = if options.vs_torch { Some(torch::python()?) } else { None };
    if let Some(python) = &python {
        for model in &models {
            export_weights(root, python, &weights_dir, model)?;
        }
    }
    let load_before = load_average();
    eprintln!("xtask bench: load average before: {load_before}");
    // Ours and PyTorch's run of each (model, threads, batch) follow each other, so that a load
    // that changes during the run affects both sides alike; with several rounds, each side keeps
    // the fastest median of each configuration (a busy neighbour only ever slows a run down).
    let script = root.join("tools/bench").join(MODELS_SCRIPT);
    let mut ours: Vec<Ours> = Vec::new();
    let mut torch_out: BTreeMap<usize, ScriptOutput> = BTreeMap::new();
    for round in 1..=options.rounds {
        if options.rounds > 1 {
            eprintln!("xtask bench: round {round} of {}", options.rounds);
        }
        for model in &models {
            let weights = weights_dir.join(format!("{model}.safetensors"));
            let weights = weights.exists().then_some(weights);
            for threads in THREADS {
                for &batch in &options.batches {
                    for kind in KINDS {
                        let run = run_ours(&binary, model, kind, threads, batch, weights.as_deref())?;
                        keep_fastest(&mut ours, run);
                    }
                    if let Some(python) = &python {
                        let batch = batch.to_string();
                        let args: [&OsStr; 6] = [
                            "--models".as_ref(),
                            model.as_ref(),
                            "--weights-dir".as_ref(),
                            weights_dir.as_os_str(),
                            "--batch".as_ref(),
                            batch.as_ref(),
                        ];
                        let out = torch::run_script(python, &script, threads, &args)?;
                        merge_fastest(torch_out.entry(threads).or_default(), out);
                    }
                }
            }
        }
    }
    let load_after = load_average();
    eprintln!("xtask bench: load average after: {load_after}");
    let report = ModelsReport {
        date: utc_date(SystemTime::now()),
        cpu: cpu_name(),
        load_before,
        load_after,
        rounds: options.rounds,
        batches: options.batches.clone(),
        rows: rows(&ours, &torch_out),
    };
    println!("{}", render(&report));
    let dir = target.join("xtask-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("models.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("xtask bench: table written to {}", path.display());
    write_chart(options, &report)
}

/// Writes `--chart`, if given.
fn write_chart(options: &Options, report: &ModelsReport) -> Result<(), String> {
    if let Some(chart) = &options.chart {
        if let Some(parent) = chart.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(chart, svg(report)).map_err(|e| format!("{}: {e}", chart.display()))?;
        eprintln!("xtask bench: chart written to {}", chart.display());
    }
    Ok(())
}

/// The models FILTER names (comma-separated), or all of them.
fn selected_models(filter: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(filter) = filter else { return Ok(MODELS.to_vec()) };
    let mut chosen = Vec::new();
    for name in filter.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let model = MODELS
            .into_iter()
            .find(|m| *m == name)
            .ok_or_else(|| format!("unknown model {name}; --models takes some of {}", MODELS.join(",")))?;
        if !chosen.contains(&model) {
            chosen.push(model);
        }
    }
    if chosen.is_empty() {
        return Err(format!("no model named; --models takes some of {}", MODELS.join(",")));
    }
    Ok(chosen)
}

/// `cargo build --release -p qbench --bin qbench-models`; the path of the binary.
fn build_binary(root: &Path, target: &Path) -> Result<PathBuf, String> {
    eprintln!("xtask bench: building {BINARY} (release)...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--quiet", "--package", "qbench", "--bin", BINARY, "--target-dir"])
        .arg(target)
        .status()
        .map_err(|e| format!("could not run cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {BINARY} failed ({status})"));
    }
    Ok(target.join("release").join(BINARY))
}

/// Writes `dir/<model>.safetensors` with `tools/export_torchvision.py` unless it exists.
fn export_weights(root: &Path, python: &Path, dir: &Path, model: &str) -> Result<(), String> {
    let file = dir.join(format!("{model}.safetensors"));
    if file.exists() {
        return Ok(());
    }
    eprintln!("xtask bench: exporting {model}'s weights to {}...", file.display());
    let status = Command::new(python)
        .arg(root.join("tools/export_torchvision.py"))
        .arg(model)
        .arg(&file)
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if status.success() && file.exists() {
        Ok(())
    } else {
        Err(format!("tools/export_torchvision.py {model} failed ({status})"))
    }
}

/// Runs the binary on one configuration and parses its JSON line.
fn run_ours(
    binary: &Path,
    model: &str,
    kind: &str,
    threads: usize,
    batch: usize,
    weights: Option<&Path>,
) -> Result<Ours, String> {
    eprintln!("xtask bench: ours, {model} {kind} at {threads} thread(s), batch {batch}...");
    let mut command = Command::new(binary);
    let (threads, batch) = (threads.to_string(), batch.to_string());
    command.args(["--model", model, "--kind", kind, "--threads", &threads, "--batch", &batch]);
    if let Some(weights) = weights {
        command.arg("--weights").arg(weights);
    }
    let output = command.output().map_err(|e| format!("could not run {}: {e}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{BINARY} --model {model} --kind {kind} --threads {threads} --batch {batch} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let line = stdout.lines().last().unwrap_or_default();
    let ours: Ours = serde_json::from_str(line).map_err(|e| format!("{BINARY} printed {line:?}: {e}"))?;
    eprintln!(
        "xtask bench:   {} median over {} runs, {:.1} images/s (built in {:.1} s)",
        format_time(ours.median_ns),
        ours.runs,
        images_per_s(ours.batch, ours.median_ns),
        ours.build_s
    );
    Ok(ours)
}

/// Adds `new` to `ours`, or replaces the same configuration's measurement if `new` is faster.
fn keep_fastest(ours: &mut Vec<Ours>, new: Ours) {
    let same = |o: &&mut Ours| {
        o.model == new.model && o.kind == new.kind && o.threads == new.threads && o.batch == new.batch
    };
    match ours.iter_mut().find(same) {
        Some(old) if new.median_ns < old.median_ns => *old = new,
        Some(_) => {}
        None => ours.push(new),
    }
}

/// Merges one output of `torch_models.py` into `merged`: each case ([`torch_case`])
/// with all its numbers (time, memory, ...) from the run with the faster median.
fn merge_fastest(merged: &mut ScriptOutput, out: ScriptOutput) {
    let faster = |case: &str| {
        let time = |o: &ScriptOutput| o.get(case).and_then(|e| e.get("torch")).copied();
        match (time(&out), time(merged)) {
            (Some(new), Some(old)) => new < old,
            (new, _) => new.is_some(),
        }
    };
    let cases: Vec<String> = out.keys().filter(|k| k.starts_with("models/") && faster(k)).cloned().collect();
    for case in &cases {
        for (group, values) in &out {
            if group == case {
                merged.insert(case.clone(), values.clone());
            } else if let Some(&v) = values.get(case) {
                merged.entry(group.clone()).or_default().insert(case.clone(), v);
            }
        }
    }
}

/// The first line of `/proc/loadavg` (1, 5 and 15 minute load, tasks, last pid).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// The case `torch_models.py` names a configuration by: `models/<model>_<kind>` at batch 1 (as
/// before batches were measured), `models/<model>_<kind>_b<batch>` above.
fn torch_case(model: &str, kind: &str, batch: usize) -> String {
    if batch == 1 { format!("models/{model}_{kind}") } else { format!("models/{model}_{kind}_b{batch}") }
}

/// Images per second of a batch of `batch` images that takes `median_ns`.
fn images_per_s(batch: usize, median_ns: f64) -> f64 {
    batch as f64 * 1e9 / median_ns
}

/// PyTorch's numbers for one configuration ([`torch_case`]) in one output of `torch_models.py`.
fn torch_numbers(out: &ScriptOutput, model: &str, kind: &str, batch: usize) -> Option<Torch> {
    let key = torch_case(model, kind, batch);
    let field = |group: &str| out.get(group).and_then(|g| g.get(&key)).copied();
    Some(Torch {
        median_ns: out.get(&key)?.get("torch").copied()?,
        memory: field("memory").unwrap_or(f64::NAN),
        file_size: field("file_size").unwrap_or(f64::NAN),
    })
}

/// The table's rows: ours with PyTorch's numbers (per thread count and batch), the throughputs
/// and the int8 ratios.
fn rows(ours: &[Ours], torch: &BTreeMap<usize, ScriptOutput>) -> Vec<Row> {
    let find = |model: &str, kind: &str, threads: usize, batch: usize| {
        ours.iter().find(|o| o.model == model && o.kind == kind && o.threads == threads && o.batch == batch)
    };
    let torch_of = |o: &Ours, kind: &str| {
        torch.get(&o.threads).and_then(|out| torch_numbers(out, &o.model, kind, o.batch))
    };
    ours.iter()
        .map(|o| {
            let t = torch_of(o, &o.kind);
            let (float, torch_float) = if o.kind == "int8" {
                (find(&o.model, "float", o.threads, o.batch), torch_of(o, "float"))
            } else {
                (None, None)
            };
            Row {
                model: o.model.clone(),
                kind: o.kind.clone(),
                threads: o.threads,
                batch: o.batch,
                ours: o.clone(),
                torch: t,
                images_per_s: images_per_s(o.batch, o.median_ns),
                torch_images_per_s: t.map(|t| images_per_s(o.batch, t.median_ns)),
                ours_over_torch: t.map(|t| o.median_ns / t.median_ns),
                int8_speedup: float.map(|f| f.median_ns / o.median_ns),
                torch_int8_speedup: torch_float.zip(t).map(|(f, t)| f.median_ns / t.median_ns),
                int8_file_ratio: float.map(|f| o.file_size as f64 / f.file_size as f64),
            }
        })
        .collect()
}

/// The table as text.
fn render(report: &ModelsReport) -> String {
    let with_torch = report.rows.iter().any(|r| r.torch.is_some());
    let ms = |ns: f64| format!("{:.2}", ns / 1e6);
    let mib = |bytes: f64| if bytes.is_finite() { format!("{:.1}", bytes / MIB) } else { String::new() };
    let ratio = |r: Option<f64>, suffix: &str| r.map_or(String::new(), |r| format!("{r:.2}{suffix}"));
    let per_s = |v: f64| format!("{v:.1}");
    let mut header: Vec<String> =
        ["model", "kind", "threads", "batch", "ours ms", "ours images/s"].map(String::from).into();
    if with_torch {
        header.extend(["torch ms", "torch images/s", "ours/torch"].map(String::from));
    }
    header.push("int8 speed-up".into());
    if with_torch {
        header.push("torch int8 speed-up".into());
    }
    header.extend(["file MiB", "int8/float file"].map(String::from));
    if with_torch {
        header.push("torch file MiB".into());
    }
    header.push("memory MiB".into());
    if with_torch {
        header.push("torch memory MiB".into());
    }
    let mut lines = vec![header];
    for r in &report.rows {
        let mut cells = vec![
            r.model.clone(),
            r.kind.clone(),
            r.threads.to_string(),
            r.batch.to_string(),
            ms(r.ours.median_ns),
            per_s(r.images_per_s),
        ];
        if with_torch {
            cells.push(r.torch.map_or(String::new(), |t| ms(t.median_ns)));
            cells.push(r.torch_images_per_s.map_or(String::new(), per_s));
            cells.push(ratio(r.ours_over_torch, ""));
        }
        cells.push(ratio(r.int8_speedup, "x"));
        if with_torch {
            cells.push(ratio(r.torch_int8_speedup, "x"));
        }
        cells.push(mib(r.ours.file_size as f64));
        cells.push(ratio(r.int8_file_ratio, ""));
        if with_torch {
            cells.push(r.torch.map_or(String::new(), |t| mib(t.file_size)));
        }
        cells.push(mib(r.ours.memory as f64));
        if with_torch {
            cells.push(r.torch.map_or(String::new(), |t| mib(t.memory)));
        }
        lines.push(cells);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} | {} | fastest median of {} round(s) | ms: one batch | load before: {}",
        report.date, report.cpu, report.rounds, report.load_before
    );
    out.push_str(&align(&lines));
    let _ = writeln!(out, "load after: {}", report.load_after);
    out
}

/// Bar colours: ours float, ours int8, PyTorch float, PyTorch int8.
const SERIES: [(&str, &str); 4] = [
    ("ours float", "#9ecae1"),
    ("ours int8", "#3182bd"),
    ("PyTorch float", "#fdae6b"),
    ("PyTorch int8", "#e6550d"),
];

/// The latencies at the smallest batch measured (batch 1 unless `--batches` left it out) as an
/// SVG grouped bar chart: one panel per model (its own scale), a group of bars per thread count,
/// one bar per series of [`SERIES`] that was measured.
fn svg(report: &ModelsReport) -> String {
    let batch = report.rows.iter().map(|r| r.batch).min().unwrap_or(1);
    let charted: Vec<&Row> = report.rows.iter().filter(|r| r.batch == batch).collect();
    let mut models: Vec<&str> = Vec::new();
    for r in &charted {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    // (model, threads) -> the four series' medians in ms.
    let mut values: BTreeMap<(&str, usize), [Option<f64>; 4]> = BTreeMap::new();
    for r in &charted {
        let slot = values.entry((r.model.as_str(), r.threads)).or_default();
        let int8 = usize::from(r.kind == "int8");
        slot[int8] = Some(r.ours.median_ns / 1e6);
        slot[2 + int8] = r.torch.map(|t| t.median_ns / 1e6);
    }
    let (panel_w, panel_h, top, bottom, left) = (300.0, 260.0, 70.0, 66.0, 50.0);
    let (bar_w, bar_gap, group_gap) = (26.0, 4.0, 30.0);
    let width = left + panel_w * models.len() as f64 + 20.0;
    let height = top + panel_h + bottom;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">Batch-{batch} 224x224 latency, ms (lower is better) — {} — {}</text>"#,
        escape(&report.cpu),
        escape(&report.date)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">load average before: {}; after: {}</text>"##,
        left,
        height - 8.0,
        escape(&report.load_before),
        escape(&report.load_after)
    );
    for (i, (name, colour)) in SERIES.iter().enumerate() {
        let x = left + 130.0 * i as f64;
        let _ = writeln!(s, r#"<rect x="{x}" y="30" width="12" height="12" fill="{colour}"/>"#);
        let _ = writeln!(s, r#"<text x="{}" y="40">{name}</text>"#, x + 16.0);
    }
    for (p, model) in models.iter().enumerate() {
        let x0 = left + panel_w * p as f64;
        let groups: Vec<(usize, [Option<f64>; 4])> =
            values.iter().filter(|((m, _), _)| m == model).map(|((_, t), v)| (*t, *v)).collect();
        let max = groups.iter().flat_map(|(_, v)| v.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
        let scale = if max > 0.0 { (panel_h - 20.0) / max } else { 0.0 };
        let base = top + panel_h;
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
            x0 + panel_w - 20.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
            x0 + (panel_w - 20.0) / 2.0,
            base + 36.0,
            escape(model)
        );
        let mut x = x0 + 10.0;
        for (threads, series) in &groups {
            let start = x;
            for (value, (_, colour)) in series.iter().zip(SERIES) {
                let Some(v) = value else { continue };
                let h = v * scale;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{colour}"><title>{v:.2} ms</title></rect>"#,
                    base - h
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                    x + bar_w / 2.0,
                    base - h - 3.0,
                    short_ms(*v)
                );
                x += bar_w + bar_gap;
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{threads} thread{}</text>"#,
                (start + x - bar_gap) / 2.0,
                base + 16.0,
                if *threads == 1 { "" } else { "s" }
            );
            x += group_gap;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A bar label: three significant digits or so.
fn short_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(model: &str, kind: &str, threads: usize, median_ns: f64, file_size: u64) -> Ours {
        Ours {
            model: model.into(),
            kind: kind.into(),
            threads,
            batch: 1,
            median_ns,
            runs: 10,
            memory: 1 << 20,
            peak_rss: 1 << 21,
            file_size,
            build_s: 0.5,
        }
    }

    /// `o` measured at batch `batch`.
    fn at_batch(o: Ours, batch: usize) -> Ours {
        Ours { batch, ..o }
    }

    #[test]
    fn models_are_chosen_by_name() {
        assert_eq!(selected_models(None).unwrap(), MODELS);
        assert_eq!(selected_models(Some("mobilenet_v2,resnet18")).unwrap(), ["mobilenet_v2", "resnet18"]);
        assert!(selected_models(Some("vgg16")).unwrap_err().contains("unknown model vgg16"));
        assert!(selected_models(Some(",")).is_err());
    }

    #[test]
    fn rounds_keep_the_fastest_run() {
        let mut kept = Vec::new();
        keep_fastest(&mut kept, ours("resnet18", "int8", 1, 10e6, 1000));
        keep_fastest(&mut kept, ours("resnet18", "int8", 2, 12e6, 1000));
        keep_fastest(&mut kept, ours("resnet18", "int8", 1, 8e6, 1000));
        keep_fastest(&mut kept, ours("resnet18", "int8", 2, 13e6, 1000));
        // Another batch is another configuration, however much slower.
        keep_fastest(&mut kept, at_batch(ours("resnet18", "int8", 1, 50e6, 1000), 8));
        keep_fastest(&mut kept, at_batch(ours("resnet18", "int8", 1, 40e6, 1000), 8));
        assert_eq!(kept.iter().map(|o| o.median_ns).collect::<Vec<_>>(), [8e6, 12e6, 40e6]);
        let parse = |s: &str| -> ScriptOutput { serde_json::from_str(s).unwrap() };
        let mut merged = ScriptOutput::new();
        merge_fastest(
            &mut merged,
            parse(
                r#"{"models/a_int8": {"torch": 5.0}, "models/a_float": {"torch": 9.0}, "memory": {"models/a_int8": 1, "models/a_float": 2}}"#,
            ),
        );
        merge_fastest(
            &mut merged,
            parse(
                r#"{"models/a_int8": {"torch": 7.0}, "models/a_float": {"torch": 8.0}, "memory": {"models/a_int8": 3, "models/a_float": 4}}"#,
            ),
        );
        assert_eq!(
            merged,
            parse(
                r#"{"models/a_int8": {"torch": 5.0}, "models/a_float": {"torch": 8.0}, "memory": {"models/a_int8": 1, "models/a_float": 4}}"#
            )
        );
    }

    #[test]
    fn rows_join_ours_and_torch() {
        let measured = [
            ours("resnet18", "float", 1, 40e6, 4000),
            ours("resnet18", "int8", 1, 10e6, 1000),
            ours("resnet18", "int8", 2, 6e6, 1000),
        ];
        let line = r#"{"models/resnet18_float": {"torch": 30e6}, "models/resnet18_int8": {"torch": 20e6},
            "memory": {"models/resnet18_int8": 2097152}, "file_size": {"models/resnet18_int8": 1200}}"#;
        let torch: BTreeMap<usize, ScriptOutput> = [(1, serde_json::from_str(line).unwrap())].into();
        let rows = rows(&measured, &torch);
        assert_eq!(rows[0].ours_over_torch, Some(40.0 / 30.0));
        assert_eq!(rows[0].int8_speedup, None);
        let int8 = &rows[1];
        assert_eq!(int8.torch, Some(Torch { median_ns: 20e6, memory: 2097152.0, file_size: 1200.0 }));
        assert_eq!((int8.ours_over_torch, int8.int8_speedup), (Some(0.5), Some(4.0)));
        assert_eq!((int8.torch_int8_speedup, int8.int8_file_ratio), (Some(1.5), Some(0.25)));
        // No float run at two threads and no PyTorch run: no ratios, no panic.
        assert_eq!((rows[2].torch, rows[2].int8_speedup), (None, None));
        let report = ModelsReport {
            date: "2026-11-27 09:00 UTC".into(),
            cpu: "CPU <x>".into(),
            load_before: "1.0".into(),
            load_after: "2.0".into(),
            rounds: 1,
            batches: vec![1],
            rows,
        };
        let table = render(&report);
        assert!(table.contains("ours/torch") && table.contains("4.00x") && table.contains("0.25"));
        // `--from` reads the JSON back to the same table.
        let kept: ModelsReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(render(&kept), table);
        let chart = svg(&report);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("CPU &lt;x&gt;") && chart.contains("<title>10.00 ms</title>"));
        // Four bars at one thread (ours float and int8, PyTorch float and int8) and one at two.
        assert_eq!(chart.matches("<title>").count(), 5);
    }

    #[test]
    fn lines_and_cases_name_the_batch() {
        let line = r#"{"model":"resnet18","kind":"int8","threads":2,"batch":8,"median_ns":8e7,"runs":5,"memory":1,"peak_rss":2,"file_size":3,"build_s":0.5}"#;
        assert_eq!(serde_json::from_str::<Ours>(line).unwrap().batch, 8);
        // A line from before `--batch` is batch 1.
        let old = line.replace(r#""batch":8,"#, "");
        assert_eq!(serde_json::from_str::<Ours>(&old).unwrap().batch, 1);
        assert_eq!(torch_case("resnet18", "int8", 1), "models/resnet18_int8");
        assert_eq!(torch_case("resnet18", "float", 32), "models/resnet18_float_b32");
        assert_eq!(images_per_s(8, 80e6), 100.0);
    }

    #[test]
    fn rows_pair_the_same_batch_on_both_sides() {
        let measured = [
            ours("resnet18", "float", 1, 40e6, 4000),
            ours("resnet18", "int8", 1, 10e6, 1000),
            at_batch(ours("resnet18", "float", 1, 200e6, 4000), 8),
            at_batch(ours("resnet18", "int8", 1, 50e6, 1000), 8),
        ];
        let line = r#"{"models/resnet18_float": {"torch": 30e6}, "models/resnet18_int8": {"torch": 20e6},
            "models/resnet18_float_b8": {"torch": 160e6}, "models/resnet18_int8_b8": {"torch": 100e6},
            "memory": {"models/resnet18_int8_b8": 8388608}}"#;
        let torch: BTreeMap<usize, ScriptOutput> = [(1, serde_json::from_str(line).unwrap())].into();
        let rows = rows(&measured, &torch);
        assert_eq!(rows.iter().map(|r| r.batch).collect::<Vec<_>>(), [1, 1, 8, 8]);
        // Batch 1 pairs with the unsuffixed cases, as before.
        assert_eq!((rows[1].ours_over_torch, rows[1].int8_speedup), (Some(0.5), Some(4.0)));
        assert_eq!((rows[1].images_per_s, rows[1].torch_images_per_s), (100.0, Some(50.0)));
        let float8 = &rows[2];
        assert_eq!((float8.images_per_s, float8.torch_images_per_s), (40.0, Some(50.0)));
        assert_eq!((float8.ours_over_torch, float8.int8_speedup), (Some(1.25), None));
        let int8 = &rows[3];
        let t = int8.torch.expect("PyTorch's batch-8 int8 numbers");
        assert_eq!((t.median_ns, t.memory), (100e6, 8388608.0));
        assert!(t.file_size.is_nan(), "no file_size in the output: NaN, not another batch's");
        assert_eq!((int8.images_per_s, int8.torch_images_per_s), (160.0, Some(80.0)));
        // The speed-ups compare float and int8 at the same batch on each side.
        assert_eq!(
            (int8.ours_over_torch, int8.int8_speedup, int8.torch_int8_speedup),
            (Some(0.5), Some(4.0), Some(1.6))
        );
        let report = ModelsReport {
            date: "2026-12-06 06:00 UTC".into(),
            cpu: "CPU".into(),
            load_before: "1.0".into(),
            load_after: "1.0".into(),
            rounds: 1,
            batches: vec![1, 8],
            rows,
        };
        let table = render(&report);
        let header = table.lines().nth(1).unwrap();
        for column in ["batch", "ours images/s", "torch images/s", "ours/torch"] {
            assert!(header.contains(column), "{column} missing from {header}");
        }
        // Title, header, then the rows in order: the last is batch-8 int8.
        let cells: Vec<&str> = table.lines().nth(5).unwrap().split_whitespace().collect();
        assert_eq!(cells[..9], ["resnet18", "int8", "1", "8", "50.00", "160.0", "100.00", "80.0", "0.50"]);
        // The chart shows batch 1 only: four bars.
        let chart = svg(&report);
        assert!(chart.contains("Batch-1 224x224 latency"));
        assert_eq!(chart.matches("<title>").count(), 4);
        assert!(!chart.contains("<title>200.00 ms</title>"));
        // Without batch 1, it shows the smallest batch measured.
        let batch8 = ModelsReport { rows: report.rows[2..].to_vec(), batches: vec![8], ..report };
        let chart = svg(&batch8);
        assert!(chart.contains("Batch-8 224x224 latency") && chart.contains("<title>200.00 ms</title>"));
    }
}
