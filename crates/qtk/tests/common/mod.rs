//! Running the built `qtk` binary, and writing the files it reads.

#![allow(dead_code)] // each test binary uses its own share of these helpers

use std::path::Path;
use std::process::{Command, Output};

use ndarray::ArrayD;

/// What a run of `qtk` did.
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `qtk` with `args`.
pub fn qtk(args: &[&str]) -> Run {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_qtk")).args(args).output().expect("qtk starts");
    let run = Run {
        code: status.code().expect("qtk exits (no signal)"),
        stdout: String::from_utf8(stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(stderr).expect("UTF-8 stderr"),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("internal error"),
        "qtk panicked: {}",
        run.stderr
    );
    run
}

/// Runs `qtk` with `args`, requiring success.
pub fn qtk_ok(args: &[&str]) -> Run {
    let run = qtk(args);
    assert_eq!(run.code, 0, "qtk {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
    run
}

/// A path as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Writes `tensors` as an f32 safetensors file.
pub fn write_tensors(path: &Path, tensors: &[(&str, &ArrayD<f32>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, x)| {
            (name.to_string(), x.shape().to_vec(), x.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("writes the tensors");
}

/// Reads the one f32 tensor `name` of a safetensors file.
pub fn read_tensor(path: &Path, name: &str) -> ArrayD<f32> {
    let bytes = std::fs::read(path).expect("reads the file");
    qgraph::io::state_dict_from_bytes(&bytes).expect("float tensors").remove(name).expect("the tensor")
}

/// Bytes by safetensors dtype name (`F32`, `I8`, ...) of a safetensors file, from its header.
pub fn bytes_by_dtype(path: &Path) -> std::collections::BTreeMap<String, usize> {
    let bytes = std::fs::read(path).expect("reads the file");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out = std::collections::BTreeMap::new();
    for (_, view) in file.tensors() {
        *out.entry(format!("{:?}", view.dtype())).or_default() += view.data().len();
    }
    out
}
