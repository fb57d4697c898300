//! Writes seed inputs for the loader fuzz target: a small ResNet-style model saved in float and
//! in int8, into `fuzz/corpus/load_model/`.
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
    println!("wrote {dir}/float.safetensors and int8.safetensors");
    Ok(())
}
