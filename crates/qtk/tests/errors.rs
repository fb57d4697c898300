//! Exit codes and messages: help and version succeed, usage errors exit 2, files that are
//! missing or not models exit 1 with one `error:` line naming the file, never a panic.

mod common;

use common::{arg, qtk, qtk_ok, write_tensors};
use ndarray::{ArrayD, IxDyn};
use qgraph::Module;
use qgraph::nn::{Linear, ReLU};

#[test]
fn help_and_version() {
    let version = qtk_ok(&["--version"]);
    assert_eq!(version.stdout, format!("qtk {}\n", env!("CARGO_PKG_VERSION")));
    let help = qtk_ok(&["--help"]);
    for command in ["inspect", "quantize", "run", "bench"] {
        assert!(help.stdout.contains(&format!("  {command} ")), "{}", help.stdout);
        let sub = qtk_ok(&[command, "--help"]);
        assert!(sub.stdout.contains("Examples:\n  qtk "), "{command}: {}", sub.stdout);
    }
}

/// Runs `args`, requiring exit code `code` and one `error:` line (after any notes) containing
/// `needle`; returns that line.
fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let run = qtk(args);
    assert_eq!(run.code, code, "qtk {args:?}: {}", run.stderr);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "qtk {args:?}: {}", run.stderr);
    let tail = &run.stderr[run.stderr.find("error: ").unwrap()..];
    assert!(tail.contains(needle), "qtk {args:?}: `{needle}` not in {}", run.stderr);
    assert!(run.stdout.is_empty(), "qtk {args:?} printed results: {}", run.stdout);
    errors[0].to_string()
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.qtk");
    let m = arg(&m);
    // No command: clap's help, on stderr.
    let run = qtk(&[]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty() && run.stderr.contains("Usage: qtk"), "{}", run.stderr);
    fails(&["frobnicate"], 2, "unrecognized subcommand 'frobnicate'");
    fails(&["quantize", m, "-o", "out.qtk"], 2, "--calib");
    fails(&["quantize", m, "--calib", "c.safetensors"], 2, "--output");
    fails(&["quantize", m, "--calib", "c", "--qconfig", "tpu", "-o", "o"], 2, "'tpu'");
    fails(&["quantize", m, "--dynamic", "--per-tensor", "-o", "o"], 2, "cannot be used with");
    fails(&["quantize", m, "--calib", "c", "--batch", "0", "-o", "o"], 2, "--batch");
    fails(&["run", m, "x.png", "--size", "0x8"], 2, "not a positive number of pixels");
    fails(&["bench", m, "--shape", "1xax8"], 2, "not a positive dimension");
    fails(&["bench", m, "--iters", "0"], 2, "--iters");
}

/// A small float model with Linear layers, saved in `dir`.
fn linear_model(dir: &std::path::Path) -> (Box<dyn Module>, std::path::PathBuf) {
    let mut model: Box<dyn Module> = Box::new(qgraph::Sequential::new(vec![
        Box::new(Linear::new(6, 5, true)),
        Box::new(ReLU::new()),
        Box::new(Linear::new(5, 3, true)),
    ]));
    qgraph::eval(&mut model);
    let path = dir.join("linear.qtk");
    qgraph::io::save(model.as_ref(), &path).unwrap();
    (model, path)
}

