//! `qtk` on an ONNX model: the small ResNet-18 export of qonnx's fixtures
//! (`tools/golden/gen_onnx.py`), quantized from a calibration tensor file, run and inspected,
//! checked against the same workflow through the library API.

mod common;

use common::{arg, qtk_ok, read_tensor, write_tensors};
use ndarray::{ArrayD, IxDyn};
use qgraph::fuse::fuse_auto;
use qgraph::qconfig::get_default_qconfig;
use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert_with, io, prepare_with};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../qonnx/tests/fixtures/resnet18.onnx");
const CRNN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../qonnx/tests/fixtures/crnn.onnx");

/// `count` seeded images of the model's input shape (the batch dimension set to `count`).
fn images(shape: &[Option<usize>], count: usize, seed: u64) -> ArrayD<f32> {
    let dims: Vec<usize> =
        std::iter::once(count).chain(shape[1..].iter().map(|d| d.expect("fixed"))).collect();
    let len = dims.iter().product();
    ArrayD::from_shape_vec(IxDyn(&dims), qgraph::models::random_f32s(len, seed)).unwrap()
}

/// The library's workflow, as `qtk quantize --batch 3 [--float PATH]... [--then-dynamic]` runs it:
/// fuse, prepare (the x86 qconfig, `float` paths None), calibrate in batches of 3, convert, and
/// optionally `quantize_dynamic`.
fn library_workflow(
    mut model: Box<dyn Module>,
    calib_images: &ArrayD<f32>,
    float: &[&str],
    then_dynamic: bool,
) -> Box<dyn Module> {
    fuse_auto(&mut model).unwrap();
    let mapping = float
        .iter()
        .fold(QConfigMapping::global(get_default_qconfig("x86").unwrap()), |m, path| m.set_name(path, None));
    prepare_with(&mut model, &mapping, &qonnx::mappings()).unwrap();
    let batches = calib_images.axis_chunks_iter(ndarray::Axis(0), 3).map(|b| b.to_owned());
    calibrate(model.as_ref(), batches, |_, _| {}).unwrap();
    convert_with(&mut model, &qonnx::mappings()).unwrap();
    if then_dynamic {
        quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QInt8).unwrap();
    }
    model
}

#[test]
fn quantize_run_and_inspect_an_onnx_model_as_the_library_does() {
    let dir = tempfile::tempdir().unwrap();
    let imported = qonnx::import_file(MODEL).unwrap();
    let shape = imported.inputs[0].shape.clone();
    let calib_images = images(&shape, 6, 7);
    let calib = dir.path().join("calib.safetensors");
    write_tensors(&calib, &[("images", &calib_images)]);
    let int8 = dir.path().join("resnet18-int8.qtk");
    let report =
        qtk_ok(&["quantize", MODEL, "--calib", arg(&calib), "--batch", "3", "-o", arg(&int8)]).stdout;

    let model = library_workflow(imported.model, &calib_images, &[], false);
    let expected = io::to_bytes_with_inputs(model.as_ref(), &imported.inputs).unwrap();
    assert_eq!(std::fs::read(&int8).unwrap(), expected, "qtk's file is the library's");
    assert_eq!(io::load_inputs(&int8).unwrap(), imported.inputs);
    assert!(
        report.lines().any(|l| l.starts_with("layer1.0.conv1 ") && l.contains("QuantizedConvReLU2d")),
        "{report}"
    );

    // Run: the written output is the library model's.
    let image = images(&shape, 1, 8);
    let input = dir.path().join("image.safetensors");
    write_tensors(&input, &[("image", &image)]);
    let out = dir.path().join("out.safetensors");
    qtk_ok(&["run", arg(&int8), arg(&input), "-o", arg(&out)]);
    let want = model.forward(Value::from(image)).unwrap().to_float().unwrap();
    assert_eq!(read_tensor(&out, "output"), want);

    // Inspect prints the model and the recorded input.
    let text = qtk_ok(&["inspect", arg(&int8)]).stdout;
    assert!(text.contains("(conv1): QuantizedConvReLU2d(3, "), "{text}");
    let dims: Vec<String> = shape[1..].iter().map(|d| d.unwrap().to_string()).collect();
    assert!(
        text.contains(&format!("input `{}`: [N, {}]", imported.inputs[0].name, dims.join(", "))),
        "{text}"
    );
}

