//! What the float modules share for their arguments: the size limit and its check, and Python's
//! spelling of tuples and booleans in printouts.

use crate::{GraphResult, invalid};

/// The largest size a module's configuration holds (a kernel size, stride, padding, dilation
/// or output size): 2^31 - 1, as PyTorch's backends keep them in `int`. Files with larger
/// sizes are refused when they load, so that no size arithmetic of a forward can overflow.
pub const MAX_SIZE: usize = qkernels::pool::MAX_WINDOW;

/// Checks every entry of `values` (the argument `what` of `context`) against `min..=MAX_SIZE`.
pub(crate) fn check_sizes(
    context: &'static str,
    what: &'static str,
    values: &[usize],
    min: usize,
) -> GraphResult<()> {
    if values.iter().any(|&v| v < min || v > MAX_SIZE) {
        let range = if min == 0 { "at most 2^31 - 1" } else { "positive and at most 2^31 - 1" };
        return Err(invalid(context, what, values, format!("every entry must be {range}")));
    }
    Ok(())
}

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
