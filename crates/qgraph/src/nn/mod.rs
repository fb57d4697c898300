//! Float modules (`torch.nn`): they run in f32 on float values, and those that PyTorch runs
//! directly on quantized tensors (ReLU, pooling, flatten, ...) also run on quantized values.

mod shape;
mod unary;

pub use shape::{AdaptiveAvgPool2d, Flatten, Identity};
pub use unary::ReLU;

/// Formats `v` as a Python tuple: `(3, 3)`, `(1,)`.
pub(crate) fn py_tuple(v: &[usize]) -> String {
    match v {
        [x] => format!("({x},)"),
        _ => format!("({})", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Python's `True` / `False`.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
