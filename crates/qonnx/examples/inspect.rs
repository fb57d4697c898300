//! Imports an ONNX file and prints the module tree, the import time, its inputs and outputs, and
//! the output shape on a zero input: `cargo run -p qonnx --example inspect -- model.onnx`.

use ndarray::{ArrayD, IxDyn};
use qgraph::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: inspect MODEL.onnx")?;
    let start = std::time::Instant::now();
    let imported = qonnx::import_file(&path)?;
    let elapsed = start.elapsed();
    println!("{}", imported.model);
    println!("imported in {:.1} ms", elapsed.as_secs_f64() * 1e3);
    println!("inputs: {:?}\noutputs: {:?}", imported.inputs, imported.outputs);
    let values: Vec<Value> = imported
        .inputs
        .iter()
        .map(|i| {
            Value::from(ArrayD::<f32>::zeros(IxDyn(
                &i.shape.iter().map(|d| d.unwrap_or(1)).collect::<Vec<_>>(),
            )))
        })
        .collect();
    let input =
        if values.len() == 1 { values.into_iter().next().expect("one") } else { Value::Tuple(values) };
    let out = imported.model.forward(input)?;
    println!("output shape on zeros: {:?}", out.shape().ok());
    Ok(())
}
