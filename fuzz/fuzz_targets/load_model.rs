//! Model files are untrusted input: loading any bytes returns a model or an error, never panics,
//! and a model that loads runs `forward` on small inputs to an output or an error, within memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use qgraph::Module;

/// Input channels and spatial dimensions of the first layer that declares them.
fn input_geometry(model: &dyn Module) -> (usize, usize) {
    for (_, m) in model.named_modules() {
        let config = m.config();
        let options = config.get("options").unwrap_or(&config);
        let get = |key: &str| options.get(key).and_then(serde_json::Value::as_u64);
        if let Some(c) = get("in_channels") {
            let dims = options.get("kernel_size").and_then(|k| k.as_array()).map_or(2, Vec::len);
            return (c as usize, dims);
        }
        if let Some(c) = get("in_features") {
            return (c as usize, 0);
        }
        if let Some(c) = get("num_features") {
            return (c as usize, get("dims").unwrap_or(2) as usize);
        }
    }
    (3, 2)
}

fuzz_target!(|data: &[u8]| {
    // A forward's outputs stay far below the fuzzer's memory limit.
    qgraph::memory::set_max_elements(1 << 22);
    let Ok(model) = qgraph::io::from_bytes(data) else { return };
    let (channels, dims) = input_geometry(model.as_ref());
    let channels = channels.clamp(1, 64);
    for batch in [1, 0] {
        let mut shape = vec![batch, channels];
        shape.extend(std::iter::repeat_n(5, dims.min(3)));
        let n = shape.iter().product::<usize>();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| (i % 7) as f32 - 3.0).collect())
            .expect("length");
        let _ = model.forward(x.into());
    }
});
