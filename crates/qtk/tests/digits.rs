//! `qtk` end to end on the digits model (`crates/qgraph/assets/digits/`): the float model saved
//! in a temp dir, its 1437 training images as calibration tensors, then every command on the
//! float and the quantized file, checked against the library API.

mod common;
#[allow(dead_code)] // the demo's helpers that these tests do not use
#[path = "../../qgraph/examples/digits/mod.rs"]
mod digits;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{arg, bytes_by_dtype, qtk, qtk_ok, read_tensor, write_tensors};
use ndarray::{ArrayD, Axis, Slice};
use qgraph::fuse::fuse_auto;
use qgraph::qconfig::get_default_qconfig;
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, io, prepare};

/// Files and models shared by the tests (built once per test binary).
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    /// The float model file.
    float: PathBuf,
    /// `[1437, 1, 8, 8]` under the name `images`.
    calib: PathBuf,
    /// What `qtk quantize float --calib calib --batch 64` wrote.
    int8: PathBuf,
    /// Its standard output.
    report: String,
    /// The float model after fuse_auto.
    fused: Box<dyn Module>,
    /// The same quantization through the library.
    library_int8: Box<dyn Module>,
    /// Its calibrated model before convert.
    library_prepared: Box<dyn Module>,
    calib_images: ArrayD<f32>,
    test_images: ArrayD<f32>,
}

const BATCH: usize = 64;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let data = digits::Digits::load().unwrap();
        let record = digits::TrainingRecord::load().unwrap();
        let calib_images = data.images_at(record.train());
        let test_images = data.images_at(record.test());
        let mut float = digits::digits_net().unwrap();
        io::load_state_dict_file(&mut float, digits::asset("digits_cnn.safetensors")).unwrap();
        io::save(float.as_ref(), dir.join("float.qtk")).unwrap();
        write_tensors(&dir.join("calib.safetensors"), &[("images", &calib_images)]);

        let mut fused = float.clone();
        fuse_auto(&mut fused).unwrap();
        let mut library_int8 = fused.clone();
        prepare(&mut library_int8, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
        let batches: Vec<ArrayD<f32>> =
            calib_images.axis_chunks_iter(Axis(0), BATCH).map(|b| b.to_owned()).collect();
        calibrate(library_int8.as_ref(), batches, |_, _| {}).unwrap();
        let library_prepared = library_int8.clone();
        convert(&mut library_int8).unwrap();

        let (float_path, calib, int8) =
            (dir.join("float.qtk"), dir.join("calib.safetensors"), dir.join("int8.qtk"));
        let run = qtk_ok(&[
            "quantize",
            arg(&float_path),
            "--calib",
            arg(&calib),
            "--batch",
            "64",
            "-o",
            arg(&int8),
        ]);
        Fixture {
            _dir: tmp,
            dir,
            float: float_path,
            calib,
            int8,
            report: run.stdout,
            fused,
            library_int8,
            library_prepared,
            calib_images,
            test_images,
        }
    })
}

/// `10 log10(Σx² / Σ(x − y)²)` over batches of [`BATCH`] images.
fn output_sqnr(float: &dyn Module, quant: &dyn Module, images: &ArrayD<f32>) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for batch in images.axis_chunks_iter(Axis(0), BATCH) {
        let f = float.forward(Value::from(batch.to_owned())).unwrap().to_float().unwrap();
        let q = quant.forward(Value::from(batch.to_owned())).unwrap().to_float().unwrap();
        for (&x, &y) in f.iter().zip(&q) {
            signal += f64::from(x) * f64::from(x);
            noise += (f64::from(x) - f64::from(y)).powi(2);
        }
    }
    10.0 * (signal / noise).log10()
}

/// The number in `text`'s line starting with `line_start`, after it (`model output: SQNR 34.69 dB`).
fn number_in_line(text: &str, line_start: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no `{line_start}` line in\n{text}"));
    let rest = &line[line_start.len()..];
    let number = rest.split_whitespace().next().unwrap_or_default();
    number.parse().unwrap_or_else(|_| panic!("no number after `{line_start}` in `{line}`"))
}

