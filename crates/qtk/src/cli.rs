//! The command-line grammar (clap's derive API): subcommands, their flags and help texts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect, quantize, run and time int8 models (PyTorch eager-mode quantization, same numbers).
#[derive(Debug, Parser)]
#[command(name = "qtk", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    /// Print only results (no progress or notes on stderr).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  qtk inspect model.qtk
  qtk quantize model.onnx --calib images/ --size 224x224 -o model-int8.qtk
  qtk run model-int8.qtk cat.jpg --size 224x224
  qtk bench model-int8.qtk --threads 2 --iters 200";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a model as PyTorch would, with its size, tensors by dtype and modules by type.
    #[command(after_help = "\
Examples:
  qtk inspect model-int8.qtk
  qtk inspect model.onnx --json > model.json")]
    Inspect(InspectArgs),
    /// Fuse, calibrate and convert a float model to int8, and report each layer's SQNR.
    #[command(after_help = "\
CALIB is a safetensors file or a folder of images:
  one tensor     its leading dimension is the sample axis, cut into batches of --batch
  several        each tensor is one batch, in name order (digits compared as numbers)
  a folder       its .png/.jpg/.jpeg files in name order, preprocessed (--size, --mean, --std)
                 and stacked into batches of --batch

Examples:
  qtk quantize model.qtk --calib calib.safetensors -o model-int8.qtk
  qtk quantize model.onnx --calib images/ --size 224x224 --limit 256 --batch 32 -o int8.qtk
  qtk quantize model.qtk --calib calib.safetensors --qconfig qnnpack --per-tensor -o int8.qtk
  qtk quantize lstm.qtk --dynamic -o lstm-dynamic.qtk
  qtk quantize crnn.onnx --calib lines.safetensors --float fc --then-dynamic -o crnn-int8.qtk
  qtk quantize model.qtk --calib calib.safetensors --per-tensor --target sqnr=30 -o int8.qtk
  qtk quantize model.qtk --calib calib.safetensors --calibrator auto -o int8.qtk")]
    Quantize(QuantizeArgs),
    /// Print the per-layer accuracy report of a float model quantized on calibration data:
    /// weight SQNR, output SQNR free-running and teacher-forced, range use, observer.
    #[command(after_help = "\
CALIB is read as for quantize (a safetensors file or a folder of images).

Examples:
  qtk report model.qtk --calib calib.safetensors --per-tensor
  qtk report model.onnx --calib images/ --size 224x224 --limit 64 --json report.json --svg report.svg
  qtk report model.qtk --calib calib.safetensors --quantized model-int8.qtk")]
    Report(ReportArgs),
    /// Run a model on one input and print the output's shape (and top-5 for a classifier).
    #[command(after_help = "\
INPUT is a safetensors file (its one tensor, or the one named by --input NAME) or a .png/.jpg/.jpeg
image, preprocessed as for quantize and given a batch dimension of 1.

Examples:
  qtk run model-int8.qtk input.safetensors -o output.safetensors
  qtk run model-int8.qtk cat.jpg --size 224x224")]
    Run(RunArgs),
    /// Time a model on random input: latency percentiles and throughput.
    #[command(after_help = "\
The input shape is the one recorded in the model file (qtk quantize records it; ONNX files
carry theirs), with --batch as its first dimension, or --shape.

Examples:
  qtk bench model-int8.qtk
  qtk bench model-int8.qtk --threads 1 --batch 8 --warmup 20 --iters 500
  qtk bench model.qtk --shape 1x3x224x224")]
    Bench(BenchArgs),
}

/// `qtk inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model file (qgraph's format, float or int8) or an ONNX model (.onnx).
    pub file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A `get_default_qconfig` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// PyTorch's default x86 engine.
    X86,
    /// FBGEMM.
    Fbgemm,
    /// QNNPACK.
    Qnnpack,
    /// oneDNN.
    Onednn,
}

impl Backend {
    /// The name `get_default_qconfig` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::X86 => "x86",
            Backend::Fbgemm => "fbgemm",
            Backend::Qnnpack => "qnnpack",
            Backend::Onednn => "onednn",
        }
    }
}