#[test]
fn runtime_errors_exit_1_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.qtk");
    fails(&["inspect", arg(&missing)], 1, &format!("{}: No such file", missing.display()));
    let garbage = dir.path().join("garbage.qtk");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    fails(&["inspect", arg(&garbage)], 1, "garbage.qtk");
    fails(&["bench", arg(&garbage)], 1, "garbage.qtk");
    let onnx = dir.path().join("garbage.onnx");
    std::fs::write(&onnx, b"\x08\x07garbage").unwrap();
    fails(&["inspect", arg(&onnx)], 1, "garbage.onnx");
    // A safetensors file that is not a model: the message says what it is not.
    let tensors = dir.path().join("tensors.safetensors");
    write_tensors(&tensors, &[("x", &ArrayD::zeros(IxDyn(&[2, 6])))]);
    fails(&["inspect", arg(&tensors)], 1, "not a qgraph model file");

    let (_, model) = linear_model(dir.path());
    let out = dir.path().join("out.qtk");
    // Calibration data that is missing, not tensors, or of the wrong shape.
    fails(&["quantize", arg(&model), "--calib", arg(&missing), "-o", arg(&out)], 1, "missing.qtk");
    fails(&["quantize", arg(&model), "--calib", arg(&garbage), "-o", arg(&out)], 1, "garbage.qtk");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        &["quantize", arg(&model), "--calib", arg(&empty), "-o", arg(&out)],
        1,
        "no .png, .jpg or .jpeg file",
    );
    let wrong = dir.path().join("wrong.safetensors");
    write_tensors(&wrong, &[("x", &ArrayD::zeros(IxDyn(&[4, 7])))]);
    fails(&["quantize", arg(&model), "--calib", arg(&wrong), "-o", arg(&out)], 1, "is 7 but must be 6");
    assert!(!out.exists(), "nothing is written after a failure");
    // An input of the wrong shape for run.
    fails(
        &["run", arg(&model), arg(&wrong)],
        1,
        "module `0`: Linear: input features (last dimension) is 7 but must be 6",
    );
    fails(&["run", arg(&model), arg(&tensors), "--input", "y"], 1, "no tensor `y`; it holds `x`");
}

#[test]
fn dynamic_quantization_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = linear_model(dir.path());
    let out = dir.path().join("dynamic.qtk");
    let run = qtk_ok(&["quantize", arg(&path), "--dynamic", "-o", arg(&out)]);
    assert_eq!(
        run.stdout,
        "quantized modules (no --calib, so no SQNR):\n0  DynamicQuantizedLinear\n2  DynamicQuantizedLinear\n"
    );
    let mut expected = model.clone();
    qgraph::quantize_dynamic(&mut expected, Default::default(), qgraph::DynamicDType::QInt8).unwrap();
    let loaded = qgraph::io::load(&out).unwrap();
    assert_eq!(
        qgraph::io::to_bytes(loaded.as_ref()).unwrap(),
        qgraph::io::to_bytes(expected.as_ref()).unwrap()
    );

    // With data, the report compares the swapped layers.
    let calib = dir.path().join("calib.safetensors");
    let x = ArrayD::from_shape_fn(IxDyn(&[10, 6]), |i| (i[0] as f32 * 0.37 + i[1] as f32 * 0.11).sin());
    write_tensors(&calib, &[("x", &x)]);
    let run = qtk_ok(&[
        "quantize",
        arg(&path),
        "--dynamic",
        "--calib",
        arg(&calib),
        "--batch",
        "4",
        "-o",
        arg(&out),
    ]);
    assert!(
        run.stdout.starts_with("per-layer SQNR against the float model, on 10 samples (3 batches)\n"),
        "{}",
        run.stdout
    );
    for layer in ["0 ", "2 "] {
        let row =
            run.stdout.lines().find(|l| l.starts_with(layer)).unwrap_or_else(|| panic!("{}", run.stdout));
        assert_eq!(row.split_whitespace().nth(1), Some("DynamicQuantizedLinear"), "{row}");
    }
    assert!(run.stdout.contains("top-1 agreement: "), "{}", run.stdout);

    // A float model without a QuantStub converts, but its quantized form cannot run: the
    // report says so and nothing is written.
    let nowhere = dir.path().join("nowhere.qtk");
    fails(
        &["quantize", arg(&path), "--calib", arg(&calib), "-o", arg(&nowhere)],
        1,
        "module `0`: QuantizedLinearReLU received a float tensor but runs on quantized tensors: a QuantStub is missing",
    );
    assert!(!nowhere.exists());
    // Statically quantizing the dynamically quantized file: nothing left to convert.
    fails(
        &["quantize", arg(&out), "--calib", arg(&calib), "-o", arg(&dir.path().join("again.qtk"))],
        1,
        "nothing to quantize statically: it is already quantized (it holds DynamicQuantizedLinear)",
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.qtk");
    let model: Box<dyn Module> = Box::new(Linear::new(4, 3, true));
    qgraph::io::save(model.as_ref(), &path).unwrap();
    // The reading end is closed before qtk writes, as `qtk inspect m.qtk | head -0` does.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qtk"))
        .args(["inspect", arg(&path)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(output.status.code(), Some(0));
}
