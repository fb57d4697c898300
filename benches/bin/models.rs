//! Times one whole model in one configuration per process, for `cargo xtask bench --models`:
//!
//! ```text
//! qbench-models --model resnet18|resnet50|mobilenet_v2 --kind float|int8 --threads N [--batch B] [--weights FILE]
//! ```
//!
//! Builds the zoo model (`qgraph::models`) with the weights of FILE (a safetensors `state_dict`
//! as `tools/export_torchvision.py` writes) or, without one, the zoo's deterministic weights. For
//! `int8`: `fuse_model`, the x86 default qconfig, prepare, calibration on the four images
//! `tools/bench/torch_models.py` uses (image i is `qgraph::models::random_f32s(3*224*224, 1000 + i)`),
//! convert (calibration is the same whatever the batch). Then, in a rayon pool of N threads, times
//! 224x224 inference on a batch of B images (default 1), image j of the batch being calibration
//! image j mod 4 (so batch 1 is image 0): three warm-up runs, then single runs until at least one
//! second and ten runs (five for B > 1) have passed; the median.
//!
//! Memory is measured as `torch_models.py` does: the RSS after the inputs exist and before the
//! model is built (`VmRSS`) is the base; after building, `/proc/self/clear_refs` (5) resets the
//! peak (`VmHWM`) to the current RSS, and `memory` is the peak during inference minus the base
//! (so it includes the resident model). Prints one JSON line:
//!
//! ```text
//! {"model":"resnet18","kind":"int8","threads":1,"batch":1,"median_ns":...,"runs":...,"memory":bytes,
//!  "peak_rss":bytes,"file_size":bytes,"build_s":seconds}
//! ```
//!
//! `file_size` is `qgraph::io::to_bytes(model).len()` of the model timed (float, or converted).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::models::{self, Architecture};
use qgraph::qconfig::get_default_qconfig;
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, eval, io, load_state_dict, prepare};

const USAGE: &str = "usage: qbench-models --model resnet18|resnet50|mobilenet_v2 --kind float|int8 --threads N [--batch B] [--weights FILE]";

/// Calibration images, as in `tools/bench/torch_models.py`; image j mod 4 is image j of the timed batch.
const CALIBRATION_IMAGES: u64 = 4;
/// Side of the square input images.
const SIDE: usize = 224;
/// Classes of the classifier (torchvision's ImageNet default).
const CLASSES: usize = 1000;
/// Warm-up runs before timing.
const WARM_UP: usize = 3;
/// Timing goes on until at least this long and [`min_runs`] runs have passed.
const MIN_SECONDS: f64 = 1.0;

/// Fewest timed runs at batch size `batch`: ten at batch 1, five for larger batches (each run is
/// then several images' work).
fn min_runs(batch: usize) -> usize {
    if batch == 1 { 10 } else { 5 }
}

/// Float model, or the model quantized with PyTorch's eager-mode int8 workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int8,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Float => "float",
            Kind::Int8 => "int8",
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Args {
    arch: Architecture,
    kind: Kind,
    threads: usize,
    batch: usize,
    weights: Option<PathBuf>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut arch, mut kind, mut threads, mut weights) = (None, None, None, None);
        let mut batch = 1;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let mut value = || rest.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--model" => {
                    arch = Some(Architecture::from_name(value()?).map_err(|e| format!("--model: {e}"))?)
                }
                "--kind" => {
                    kind = Some(match value()?.as_str() {
                        "float" => Kind::Float,
                        "int8" => Kind::Int8,
                        other => return Err(format!("--kind must be float or int8, got {other}")),
                    })
                }
                "--threads" => {
                    let v = value()?;
                    threads = match v.parse::<usize>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => return Err(format!("--threads must be a positive integer, got {v}")),
                    }
                }
                "--batch" => {
                    let v = value()?;
                    batch = match v.parse::<usize>() {
                        Ok(n) if n >= 1 => n,
                        _ => return Err(format!("--batch must be a positive integer, got {v}")),
                    }
                }
                "--weights" => weights = Some(PathBuf::from(value()?)),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        let missing = |what: &str| format!("{what} is required\n{USAGE}");
        Ok(Args {
            arch: arch.ok_or_else(|| missing("--model"))?,
            kind: kind.ok_or_else(|| missing("--kind"))?,
            threads: threads.ok_or_else(|| missing("--threads"))?,
            batch,
            weights,
        })
    }
}

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(field: &str) -> Result<u64, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("/proc/self/status has no {field}"))
}

