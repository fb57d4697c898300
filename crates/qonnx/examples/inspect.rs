//! Imports an ONNX file and prints the module tree, its inputs and outputs, and the output shape
//! on a zero input: `cargo run -p qonnx --example inspect -- model.onnx`.

use ndarray::{ArrayD, IxDyn};
use qgraph::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: inspect MODEL.onnx")?;
    let imported = qonnx::import_file(&path)?;
    println!("{}", imported.model);
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