#[test]
fn quantize_matches_the_library_bit_for_bit() {
    let f = fixture();
    let loaded = io::load(&f.int8).expect("the quantized file loads with qgraph alone");
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), io::to_bytes(f.library_int8.as_ref()).unwrap());
    let x = Value::from(f.test_images.clone());
    assert_eq!(loaded.forward(x.clone()).unwrap(), f.library_int8.forward(x).unwrap());
    assert!(loaded.to_string().contains("(0): QuantizedConvReLU2d(1, 16, kernel_size=(3, 3)"), "{loaded}");
}

#[test]
fn quantize_reports_each_layer() {
    let f = fixture();
    let report = &f.report;
    assert!(
        report.starts_with("per-layer SQNR against the float model, on 1437 samples (23 batches)\n"),
        "{report}"
    );
    // The table is the numeric suite's, as the library prints it on the same batches.
    let inputs: Vec<Value> =
        f.calib_images.axis_chunks_iter(Axis(0), BATCH).map(|b| Value::from(b.to_owned())).collect();
    let expected = qgraph::ns::report(
        f.fused.as_ref(),
        f.library_int8.as_ref(),
        &inputs,
        Some(f.library_prepared.as_ref()),
    )
    .unwrap();
    assert!(report.contains(&format!("\n{expected}\n")), "{report}\n---\n{expected}");
    for (path, ty) in [
        ("quant", "Quantize"),
        ("features.0", "QuantizedConvReLU2d"),
        ("features.3", "QuantizedConvReLU2d"),
        ("features.7", "QuantizedConvReLU2d"),
        ("fc", "QuantizedLinear"),
    ] {
        let line = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("{path}\n{report}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], ty, "{line}");
        // The free-running output SQNR: 8-bit activations of a well-trained CNN are far above
        // noise, below exactness.
        let db: f64 = fields[3].parse().unwrap();
        assert!((15.0..80.0).contains(&db), "{line}");
        assert!(line.contains("HistogramObserver ["), "{line}");
    }
    // The model output's SQNR, recomputed here from the library's models on the same data.
    let printed = number_in_line(report, "model output: SQNR");
    let expected = output_sqnr(f.fused.as_ref(), f.library_int8.as_ref(), &f.calib_images);
    assert!((printed - expected).abs() <= 0.005 + 1e-9, "printed {printed}, recomputed {expected}");
    // Top-1 agreement, recomputed.
    let argmax = |m: &dyn Module| -> Vec<usize> {
        let out = m.forward(Value::from(f.calib_images.clone())).unwrap().to_float().unwrap();
        out.axis_iter(Axis(0))
            .map(|r| r.iter().enumerate().fold(0, |b, (i, &v)| if v > r[[b]] { i } else { b }))
            .collect()
    };
    let agree = argmax(f.fused.as_ref())
        .iter()
        .zip(argmax(f.library_int8.as_ref()))
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(report.contains(&format!("top-1 agreement: {agree}/1437 (")), "{agree}\n{report}");
    assert!(agree >= 1400, "{agree}");
}

#[test]
fn report_samples_and_per_tensor_and_limit() {
    let f = fixture();
    let out = f.dir.join("per_tensor.qtk");
    let run = qtk_ok(&[
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--limit",
        "200",
        "--batch",
        "50",
        "--qconfig",
        "qnnpack",
        "--per-tensor",
        "--report-samples",
        "30",
        "-o",
        arg(&out),
    ]);
    assert!(
        run.stdout.starts_with("per-layer SQNR against the float model, on 30 samples (1 batch)\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("top-1 agreement: "), "{}", run.stdout);
    // The library with the same data and qconfig (qnnpack activations, per-tensor weights).
    let mut model = f.fused.clone();
    let mut qconfig = get_default_qconfig("qnnpack").unwrap();
    qconfig.weight = qgraph::qobserve::defaults::default_weight_observer();
    prepare(&mut model, &QConfigMapping::global(qconfig)).unwrap();
    let first = f.calib_images.slice_axis(Axis(0), Slice::from(0..200)).to_owned();
    let batches: Vec<ArrayD<f32>> = first.axis_chunks_iter(Axis(0), 50).map(|b| b.to_owned()).collect();
    calibrate(model.as_ref(), batches, |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let loaded = io::load(&out).unwrap();
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), io::to_bytes(model.as_ref()).unwrap());
    assert!(loaded.to_string().contains("qscheme=torch.per_tensor_affine"), "{loaded}");
}

#[test]
fn inspect_prints_the_model_and_its_summary() {
    let f = fixture();
    let run = qtk_ok(&["inspect", arg(&f.int8)]);
    let text = &run.stdout;
    let printed = io::load(&f.int8).unwrap().to_string();
    assert!(text.starts_with(&format!("{printed}\n\n")), "{text}");
    let size = std::fs::metadata(&f.int8).unwrap().len();
    assert!(text.contains(&format!("(qgraph model file, {size} bytes, ")), "{text}");
    assert!(text.contains("input `input`: [N, 1, 8, 8]\n"), "{text}");
    let dtypes = bytes_by_dtype(&f.int8);
    for (ours, theirs) in [("float32", "F32"), ("int8", "I8"), ("float64", "F64"), ("int64", "I64")] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(ours))
            .unwrap_or_else(|| panic!("{ours}\n{text}"));
        assert!(line.ends_with(&format!(" {} bytes", dtypes[theirs])), "{line} vs {dtypes:?}");
    }
    assert!(text.contains("     3  QuantizedConvReLU2d\n"), "{text}");
    assert!(text.contains("     1  QuantizedLinear\n"), "{text}");

    // The float file: no recorded input; only float32 tensors.
    let float = qtk_ok(&["inspect", arg(&f.float)]).stdout;
    assert!(float.contains("(fc): Linear(in_features=64, out_features=10, bias=True)"), "{float}");
    assert!(float.contains("input shape: not recorded"), "{float}");
    assert!(float.contains("     3  BatchNorm2d\n"), "{float}");
    let float_bytes = bytes_by_dtype(&f.float);
    let line = float.lines().find(|l| l.trim_start().starts_with("float32")).unwrap();
    assert!(line.ends_with(&format!(" {} bytes", float_bytes["F32"])), "{line} vs {float_bytes:?}");
}

