//! `cargo xtask <task>`: project tasks that need more than one cargo command.
//!
//! * `cargo xtask bench [FILTER] [-- CRITERION ARGS]`: runs the criterion benchmarks of the
//!   `qbench` package in release mode; FILTER selects benchmarks by name as criterion does.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask bench [FILTER] [-- CRITERION ARGS]");
            ExitCode::from(2)
        }
    }
}

/// Runs `cargo bench -p qbench` with the given filter and criterion arguments.
fn bench(args: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["bench", "--package", "qbench", "--"]);
    command.args(args.iter().filter(|a| a.as_str() != "--"));
    match command.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("xtask bench: cargo bench failed ({status})");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("xtask bench: could not run cargo: {err}");
            ExitCode::FAILURE
        }
    }
}
