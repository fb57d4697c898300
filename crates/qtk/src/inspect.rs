//! `qtk inspect`: the model as PyTorch prints it, then its file size, tensors by dtype, modules
//! by type and recorded input shapes (or all of it as JSON).

use std::collections::BTreeMap;

use qgraph::Module;
use qgraph::record::TensorView;
use serde_json::json;

use crate::cli::InspectArgs;
use crate::error::Result;
use crate::model::{self, Loaded};

/// Tensors of one dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DTypeTotal {
    /// How many tensors.
    pub tensors: usize,
    /// Their elements.
    pub elements: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// What a model holds: the tensors it saves by dtype name, and its modules by type.
pub struct Summary {
    /// By dtype name (`float32`, `int8`, ...).
    pub dtypes: BTreeMap<&'static str, DTypeTotal>,
    /// By type name, every module of the tree including the root.
    pub modules: BTreeMap<String, usize>,
}

/// Counts what `model` saves (each module's own tensors, as `qgraph::io::save` writes them).
pub fn summarize(model: &dyn Module) -> Summary {
    let mut dtypes: BTreeMap<&'static str, DTypeTotal> = BTreeMap::new();
    let mut modules: BTreeMap<String, usize> = BTreeMap::new();
    for (_, module) in model.named_modules() {
        *modules.entry(module.type_name().to_string()).or_default() += 1;
        for (_, tensor) in module.tensors() {
            let (name, elements, width) = match tensor {
                TensorView::F32(x) => ("float32", x.len(), 4),
                TensorView::I8(x) => ("int8", x.len(), 1),
                TensorView::F64(x) => ("float64", x.len(), 8),
                TensorView::I64(x) => ("int64", x.len(), 8),
                TensorView::U8(x) => ("uint8", x.len(), 1),
            };
            let total = dtypes.entry(name).or_default();
            total.tensors += 1;
            total.elements += elements;
            total.bytes += elements * width;
        }
    }
    Summary { dtypes, modules }
}

/// `1234567` as `1.2 MiB`.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Runs the command.
pub fn main(args: &InspectArgs) -> Result<()> {
    let Loaded { model, inputs, format, file_bytes } = model::load(&args.file)?;
    let summary = summarize(model.as_ref());
    if args.json {
        let dtypes: serde_json::Map<String, serde_json::Value> = summary
            .dtypes
            .iter()
            .map(|(k, t)| {
                (k.to_string(), json!({ "tensors": t.tensors, "elements": t.elements, "bytes": t.bytes }))
            })
            .collect();
        let text = json!({
            "file": args.file.display().to_string(),
            "format": format.name(),
            "file_bytes": file_bytes,
            "model": model.to_string(),
            "inputs": inputs.iter().map(|i| json!({ "name": i.name, "shape": i.shape })).collect::<Vec<_>>(),
            "tensors": dtypes,
            "modules": summary.modules,
        });
        println!("{}", serde_json::to_string_pretty(&text).expect("plain data"));
        return Ok(());
    }
    println!("{model}\n");
    println!(
        "file: {} ({}, {} bytes, {})",
        args.file.display(),
        format.name(),
        file_bytes,
        human(file_bytes)
    );
    if inputs.is_empty() {
        println!("input shape: not recorded");
    }
    for input in &inputs {
        println!("input `{}`: {}", input.name, model::shape_text(input));
    }
    println!("tensors by dtype:");
    let mut total = DTypeTotal::default();
    for (name, t) in &summary.dtypes {
        println!("  {name:<8} {:>5} tensors {:>12} elements {:>12} bytes", t.tensors, t.elements, t.bytes);
        total.tensors += t.tensors;
        total.elements += t.elements;
        total.bytes += t.bytes;
    }
    println!(
        "  {:<8} {:>5} tensors {:>12} elements {:>12} bytes ({})",
        "total",
        total.tensors,
        total.elements,
        total.bytes,
        human(total.bytes as u64)
    );
    println!("modules by type:");
    let mut modules: Vec<_> = summary.modules.iter().collect();
    modules.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (name, n) in modules {
        println!("  {n:>4}  {name}");
    }
    Ok(())
}
