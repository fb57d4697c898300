//! `cargo xtask <task>`: project tasks that need more than one cargo command.
//!
//! `cargo xtask bench [--quick] [--vs-torch] [FILTER] [-- CRITERION ARGS]` runs every criterion
//! benchmark of the workspace (those whose id contains FILTER, or one of its `|`-separated
//! alternatives), measures this CPU's peaks in the same run, and prints one table (time, GOPS or
//! GB/s, percent of peak, and with `--vs-torch` the ratio to PyTorch), also written as JSON under
//! `target/xtask-bench/`. The conventions the benchmarks follow are in `tools/bench/README.md`.
//!
//! `cargo xtask bench --models [MODELS] [--vs-torch] [--rounds K] [--batches 1,8,32]
//! [--chart FILE.svg]` times whole models instead (ResNet-18, ResNet-50, MobileNetV2, float and
//! int8, on one and two threads, at batch 1, 8 and 32 unless `--batches` says otherwise, each
//! configuration in its own process) and prints their table, written as
//! `target/xtask-bench/models.json`. `--models --from FILE.json [--chart FILE.svg]` prints (and
//! charts) such a kept file without measuring.
//!
//! `cargo xtask cycles` lists the import circles between the source files of each library crate
//! (files that reach each other through `use` paths) and fails if there is one.

mod bench;
mod cycles;
mod models;
mod peak;
mod report;
mod results;
mod torch;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("bench") => bench::Options::parse(&args[1..]).and_then(|options| bench::run(&options)),
        Some("cycles") => cycles::run(),
        _ => Err(USAGE.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--vs-torch] [FILTER] [-- CRITERION ARGS]
       cargo xtask bench --models [resnet18,resnet50,mobilenet_v2] [--vs-torch] [--rounds K] [--batches 1,8,32] [--chart FILE.svg]
       cargo xtask bench --models --from models.json [--chart FILE.svg]
       cargo xtask cycles";
