//! Writes seed inputs for the loader fuzz target into `fuzz/corpus/load_model/`: a small
//! ResNet-style model saved in float and in int8, and every crafted file of the `crafted` test
//! (small models of every layer kind with edited sizes, tensors and trees).
//!
//! ```text
//! cargo run -p qgraph --example fuzz_corpus
//! cd fuzz && cargo +nightly fuzz run load_model
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use qgraph::io;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/load_model");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/float.safetensors"), io::to_bytes(common::small_resnet().as_ref())?)?;
    std::fs::write(format!("{dir}/int8.safetensors"), io::to_bytes(common::small_resnet_int8().as_ref())?)?;
    let cases = [
        common::crafted::valid_cases(),
        common::crafted::configuration_cases(),
        common::crafted::tree_cases(),
        common::crafted::tensor_cases(),
        common::crafted::layer_cases(),
    ];
    let mut count = 2;
    for case in cases.into_iter().flatten() {
        let name: String =
            case.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::write(format!("{dir}/crafted_{name}.safetensors"), &case.bytes)?;
        count += 1;
    }
    println!("wrote {count} seed files to {dir}");
    Ok(())
}
