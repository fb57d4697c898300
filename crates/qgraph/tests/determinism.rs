//! Calibrating the same float model on the same data gives the same int8 model on every kernel
//! tier and thread count: the float path calibration observes has a fixed summation order.
//!
//! `QKERNELS_ISA` is read once per process, so the test re-runs its own binary once per tier the
//! CPU supports, with `QKERNELS_ISA` set; each child runs the whole workflow (fuse, prepare,
//! calibrate, convert, int8 inference) in rayon pools of 1 and 2 threads and writes the saved
//! model and the outputs to files, which the parent compares byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::ArrayD;
use qgraph::fuse::fuse_modules;
use qgraph::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, ReLU, manual_seed};
use qgraph::qconfig::get_default_qconfig;
use qgraph::qkernels::Isa;
use qgraph::{
    DeQuantStub, Graph, Module, QConfigMapping, QuantStub, Sequential, Value, calibrate, convert, eval, io,
    load_state_dict, prepare,
};

mod common;
use common::{block, random};

/// Set in the children: the directory their results go to.
const OUT_DIR: &str = "QGRAPH_DETERMINISM_OUT";
const TEST_NAME: &str = "calibration_gives_the_same_int8_model_on_every_tier_and_thread_count";

/// Conv+BN+ReLU (im2col), depthwise Conv+BN+ReLU (stride 2), pointwise Conv+BN, a ResNet basic
/// block at 40 channels and width 24 (the per-tap GEMM path) with its add+ReLU, pool, Linear.
fn float_model() -> Box<dyn Module> {
    manual_seed(11);
    let mut b = Graph::builder("Net");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let x = b.then("conv1", Conv2d::new(3, 32, [3, 3]).padding([1, 1]).build().unwrap(), &x);
    let x = b.then("bn1", BatchNorm2d::new(32), &x);
    let x = b.then("relu1", ReLU::new(), &x);
    let dw = Conv2d::new(32, 32, [3, 3]).stride([2, 2]).padding([1, 1]).groups(32).build().unwrap();
    let x = b.then("dw", dw, &x);
    let x = b.then("bn2", BatchNorm2d::new(32), &x);
    let x = b.then("relu2", ReLU::new(), &x);
    let x = b.then("pw", Conv2d::new(32, 40, [1, 1]).build().unwrap(), &x);
    let x = b.then("bn3", BatchNorm2d::new(40), &x);
    let x = b.then("layer1", Sequential::new(vec![Box::new(block(40, 40, 1).unwrap())]), &x);
    let x = b.then("avgpool", AdaptiveAvgPool2d::new([1, 1]), &x);
    let x = b.then("flatten", Flatten::new(1, -1), &x);
    let x = b.then("fc", Linear::new(40, 10, true), &x);
    let x = b.then("dequant", DeQuantStub::new(), &x);
    let mut model: Box<dyn Module> = Box::new(b.build(&x).unwrap());
    // Batch-norm statistics and affine parameters that are not the identity.
    let entries: BTreeMap<String, ArrayD<f32>> = model
        .state_dict()
        .into_iter()
        .enumerate()
        .map(|(i, (name, x))| {
            let mut x = x.clone();
            if name.contains("bn") {
                let r = random(x.shape(), 100 + i as u64);
                x = if name.ends_with("running_var") { r.mapv(|v| v.abs() + 0.25) } else { r };
            }
            (name, x)
        })
        .collect();
    load_state_dict(&mut model, entries).unwrap();
    eval(&mut model);
    let groups: &[&[&str]] = &[
        &["conv1", "bn1", "relu1"],
        &["dw", "bn2", "relu2"],
        &["pw", "bn3"],
        &["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"],
        &["layer1.0.conv2", "layer1.0.bn2"],
    ];
    fuse_modules(&mut model, groups).unwrap();
    model
}

fn output_bytes(value: Value) -> Vec<u8> {
    match value {
        Value::Float(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Value::Quant(q) => q.data().to_vec(),
        other => panic!("the models output one float or quint8 tensor, not {}", other.describe()),
    }
}

/// The whole workflow in the current rayon pool: the fused float model's output on the test batch,
/// the converted model's saved bytes, and its output on the test batch.
fn workflow() -> [Vec<u8>; 3] {
    let mut model = float_model();
    let test = random(&[2, 3, 48, 48], 7);
    let float_out = output_bytes(model.forward(test.clone().into()).unwrap());
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    prepare(&mut model, &mapping).unwrap();
    calibrate(model.as_ref(), (0..3).map(|i| random(&[2, 3, 48, 48], 20 + i)), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let saved = io::to_bytes(model.as_ref()).unwrap();
    let int8_out = output_bytes(model.forward(test.into()).unwrap());
    [float_out, saved, int8_out]
}

const PARTS: [&str; 3] = ["float-output", "int8-model", "int8-output"];

/// In a child: the workflow with 1 and 2 threads, written to `dir` as `<tier>-t<threads>-<part>`.
fn run_child(dir: &Path) {
    for threads in [1, 2] {
        let results = qtest::thread_pool(threads).install(workflow);
        for (part, bytes) in PARTS.iter().zip(results) {
            let file = dir.join(format!("{}-t{threads}-{part}", Isa::active()));
            std::fs::write(&file, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
    }
}

#[test]
fn calibration_gives_the_same_int8_model_on_every_tier_and_thread_count() {
    if let Some(dir) = std::env::var_os(OUT_DIR) {
        run_child(Path::new(&dir));
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("qgraph-determinism-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut runs = Vec::new();
    for isa in Isa::ALL {
        if !isa.is_supported() {
            println!("skipping the {isa} tier: this CPU does not support it");
            continue;
        }
        let output = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env("QKERNELS_ISA", isa.name())
            .env(OUT_DIR, &dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the {isa} run failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for threads in [1, 2] {
            let read = |part: &str| {
                let file = dir.join(format!("{isa}-t{threads}-{part}"));
                std::fs::read(&file)
                    .unwrap_or_else(|e| panic!("{}: {e} (did the child run?)", file.display()))
            };
            runs.push((format!("{isa}, {threads} thread(s)"), PARTS.map(read)));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let (first, reference) = &runs[0];
    assert!(reference.iter().all(|part| !part.is_empty()));
    for (run, results) in &runs[1..] {
        for ((part, got), expected) in PARTS.iter().zip(results).zip(reference) {
            assert!(got == expected, "{part}: {run} differs from {first}");
        }
    }
    println!(
        "identical on {} runs: {}",
        runs.len(),
        runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join("; ")
    );
}
