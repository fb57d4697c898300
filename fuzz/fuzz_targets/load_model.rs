//! Model files are untrusted input: loading any bytes returns a model or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qgraph::io::from_bytes(data);
});
