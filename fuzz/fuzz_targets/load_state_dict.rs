//! State-dict files from PyTorch are untrusted input: reading any bytes returns tensors or an
//! error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qgraph::io::state_dict_from_bytes(data);
});