#[test]
fn a_crnn_quantizes_static_then_dynamic_as_the_library_does() {
    let dir = tempfile::tempdir().unwrap();
    let imported = qonnx::import_file(CRNN).unwrap();
    let calib_images = images(&imported.inputs[0].shape, 6, 11);
    let calib = dir.path().join("calib.safetensors");
    write_tensors(&calib, &[("lines", &calib_images)]);
    let int8 = dir.path().join("crnn-int8.qtk");
    let float = ["--float", "fc_quant", "--float", "fc", "--then-dynamic"];
    let base = ["quantize", CRNN, "--calib", arg(&calib), "--batch", "3", "-o", arg(&int8)];
    qtk_ok(&[&base[..], &float[..]].concat());

    let model = library_workflow(imported.model, &calib_images, &["fc_quant", "fc"], true);
    let expected = io::to_bytes_with_inputs(model.as_ref(), &imported.inputs).unwrap();
    assert_eq!(std::fs::read(&int8).unwrap(), expected, "qtk's file is the library's");
    let text = model.to_string();
    for kind in ["QuantizedConvReLU2d", "DynamicQuantizedLSTM", "DynamicQuantizedLinear"] {
        assert!(text.contains(kind), "{kind} missing from\n{text}");
    }

    // A path the model does not have is a usage error naming it.
    let run = common::qtk(&[&base[..], &["--float", "no.such.layer"][..]].concat());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--float no.such.layer"), "{}", run.stderr);
}

#[test]
fn report_target_and_auto_calibrators_on_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let imported = qonnx::import_file(MODEL).unwrap();
    let calib_images = images(&imported.inputs[0].shape, 6, 7);
    let calib = dir.path().join("calib.safetensors");
    write_tensors(&calib, &[("images", &calib_images)]);

    // `qtk report` quantizes as `qtk quantize` does and prints the numeric suite's report.
    let text = qtk_ok(&["report", MODEL, "--calib", arg(&calib), "--batch", "3"]).stdout;
    let model = library_workflow(imported.model.clone(), &calib_images, &[], false);
    let mut fused = imported.model.clone();
    fuse_auto(&mut fused).unwrap();
    let inputs: Vec<Value> =
        calib_images.axis_chunks_iter(ndarray::Axis(0), 3).map(|b| Value::from(b.to_owned())).collect();
    let expected = qgraph::ns::report(fused.as_ref(), model.as_ref(), &inputs, None).unwrap();
    let output = expected.output.as_ref().unwrap().sqnr.unwrap();
    assert!(text.contains(&format!("model output: SQNR {output:.2} dB")), "{output}\n{text}");
    assert!(text.lines().any(|l| l.starts_with("layer1.0.add_relu ") && l.contains("QFunctional")), "{text}");

    // The importer's modules go through the fallback search and the calibrator choice.
    let out = dir.path().join("target.qtk");
    let run = qtk_ok(&[
        "quantize",
        MODEL,
        "--calib",
        arg(&calib),
        "--batch",
        "3",
        "--target",
        "agreement=50",
        "-o",
        arg(&out),
    ]);
    assert!(run.stdout.contains("chosen: "), "{}", run.stdout);
    assert!(io::load_with(&out, &qonnx::loaders()).is_ok());
    let run = qtk_ok(&[
        "quantize",
        MODEL,
        "--calib",
        arg(&calib),
        "--batch",
        "3",
        "--calibrator",
        "auto",
        "-o",
        arg(&out),
    ]);
    assert!(run.stdout.starts_with("activation SQNR (dB) at each observer point"), "{}", run.stdout);
}