/// How a float model is quantized statically: the qconfig, layers kept float, the activation
/// calibrator.
#[derive(Debug, Clone, Args)]
pub struct StaticArgs {
    /// The backend whose default qconfig is used (`get_default_qconfig`).
    #[arg(long, value_enum, default_value_t = Backend::X86)]
    pub qconfig: Backend,
    /// Per-tensor weights (default_weight_observer) instead of the backend's per-channel ones.
    #[arg(long)]
    pub per_tensor: bool,
    /// Keep the module at PATH in float (its qconfig None, PyTorch's `set_name(PATH, None)`);
    /// repeat for several.
    #[arg(long = "float", value_name = "PATH")]
    pub float_modules: Vec<String>,
    /// The activation observers: the qconfig's (`default`), one calibrator for every layer, or
    /// `auto`: per layer, the candidate whose range quantizes the float output with the best SQNR
    /// on the report samples, unless one calibrator everywhere gives a better model output
    /// there (`qgraph::calibrator_choice`).
    #[arg(long, value_enum, default_value_t = CalibratorArg::Default)]
    pub calibrator: CalibratorArg,
}

/// `--calibrator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CalibratorArg {
    /// The qconfig's activation observer.
    Default,
    /// Per layer, the best of the others by measured SQNR (or the best one everywhere).
    Auto,
    /// MinMaxObserver.
    Minmax,
    /// MovingAverageMinMaxObserver.
    MovingAverage,
    /// HistogramObserver.
    Histogram,
    /// Percentile calibrator (99.99 %).
    Percentile,
    /// Entropy (KL divergence) calibrator.
    Entropy,
    /// MSE calibrator.
    Mse,
}

/// `qtk quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The float model: a qgraph model file or an ONNX model (.onnx).
    pub model: PathBuf,
    /// Calibration data: a safetensors file or a folder of images (see below).
    #[arg(long, required_unless_present = "dynamic")]
    pub calib: Option<PathBuf>,
    /// Static quantization options.
    #[command(flatten)]
    pub quant: StaticArgs,
    /// Dynamic quantization (quantize_dynamic, qint8: Linear and recurrent layers), no
    /// calibration; with --calib, the data is used for the report only.
    #[arg(long, conflicts_with_all = ["qconfig", "per_tensor", "float_modules", "calibrator", "target"])]
    pub dynamic: bool,
    /// After static quantization, quantize dynamically what stayed float (LSTM, GRU, the cells,
    /// Linear): a static CNN with dynamic recurrent layers, as PyTorch users quantize CRNNs.
    #[arg(long, conflicts_with = "dynamic")]
    pub then_dynamic: bool,
    /// Accuracy-driven float fallback: keep the fewest layers float that the search finds for
    /// the target on the report samples: `sqnr=DB` (model output SQNR against float, dB) or
    /// `agreement=PERCENT` (top-1 agreement with float); prints the trade-off table.
    #[arg(long, value_name = "METRIC=VALUE", value_parser = parse_target, conflicts_with = "float_modules")]
    pub target: Option<TargetArg>,
    /// Where to write the quantized model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Compare float and int8 on the first N calibration samples only (default: all).
    #[arg(long, value_name = "N")]
    pub report_samples: Option<usize>,
    /// Also write the per-layer report (`qgraph::ns::report`, as printed) as JSON.
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
    /// Also write that report as an SVG plot of SQNR by layer.
    #[arg(long, value_name = "PATH")]
    pub report_svg: Option<PathBuf>,
    /// Calibration data options.
    #[command(flatten)]
    pub data: DataArgs,
}

/// An accuracy target for `--target`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetArg {
    /// The model output's SQNR against float at least this many dB.
    Sqnr(f64),
    /// Top-1 agreement with float at least this percentage.
    Agreement(f64),
}

fn parse_target(text: &str) -> Result<TargetArg, String> {
    let usage = "write sqnr=DB (e.g. sqnr=30) or agreement=PERCENT (e.g. agreement=99)";
    let Some((metric, value)) = text.split_once('=') else {
        return Err(format!("`{text}` is not METRIC=VALUE; {usage}"));
    };
    let number: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("`{value}` is not a number; {usage}"))?;
    match metric.trim().to_ascii_lowercase().as_str() {
        "sqnr" => Ok(TargetArg::Sqnr(number)),
        "agreement" if (0.0..=100.0).contains(&number) => Ok(TargetArg::Agreement(number)),
        "agreement" => Err(format!("agreement={value}: a percentage is between 0 and 100")),
        other => Err(format!("unknown metric `{other}`; {usage}")),
    }
}

