//! `cargo xtask bench`: run the benchmarks, collect criterion's results, report them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{USAGE, models, peak, report, results, torch};

/// Command-line options of `cargo xtask bench`.
#[derive(Debug)]
pub struct Options {
    /// Short warm-up and measurement: the whole run in a few minutes.
    pub quick: bool,
    /// Also time PyTorch on the same work and print the ratios.
    pub vs_torch: bool,
    /// Only benchmarks whose id contains this.
    pub filter: Option<String>,
    /// Passed to criterion as they are.
    pub criterion_args: Vec<String>,
    /// `--models`: time whole models (crate::models) instead of running criterion; FILTER is
    /// then a comma-separated list of models.
    pub models: bool,
    /// `--chart FILE.svg`: with `--models`, also draw the latencies as an SVG bar chart.
    pub chart: Option<PathBuf>,
    /// `--from FILE.json`: with `--models`, print (and chart) a kept `models.json` instead of
    /// measuring.
    pub from: Option<PathBuf>,
    /// `--rounds K`: with `--models`, measure every configuration K times (default 1) and keep
    /// each side's fastest median, for a shared machine whose load comes and goes.
    pub rounds: usize,
    /// `--batches 1,8,32`: with `--models`, the batch sizes every configuration runs at
    /// (default [`DEFAULT_BATCHES`]), in the order given, without repeats.
    pub batches: Vec<usize>,
}

/// The batch sizes `--models` times unless `--batches` says otherwise.
pub const DEFAULT_BATCHES: [usize; 3] = [1, 8, 32];

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            vs_torch: false,
            filter: None,
            criterion_args: Vec::new(),
            models: false,
            chart: None,
            from: None,
            rounds: 1,
            batches: DEFAULT_BATCHES.to_vec(),
        }
    }
}

impl Options {
    /// Parses the arguments after `bench`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options::default();
        let (mut rounds_given, mut batches_given) = (false, false);
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--vs-torch" => options.vs_torch = true,
                "--models" => options.models = true,
                "--rounds" => {
                    let value = rest.next().map(String::as_str).unwrap_or_default();
                    options.rounds = match value.parse::<usize>() {
                        Ok(k) if k >= 1 => k,
                        _ => {
                            return Err(format!("--rounds needs a positive integer, got {value:?}\n{USAGE}"));
                        }
                    };
                    rounds_given = true;
                }
                "--batches" => {
                    options.batches = parse_batches(rest.next().map(String::as_str).unwrap_or_default())?;
                    batches_given = true;
                }
                "--chart" => match rest.next() {
                    Some(file) if !file.starts_with('-') => options.chart = Some(PathBuf::from(file)),
                    _ => return Err(format!("--chart needs a file name, e.g. --chart models.svg\n{USAGE}")),
                },
                "--from" => match rest.next() {
                    Some(file) if !file.starts_with('-') => options.from = Some(PathBuf::from(file)),
                    _ => return Err(format!("--from needs a file name, e.g. --from models.json\n{USAGE}")),
                },
                "--" => options.criterion_args.extend(rest.by_ref().cloned()),
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
                filter if options.filter.is_none() => options.filter = Some(filter.to_string()),
                extra => return Err(format!("only one FILTER is allowed, got a second: {extra}\n{USAGE}")),
            }
        }
        if (options.chart.is_some() || options.from.is_some() || rounds_given || batches_given)
            && !options.models
        {
            return Err(format!(
                "--chart, --from, --rounds and --batches apply to --models; add --models\n{USAGE}"
            ));
        }
        if options.models && (options.quick || !options.criterion_args.is_empty()) {
            return Err(format!("--quick and criterion arguments do not apply to --models\n{USAGE}"));
        }
        Ok(options)
    }
}

