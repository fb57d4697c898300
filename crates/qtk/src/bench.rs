//! `qtk bench`: latency percentiles and throughput of a model on random input, in a rayon pool
//! of the chosen size (threads are rayon's, as in the project's benchmarks).

use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use qgraph::{Module, Value};

use crate::cli::BenchArgs;
use crate::error::{CliError, Result};
use crate::model::{self, InputInfo};
use crate::progress::{Progress, note};

/// Latency statistics in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Fastest run.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The statistics of `samples` (percentiles by nearest rank); `None` if there are none.
pub fn stats(samples: &[f64]) -> Option<Stats> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |p: f64| sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Stats {
        min: *sorted.first()?,
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
    })
}

/// The input shape: `--shape`, else the first recorded input with `--batch` (default 1) for a
/// dimension of any size; `--batch` always sets the first dimension.
fn input_shape(args: &BenchArgs, inputs: &[InputInfo]) -> Result<Vec<usize>> {
    let batch = args.batch.map(|b| usize::try_from(b).unwrap_or(usize::MAX));
    let mut shape = match (&args.shape, inputs.first()) {
        (Some(shape), _) => shape.0.clone(),
        (None, Some(input)) => {
            let mut shape = Vec::with_capacity(input.shape.len());
            for (i, d) in input.shape.iter().enumerate() {
                match (d, i) {
                    (Some(d), _) => shape.push(*d),
                    (None, 0) => shape.push(batch.unwrap_or(1)),
                    (None, _) => {
                        return Err(CliError::Input(format!(
                            "{}: input `{}` has the shape {}, with a free dimension past the first; give --shape",
                            args.file.display(),
                            input.name,
                            model::shape_text(input)
                        )));
                    }
                }
            }
            shape
        }
        (None, None) => {
            return Err(CliError::Input(format!(
                "{}: the file records no input shape; give one with --shape, e.g. --shape 1x3x224x224",
                args.file.display()
            )));
        }
    };
    if let (Some(b), Some(first)) = (batch, shape.first_mut()) {
        *first = b;
    }
    Ok(shape)
}

/// Random values in [0, 1) from a fixed seed (a 64-bit LCG), so that runs are repeatable.
fn random_input(shape: &[usize]) -> ArrayD<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// Times `iters` runs of `model` on `input` after `warmup` untimed ones; seconds per run.
fn time(model: &dyn Module, input: &ArrayD<f32>, warmup: u64, iters: u64, quiet: bool) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        model.forward(Value::from(input.clone()))?;
    }
    let progress = Progress::new("timing", usize::try_from(iters).unwrap_or(usize::MAX), quiet);
    let mut samples = Vec::new();
    for i in 0..iters {
        let x = Value::from(input.clone());
        let start = Instant::now();
        std::hint::black_box(model.forward(x)?);
        samples.push(start.elapsed().as_secs_f64());
        progress.update(usize::try_from(i + 1).unwrap_or(usize::MAX));
    }
    Ok(samples)
}

/// Runs the command.
pub fn main(args: &BenchArgs, quiet: bool) -> Result<()> {
    let loaded = model::load(&args.file)?;
    let shape = input_shape(args, &loaded.inputs)?;
    let input = random_input(&shape);
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = args.threads {
        builder = builder.num_threads(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let pool = builder.build().map_err(|e| CliError::Input(format!("cannot start the thread pool: {e}")))?;
    note(quiet, &format!("timing {} on {shape:?}", args.file.display()));
    let samples = pool.install(|| time(loaded.model.as_ref(), &input, args.warmup, args.iters, quiet))?;
    let s = stats(&samples).ok_or_else(|| CliError::Usage("--iters must be at least 1".into()))?;
    let batch = shape.first().copied().unwrap_or(1);
    let ms = |x: f64| format!("{:.4}", x * 1e3);
    println!("model: {}", args.file.display());
    println!("input: {shape:?} float32, random in [0, 1)");
    println!("threads: {}", pool.current_num_threads());
    println!("runs: {} timed after {} warm-up", args.iters, args.warmup);
    println!(
        "latency ms: p50 {} p90 {} p99 {} min {} mean {}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.min),
        ms(s.mean)
    );
    println!(
        "throughput: {:.1} samples/s ({:.1} runs/s, batch {batch})",
        batch as f64 / s.mean,
        1.0 / s.mean
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = stats(&samples).unwrap();
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.mean), (1.0, 50.0, 90.0, 99.0, 50.5));
        let one = stats(&[2.0]).unwrap();
        assert_eq!((one.p50, one.p99), (2.0, 2.0));
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn random_input_is_in_range_and_repeatable() {
        let x = random_input(&[2, 3, 4]);
        assert!(x.iter().all(|v| (0.0..1.0).contains(v)));
        assert_eq!(x, random_input(&[2, 3, 4]));
    }
}