#[test]
fn inspect_json() {
    let f = fixture();
    let run = qtk_ok(&["inspect", arg(&f.int8), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(json["format"], "qgraph model file");
    assert_eq!(json["file_bytes"], std::fs::metadata(&f.int8).unwrap().len());
    assert_eq!(json["inputs"], serde_json::json!([{ "name": "input", "shape": [null, 1, 8, 8] }]));
    assert_eq!(json["modules"]["QuantizedConvReLU2d"], 3);
    assert_eq!(json["tensors"]["int8"]["bytes"], bytes_by_dtype(&f.int8)["I8"]);
    assert_eq!(json["model"], io::load(&f.int8).unwrap().to_string());
}

#[test]
fn run_prints_top5_and_writes_the_output() {
    let f = fixture();
    let image = f.test_images.slice_axis(Axis(0), Slice::from(0..1)).to_owned();
    let input = f.dir.join("one.safetensors");
    write_tensors(&input, &[("x", &image)]);
    let out = f.dir.join("out.safetensors");
    let run = qtk_ok(&["run", arg(&f.int8), arg(&input), "-o", arg(&out)]);
    let expected = f.library_int8.forward(Value::from(image)).unwrap().to_float().unwrap();
    assert_eq!(read_tensor(&out, "output"), expected, "the written output is the library's");
    assert!(
        run.stdout.starts_with("output: [1, 10] float32\ntop-5 (index, value):\n  row 0: ("),
        "{}",
        run.stdout
    );
    let row: Vec<f32> = expected.iter().copied().collect();
    let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
    assert!(run.stdout.contains(&format!("row 0: ({best}, {:.4}) (", row[best])), "{}", run.stdout);
    assert_eq!(run.stdout.lines().nth(2).unwrap().matches('(').count(), 5);

    // Two tensors: --input chooses.
    let two = f.dir.join("two.safetensors");
    let batch = f.test_images.slice_axis(Axis(0), Slice::from(0..3)).to_owned();
    write_tensors(&two, &[("a", &batch), ("b", &batch)]);
    let run = qtk_ok(&["run", arg(&f.int8), arg(&two), "--input", "b"]);
    assert!(
        run.stdout.contains("output: [3, 10] float32") && run.stdout.contains("  row 2: ("),
        "{}",
        run.stdout
    );
    let run = qtk(&["run", arg(&f.int8), arg(&two)]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("holds 2 tensors (`a`, `b`); choose one with --input NAME"),
        "{}",
        run.stderr
    );
}

#[test]
fn run_on_an_image() {
    let f = fixture();
    // An 8x8 digit as a grayscale PNG, and the tensor the documented preprocessing makes of it.
    let pixels: Vec<u8> =
        f.test_images.slice_axis(Axis(0), Slice::from(0..1)).iter().map(|&v| (v * 240.0) as u8).collect();
    let path = f.dir.join("digit.png");
    image::GrayImage::from_raw(8, 8, pixels.clone()).unwrap().save(&path).unwrap();
    let tensor = ArrayD::from_shape_vec(
        vec![1, 1, 8, 8],
        pixels.iter().map(|&p| (f32::from(p) / 255.0 - 0.0) / 1.0).collect(),
    )
    .unwrap();
    let out = f.dir.join("digit-out.safetensors");
    qtk_ok(&[
        "run",
        arg(&f.int8),
        arg(&path),
        "--size",
        "8x8",
        "--plain-resize",
        "--mean",
        "0",
        "--std",
        "1",
        "-o",
        arg(&out),
    ]);
    let expected = f.library_int8.forward(Value::from(tensor)).unwrap().to_float().unwrap();
    assert_eq!(read_tensor(&out, "output"), expected);
}

#[test]
fn bench_reports_sane_statistics() {
    let f = fixture();
    let run =
        qtk_ok(&["bench", arg(&f.int8), "--threads", "1", "--warmup", "2", "--iters", "20", "--batch", "4"]);
    let text = &run.stdout;
    assert!(text.contains("input: [4, 1, 8, 8] float32"), "{text}");
    assert!(text.contains("threads: 1\n") && text.contains("runs: 20 timed after 2 warm-up\n"), "{text}");
    let line = text.lines().find(|l| l.starts_with("latency ms: ")).unwrap();
    let values: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [p50, p90, p99, min, mean] = values[..] else { panic!("{line}") };
    assert!(
        min > 0.0 && min <= p50 && p50 <= p90 && p90 <= p99 && min <= mean && mean <= p99.max(mean),
        "{line}"
    );
    let (throughput, runs) = (number_after(text, "throughput: "), number_after(text, "samples/s ("));
    assert!(throughput > 0.0 && (throughput / runs - 4.0).abs() < 1e-3, "{text}");
    assert!((1e3 / runs - mean).abs() <= 1e-4 * mean.max(1.0), "runs/s is 1 / mean: {text}");

    // The float file records no shape: --shape gives it.
    let run = qtk(&["bench", arg(&f.float), "--iters", "2"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("records no input shape; give one with --shape"), "{}", run.stderr);
    let run = qtk_ok(&["bench", arg(&f.float), "--iters", "3", "--warmup", "0", "--shape", "2x1x8x8"]);
    assert!(run.stdout.contains("input: [2, 1, 8, 8] float32"), "{}", run.stdout);
}

/// The first number after `label` in `text`.
fn number_after(text: &str, label: &str) -> f64 {
    let rest = &text[text.find(label).unwrap_or_else(|| panic!("no {label}")) + label.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn quantize_from_a_folder_of_images() {
    let f = fixture();
    let folder = f.dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..6 {
        let pixels: Vec<u8> = f
            .calib_images
            .slice_axis(Axis(0), Slice::from(i..i + 1))
            .iter()
            .map(|&v| (v * 240.0) as u8)
            .collect();
        image::GrayImage::from_raw(8, 8, pixels).unwrap().save(folder.join(format!("digit{i}.png"))).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
    let out = f.dir.join("from-images.qtk");
    let run = qtk_ok(&[
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&folder),
        "--size",
        "8",
        "--plain-resize",
        "--mean",
        "0",
        "--std",
        "1",
        "--batch",
        "4",
        "-o",
        arg(&out),
    ]);
    assert!(run.stdout.contains("on 6 samples"), "{}", run.stdout);
    assert!(run.stderr.contains("calibrating on 6 images from"), "{}", run.stderr);
    assert!(io::load(&out).is_ok());
    // -q silences the notes.
    let quiet = qtk_ok(&[
        "-q",
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&folder),
        "--size",
        "8",
        "--mean",
        "0",
        "--std",
        "1",
        "-o",
        arg(&out),
    ]);
    assert_eq!(quiet.stderr, "");
}

#[test]
fn quantize_writes_the_numeric_suite_report_as_the_library_makes_it() {
    let f = fixture();
    let (json, svg, out) = (f.dir.join("report.json"), f.dir.join("report.svg"), f.dir.join("int8-r.qtk"));
    let args =
        ["quantize", arg(&f.float), "--calib", arg(&f.calib), "--batch", "64", "--report-samples", "128"];
    let tail = ["--report-json", arg(&json), "--report-svg", arg(&svg), "-o", arg(&out)];
    qtk_ok(&[&args[..], &tail[..]].concat());
    let inputs: Vec<Value> = f
        .calib_images
        .slice_axis(Axis(0), Slice::from(0..128))
        .axis_chunks_iter(Axis(0), BATCH)
        .map(|b| Value::from(b.to_owned()))
        .collect();
    let expected = qgraph::ns::report(
        f.fused.as_ref(),
        f.library_int8.as_ref(),
        &inputs,
        Some(f.library_prepared.as_ref()),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&json).unwrap(), expected.to_json().unwrap());
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), expected.to_svg());
    let report = qgraph::ns::Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report.layer("features.3").is_some(), "{json:?}");
}