/// Image `i` of the calibration set, `[1, 3, 224, 224]`.
fn image(i: u64) -> ArrayD<f32> {
    let values = qgraph::models::random_f32s(3 * SIDE * SIDE, 1000 + i);
    ArrayD::from_shape_vec(IxDyn(&[1, 3, SIDE, SIDE]), values).expect("3*224*224 values")
}

/// The timed input, `[batch, 3, 224, 224]`: image j is `images[j % images.len()]`.
fn batch_input(images: &[ArrayD<f32>], batch: usize) -> Result<ArrayD<f32>, String> {
    let views: Vec<_> = (0..batch).map(|j| images[j % images.len()].view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| format!("batch of {batch} images: {e}"))
}

/// The model to time: float with its weights, or quantized.
fn build(args: &Args, images: &[ArrayD<f32>]) -> Result<Box<dyn Module>, String> {
    let mut model = args.arch.build(CLASSES).map_err(|e| e.to_string())?;
    match &args.weights {
        Some(path) => models::load_weights(&mut model, path).map_err(|e| e.to_string())?,
        None => {
            let state = models::deterministic_state_dict(model.as_ref()).map_err(|e| e.to_string())?;
            load_state_dict(&mut model, state).map_err(|e| e.to_string())?;
        }
    }
    eval(&mut model);
    if args.kind == Kind::Int8 {
        models::fuse_model(&mut model).map_err(|e| format!("fuse_model: {e}"))?;
        let qconfig = get_default_qconfig("x86").map_err(|e| e.to_string())?;
        prepare(&mut model, &QConfigMapping::global(qconfig)).map_err(|e| format!("prepare: {e}"))?;
        calibrate(model.as_ref(), images.iter().cloned(), |_, _| {})
            .map_err(|e| format!("calibrate: {e}"))?;
        convert(&mut model).map_err(|e| format!("convert: {e}"))?;
    }
    Ok(model)
}

/// Median time of `model` on `input` in ns, and the number of timed runs.
fn time(model: &dyn Module, input: &ArrayD<f32>, min_runs: usize) -> Result<(f64, usize), String> {
    let run = |x: ArrayD<f32>| model.forward(Value::from(x)).map_err(|e| format!("inference: {e}"));
    for _ in 0..WARM_UP {
        run(input.clone())?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_runs || start.elapsed().as_secs_f64() < MIN_SECONDS {
        let x = input.clone();
        let t0 = Instant::now();
        std::hint::black_box(run(x)?);
        samples.push(t0.elapsed().as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples.len()))
}

/// Builds, measures and prints the JSON line.
fn measure(args: &Args) -> Result<serde_json::Value, String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| format!("rayon pool of {} threads: {e}", args.threads))?;
    pool.install(|| {
        let images: Vec<ArrayD<f32>> = (0..CALIBRATION_IMAGES).map(image).collect();
        let input = batch_input(&images, args.batch)?;
        let base = status_bytes("VmRSS")?;
        let started = Instant::now();
        let model = build(args, &images)?;
        let build_s = started.elapsed().as_secs_f64();
        let file_size = io::to_bytes(model.as_ref()).map_err(|e| format!("to_bytes: {e}"))?.len();
        let build_peak = status_bytes("VmHWM")?;
        std::fs::write("/proc/self/clear_refs", "5").map_err(|e| format!("/proc/self/clear_refs: {e}"))?;
        let (median_ns, runs) = time(model.as_ref(), &input, min_runs(args.batch))?;
        let peak = status_bytes("VmHWM")?;
        Ok(serde_json::json!({
            "model": args.arch.name(),
            "kind": args.kind.name(),
            "threads": args.threads,
            "batch": args.batch,
            "median_ns": median_ns,
            "runs": runs,
            "memory": peak.saturating_sub(base),
            "peak_rss": peak.max(build_peak),
            "file_size": file_size,
            "build_s": build_s,
        }))
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = Args::parse(&args).and_then(|args| measure(&args));
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("qbench-models: {message}");
            ExitCode::from(2)
        }
    }
}