/// The value of `--batches`: comma-separated positive integers, repeats dropped, order kept.
fn parse_batches(value: &str) -> Result<Vec<usize>, String> {
    let mut batches = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<usize>() {
            Ok(b) if b >= 1 => {
                if !batches.contains(&b) {
                    batches.push(b);
                }
            }
            _ => {
                return Err(format!(
                    "--batches takes positive integers separated by commas, e.g. 1,8,32; got {item:?}\n{USAGE}"
                ));
            }
        }
    }
    if batches.is_empty() {
        return Err(format!("--batches needs at least one batch size, e.g. --batches 1,8,32\n{USAGE}"));
    }
    Ok(batches)
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory `cargo bench` writes to.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Runs the whole task.
pub fn run(options: &Options) -> Result<(), String> {
    let root = workspace_root();
    if options.models {
        return models::run(&root, &target_dir(&root), options);
    }
    eprintln!("xtask bench: measuring this CPU's peaks (one and two cores)...");
    let before = peak::measure();
    let started = SystemTime::now();
    run_criterion(&root, options)?;
    eprintln!("xtask bench: measuring the peaks again...");
    let peaks = before.max(peak::measure());
    let target = target_dir(&root);
    let rows = results::collect(&target.join("criterion"), started, options.filter.as_deref())?;
    if rows.is_empty() {
        return Err("no benchmark results were written; is the filter right?".into());
    }
    let torch_times = if options.vs_torch { torch::run(&root, &rows)? } else { Default::default() };
    let table = report::Report::new(&peaks, &rows, &torch_times);
    println!("{}", table.render());
    let path = table.write_json(&target.join("xtask-bench"))?;
    eprintln!("xtask bench: table written to {}", path.display());
    Ok(())
}

/// `cargo bench --workspace --bench '*' -- FILTER ARGS`, with short timings in quick mode.
fn run_criterion(root: &Path, options: &Options) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["bench", "--workspace", "--bench", "*", "--"]);
    if let Some(filter) = &options.filter {
        command.arg(filter);
    }
    if options.quick {
        command.args(["--warm-up-time", "0.2", "--measurement-time", "0.5", "--sample-size", "10"]);
    }
    command.args(&options.criterion_args);
    let status = command.status().map_err(|err| format!("could not run cargo bench: {err}"))?;
    if status.success() { Ok(()) } else { Err(format!("cargo bench failed ({status})")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_flags_filter_and_criterion_args() {
        let options = Options::parse(&strings(&["--quick", "conv", "--vs-torch", "--", "--noplot"])).unwrap();
        assert!(options.quick && options.vs_torch);
        assert_eq!(options.filter.as_deref(), Some("conv"));
        assert_eq!(options.criterion_args, ["--noplot"]);
        assert!(Options::parse(&strings(&["--fast"])).unwrap_err().contains("unknown option --fast"));
        assert!(Options::parse(&strings(&["a", "b"])).unwrap_err().contains("second"));
        let models = Options::parse(&strings(&["--models", "resnet18", "--chart", "m.svg"])).unwrap();
        assert!(models.models && !models.vs_torch);
        assert_eq!(models.filter.as_deref(), Some("resnet18"));
        assert_eq!(models.chart, Some(PathBuf::from("m.svg")));
        assert!(Options::parse(&strings(&["--chart", "m.svg"])).unwrap_err().contains("add --models"));
        assert!(Options::parse(&strings(&["--models", "--chart"])).unwrap_err().contains("file name"));
        let from = Options::parse(&strings(&["--models", "--from", "m.json", "--chart", "m.svg"])).unwrap();
        assert_eq!(from.from, Some(PathBuf::from("m.json")));
        assert!(Options::parse(&strings(&["--from", "m.json"])).unwrap_err().contains("add --models"));
        assert!(Options::parse(&strings(&["--models", "--quick"])).unwrap_err().contains("do not apply"));
        assert_eq!(models.rounds, 1);
        assert_eq!(Options::parse(&strings(&["--models", "--rounds", "3"])).unwrap().rounds, 3);
        assert!(Options::parse(&strings(&["--models", "--rounds", "0"])).unwrap_err().contains("positive"));
        assert!(Options::parse(&strings(&["--rounds", "2"])).unwrap_err().contains("add --models"));
    }

    #[test]
    fn options_parse_batches() {
        assert_eq!(Options::parse(&strings(&["--models"])).unwrap().batches, [1, 8, 32]);
        let batches =
            |list: &str| Options::parse(&strings(&["--models", "--batches", list])).map(|o| o.batches);
        assert_eq!(batches("1").unwrap(), [1]);
        assert_eq!(batches("32, 8,32,1").unwrap(), [32, 8, 1]);
        assert!(batches("1,0").unwrap_err().contains("positive integers"));
        assert!(batches("8,x").unwrap_err().contains("\"x\""));
        assert!(batches(",").unwrap_err().contains("at least one"));
        assert!(Options::parse(&strings(&["--models", "--batches"])).unwrap_err().contains("at least one"));
        assert!(Options::parse(&strings(&["--batches", "8"])).unwrap_err().contains("add --models"));
    }
}
