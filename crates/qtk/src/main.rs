//! `qtk`: inspect, quantize, report on, run and time int8 models from the command line.
//!
//! Each subcommand lives in its own module; this file parses the arguments, runs the command and
//! turns its outcome into an exit code: 0 when it succeeded, 1 for a runtime error (printed as one
//! `error: ...` line with its causes; a bug that panics is reported the same way), 2 for a usage
//! error.

mod bench;
mod calib;
mod cli;
mod error;
mod image_input;
mod input;
mod inspect;
mod model;
mod progress;
mod quantize;
mod report;
mod run;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0; usage errors print to stderr, exit 2.
        Err(e) => e.exit(),
    };
    // A bug must still end as one `error:` line and exit code 1, not a panic message.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // A closed stdout (`qtk inspect model | head`) ends the command quietly, as other tools do.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error{at}: {message}; please report it with the command that caused it");
    }));
    let quiet = cli.quiet;
    let result = std::panic::catch_unwind(move || match cli.command {
        Command::Inspect(args) => inspect::main(&args),
        Command::Quantize(args) => quantize::main(&args, quiet),
        Command::Report(args) => report::main(&args, quiet),
        Command::Run(args) => run::main(&args, quiet),
        Command::Bench(args) => bench::main(&args, quiet),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("error: {}", error::chain(&e));
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