/// The first `n` calibration images in batches of [`BATCH`].
fn first_batches(f: &Fixture, n: usize) -> Vec<Value> {
    f.calib_images
        .slice_axis(Axis(0), Slice::from(0..n))
        .axis_chunks_iter(Axis(0), BATCH)
        .map(|b| Value::from(b.to_owned()))
        .collect()
}

#[test]
fn report_prints_and_writes_the_library_report() {
    let f = fixture();
    let (json, svg) = (f.dir.join("cmd-report.json"), f.dir.join("cmd-report.svg"));
    let run = qtk_ok(&[
        "report",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--batch",
        "64",
        "--samples",
        "128",
        "--json",
        arg(&json),
        "--svg",
        arg(&svg),
    ]);
    let inputs = first_batches(f, 128);
    let expected = qgraph::ns::report(
        f.fused.as_ref(),
        f.library_int8.as_ref(),
        &inputs,
        Some(f.library_prepared.as_ref()),
    )
    .unwrap();
    assert_eq!(
        run.stdout,
        format!("per-layer SQNR against the float model, on 128 samples (2 batches)\n{expected}\n")
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), expected.to_json().unwrap());
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), expected.to_svg());
    let output = expected.output.as_ref().unwrap();
    assert!(output.sqnr.unwrap() > 25.0 && output.top1.unwrap().rows == 128, "{expected}");

    // An already quantized file beside its float model: compared as it is (no observers).
    let run = qtk_ok(&[
        "report",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--batch",
        "64",
        "--samples",
        "64",
        "--quantized",
        arg(&f.int8),
    ]);
    let loaded = io::load(&f.int8).unwrap();
    let expected =
        qgraph::ns::report(f.fused.as_ref(), loaded.as_ref(), &first_batches(f, 64), None).unwrap();
    assert!(run.stdout.ends_with(&format!("\n{expected}\n")), "{}", run.stdout);
    // --quantized does not take quantization options.
    let run = qtk(&[
        "report",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--quantized",
        arg(&f.int8),
        "--per-tensor",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn target_sqnr_keeps_the_fewest_layers_float_as_the_library_does() {
    let f = fixture();
    let out = f.dir.join("target.qtk");
    let run = qtk_ok(&[
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--batch",
        "64",
        "--report-samples",
        "256",
        "--target",
        "sqnr=36",
        "-o",
        arg(&out),
    ]);
    let calibration = first_batches(f, 1437);
    let measured = first_batches(f, 256);
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let metric = qgraph::fallback::output_sqnr(f.fused.as_ref(), &measured).unwrap();
    let found = qgraph::fallback::search(
        f.fused.as_ref(),
        &mapping,
        &calibration,
        metric,
        qgraph::fallback::Target::OutputSqnr(36.0),
    )
    .unwrap();
    assert!(!found.layers.is_empty() && found.metric >= 36.0, "{found}");
    let text = &run.stdout;
    assert!(text.starts_with("target: output SQNR >= 36 dB\n"), "{text}");
    let chosen = format!(
        "chosen: {} float layer(s) of {} [{}], metric {:.2}\n",
        found.layers.len(),
        found.ranking.len(),
        found.layers.join(", "),
        found.metric
    );
    assert!(text.contains(&chosen), "{chosen}\n{text}");
    // The trade-off table: one row per evaluated configuration, as the library's.
    let table: Vec<&str> = text.lines().skip(4).take_while(|l| !l.starts_with("chosen:")).collect();
    assert_eq!(table.len(), found.rows.len(), "{text}");
    for (line, row) in table.iter().zip(&found.rows) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let metric = format!("{:.2}", row.metric);
        let at = fields.iter().position(|f| *f == metric).unwrap_or_else(|| panic!("{metric}: {line}"));
        assert_eq!(fields[at + 1], if row.meets { "yes" } else { "no" }, "{line}");
        assert_eq!(fields[at - 1], row.float_layers.len().to_string(), "{line}");
    }
    let loaded = io::load(&out).unwrap();
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), io::to_bytes(found.model.as_ref()).unwrap());
    // The report that follows is the chosen model's.
    let printed = number_in_line(text, "model output: SQNR");
    assert!((printed - found.metric).abs() <= 0.005 + 1e-9, "{printed} vs {}", found.metric);
}

