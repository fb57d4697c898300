//! ONNX files are untrusted input: importing any bytes returns a model or an error, never
//! panics, and an imported model runs `forward` on a small input to an output or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use qgraph::Value;

fuzz_target!(|data: &[u8]| {
    qgraph::memory::set_max_elements(1 << 22);
    let Ok(imported) = qonnx::import_bytes(data) else { return };
    let values: Vec<Value> = imported
        .inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.unwrap_or(1).min(8)).collect();
            Value::from(ArrayD::<f32>::ones(IxDyn(&shape)))
        })
        .collect();
    let input = if values.len() == 1 { values.into_iter().next().expect("one") } else { Value::Tuple(values) };
    let _ = imported.model.forward(input);
});
