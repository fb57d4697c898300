//! Crafted model files (see `common/crafted.rs`): each must load to an error, or run `forward`
//! on a small input to an output or an error, within the memory limit and without a panic.

mod common;

use common::crafted::{Case, Expect};
use ndarray::{ArrayD, IxDyn};
use qgraph::{io, memory};

/// The element limit of every forward here: 2^24 (64 MiB of f32).
const LIMIT: usize = 1 << 24;

/// Runs a case and returns what went wrong, if anything.
fn check(c: &Case) -> Option<String> {
    let outcome = io::from_bytes(&c.bytes).map(|model| {
        let n = c.input.iter().product();
        let x =
            ArrayD::from_shape_vec(IxDyn(c.input), (0..n).map(|i| (i % 5) as f32 * 0.25).collect()).unwrap();
        model.forward(x.into())
    });
    let ok = match (&outcome, &c.expect) {
        (Err(e), Expect::LoadError(text)) => e.to_string().contains(text),
        (Ok(Err(e)), Expect::ForwardError(text)) => e.to_string().contains(text),
        (Ok(Ok(y)), Expect::Output(shape)) => y.shape().is_ok_and(|s| s == *shape),
        _ => false,
    };
    let described = match &outcome {
        Err(e) => format!("load error: {e}"),
        Ok(Err(e)) => format!("forward error: {e}"),
        Ok(Ok(y)) => format!("output of shape {:?}", y.shape()),
    };
    (!ok).then(|| format!("{}: expected {:?}, got {described}", c.name, c.expect))
}

fn run_all(cases: Vec<Case>) {
    memory::set_max_elements(LIMIT);
    let failures: Vec<String> = cases.iter().filter_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_zoo_files_run() {
    run_all(common::crafted::valid_cases());
}

#[test]
fn crafted_sizes_in_configurations_are_errors_or_bounded() {
    run_all(common::crafted::configuration_cases());
}

#[test]
fn crafted_trees_are_errors_or_bounded() {
    run_all(common::crafted::tree_cases());
}

#[test]
fn crafted_tensors_are_errors() {
    run_all(common::crafted::tensor_cases());
}

#[test]
fn crafted_1d_and_3d_layers_are_errors_or_bounded() {
    run_all(common::crafted::layer_cases());
}