/// `qtk report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The float model: a qgraph model file or an ONNX model (.onnx).
    pub model: PathBuf,
    /// Calibration data (and the data compared on): a safetensors file or a folder of images.
    #[arg(long)]
    pub calib: PathBuf,
    /// A model already quantized from MODEL (a qgraph model file) to compare instead of
    /// quantizing MODEL here; MODEL is fused as `qtk quantize` fuses it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["qconfig", "per_tensor", "float_modules", "calibrator"])]
    pub quantized: Option<PathBuf>,
    /// Static quantization options (without --quantized).
    #[command(flatten)]
    pub quant: StaticArgs,
    /// Compare on the first N calibration samples only (default: all).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also write the report as an SVG plot of SQNR by layer.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Calibration data options.
    #[command(flatten)]
    pub data: DataArgs,
}

/// How calibration or input data is read.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Use at most N calibration samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Samples per calibration batch (a single tensor's samples, or images).
    #[arg(long, value_name = "B", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Image preprocessing.
    #[command(flatten)]
    pub image: ImageArgs,
}

/// Image preprocessing (torchvision's eval transform by default).
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// Image size given to the model, HxW (or one number for a square).
    #[arg(long, value_name = "HxW", default_value = "224x224", value_parser = parse_size)]
    pub size: Size,
    /// Resize the shorter side to this many pixels before the center crop (default:
    /// the longer of H and W times 256/224, i.e. 256 for 224).
    #[arg(long, value_name = "PIXELS", conflicts_with = "plain_resize")]
    pub resize: Option<u32>,
    /// Resize straight to HxW, ignoring the aspect ratio, instead of resize + center crop.
    #[arg(long)]
    pub plain_resize: bool,
    /// Per-channel mean subtracted after scaling to [0, 1]; one value means grayscale input.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [0.485f32, 0.456, 0.406])]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by; as many values as --mean.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [0.229f32, 0.224, 0.225])]
    pub std: Vec<f32>,
}

/// An image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
}

fn parse_size(text: &str) -> Result<Size, String> {
    let number = |s: &str| match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive number of pixels; write HxW, e.g. 224x224")),
    };
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok(Size { height: number(h)?, width: number(w)? }),
        None => number(text).map(|n| Size { height: n, width: n }),
    }
}

/// `qtk run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model file (qgraph's format) or ONNX model.
    pub file: PathBuf,
    /// The input: a safetensors file or a .png/.jpg/.jpeg image.
    pub input: PathBuf,
    /// The tensor to take from a safetensors input holding several.
    #[arg(long = "input", id = "input_name", value_name = "NAME")]
    pub input_name: Option<String>,
    /// Write the output tensor(s) to this safetensors file.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Image preprocessing.
    #[command(flatten)]
    pub image: ImageArgs,
}

/// `qtk bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model file (qgraph's format) or ONNX model.
    pub file: PathBuf,
    /// Threads of the rayon pool the model runs in (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// The input's first (batch) dimension.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Untimed runs first.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Timed runs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// The input shape, e.g. 1x3x224x224 (default: the one the file records).
    #[arg(long, value_parser = parse_shape)]
    pub shape: Option<Shape>,
}

/// A tensor shape given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

fn parse_shape(text: &str) -> Result<Shape, String> {
    text.split(['x', 'X', ','])
        .map(|d| match d.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{d}` is not a positive dimension; write e.g. 1x3x224x224")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shapes_parse() {
        assert_eq!(parse_size("32x48"), Ok(Size { height: 32, width: 48 }));
        assert_eq!(parse_size("8"), Ok(Size { height: 8, width: 8 }));
        assert!(parse_size("0x8").is_err());
        assert!(parse_size("ax8").is_err());
        assert_eq!(parse_shape("1x3x8x8"), Ok(Shape(vec![1, 3, 8, 8])));
        assert_eq!(parse_shape("2,64"), Ok(Shape(vec![2, 64])));
        assert!(parse_shape("1x0").is_err());
    }

    #[test]
    fn targets_parse_with_clear_errors() {
        assert_eq!(parse_target("sqnr=30"), Ok(TargetArg::Sqnr(30.0)));
        assert_eq!(parse_target("Agreement=99.5"), Ok(TargetArg::Agreement(99.5)));
        assert!(parse_target("sqnr").unwrap_err().contains("not METRIC=VALUE"));
        assert!(parse_target("sqnr=abc").unwrap_err().contains("`abc` is not a number"));
        assert!(parse_target("sqnr=inf").is_err());
        assert!(parse_target("agreement=101").unwrap_err().contains("between 0 and 100"));
        assert!(parse_target("loss=1").unwrap_err().contains("unknown metric `loss`"));
    }

    #[test]
    fn the_grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