#[test]
fn target_agreement_and_malformed_targets() {
    let f = fixture();
    let out = f.dir.join("agreement.qtk");
    let base =
        ["quantize", arg(&f.float), "--calib", arg(&f.calib), "--report-samples", "128", "-o", arg(&out)];
    // Every one of these 128 images already agrees: no layer needs to stay float.
    let run = qtk_ok(&[&base[..], &["--target", "agreement=99"]].concat());
    assert!(run.stdout.starts_with("target: metric >= 99.0000 (float 100.0000 - 1)\n"), "{}", run.stdout);
    assert!(run.stdout.contains("chosen: 0 float layer(s) of 4 [], metric 100.00\n"), "{}", run.stdout);
    for (target, message) in [
        ("sqnr", "`sqnr` is not METRIC=VALUE"),
        ("sqnr=x", "`x` is not a number"),
        ("agreement=120", "a percentage is between 0 and 100"),
        ("loss=0.5", "unknown metric `loss`"),
    ] {
        let run = qtk(&[&base[..], &["--target", target]].concat());
        assert_eq!(run.code, 2, "{target}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{target}: {}", run.stderr);
    }
    // A target no float set reaches.
    let run = qtk(&[&base[..], &["--target", "sqnr=300"]].concat());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("is unreachable"), "{}", run.stderr);
    let run = qtk(&[&base[..], &["--target", "sqnr=30", "--float", "fc"]].concat());
    assert_eq!(run.code, 2, "--target and --float conflict: {}", run.stderr);
}

#[test]
fn calibrator_auto_chooses_per_layer_as_the_library_does() {
    use qgraph::calibrator_choice::{Calibrator, choose_calibrators};
    let f = fixture();
    let out = f.dir.join("auto.qtk");
    let run = qtk_ok(&[
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--batch",
        "64",
        "--report-samples",
        "256",
        "--calibrator",
        "auto",
        "-o",
        arg(&out),
    ]);
    let calibration = first_batches(f, 1437);
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let choice = choose_calibrators(
        f.fused.as_ref(),
        &mapping,
        &qgraph::mappings::Mappings::default(),
        &Calibrator::ALL,
        &calibration,
        &first_batches(f, 256),
    )
    .unwrap();
    assert!(run.stdout.starts_with(&format!("{choice}\n")), "{choice}\n{}", run.stdout);
    assert_eq!(choice.points.len(), 5, "{choice}");
    let mut model = f.fused.clone();
    prepare(&mut model, &choice.mapping).unwrap();
    calibrate(model.as_ref(), calibration.iter().cloned(), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let loaded = io::load(&out).unwrap();
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), io::to_bytes(model.as_ref()).unwrap());

    // One calibrator everywhere: the report's observer column names it.
    let run = qtk_ok(&[
        "quantize",
        arg(&f.float),
        "--calib",
        arg(&f.calib),
        "--report-samples",
        "64",
        "--calibrator",
        "percentile",
        "-o",
        arg(&out),
    ]);
    let rows = run.stdout.lines().filter(|l| l.contains("PercentileCalibrator")).count();
    assert_eq!(rows, 5, "{}", run.stdout);
}
