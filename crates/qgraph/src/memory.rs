//! The bound on the tensors a forward allocates. A model file is untrusted input: its sizes
//! (an upsampling size, a pooling padding, an output channel count) decide how large the
//! outputs of a forward are, so every output buffer is sized here, with checked arithmetic,
//! against a process-wide element limit, and allocated fallibly: a size that overflows, exceeds
//! the limit or cannot be allocated is an error naming the module, never an abort.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{GraphResult, invalid};

/// The default limit on the elements of one tensor a forward creates: 2^32 (16 GiB of f32).
pub const DEFAULT_MAX_ELEMENTS: usize = 1 << 32;

static MAX_ELEMENTS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_ELEMENTS);

/// The largest number of elements one tensor made by a forward may have.
pub fn max_elements() -> usize {
    MAX_ELEMENTS.load(Ordering::Relaxed)
}

/// Sets [`max_elements`] for the whole process (e.g. lower, to run untrusted models in a
/// small memory budget).
pub fn set_max_elements(limit: usize) {
    MAX_ELEMENTS.store(limit, Ordering::Relaxed);
}

/// The number of elements of `shape`, or an error naming `context` if it overflows or exceeds
/// [`max_elements`]. Zero sizes count as 1 in that check: an empty tensor of shape
/// `[0, 2^40, 2^40]` has no elements, but the tables a kernel builds per output row or column
/// would still be huge.
pub(crate) fn checked_numel(context: &'static str, shape: &[usize]) -> GraphResult<usize> {
    let limit = max_elements();
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1))) {
        Some(extent) if extent <= limit => Ok(shape.iter().product()),
        Some(extent) => Err(invalid(
            context,
            "output shape",
            shape,
            format!(
                "{extent} elements (zero sizes counted as 1), more than the limit of {limit} \
                 (qgraph::memory::max_elements); check the module's sizes, or raise the limit with \
                 qgraph::memory::set_max_elements"
            ),
        )),
        None => Err(invalid(
            context,
            "output shape",
            shape,
            "the number of elements overflows usize; check the module's sizes",
        )),
    }
}

/// A buffer of `T::default()` for a tensor of `shape`, checked by [`checked_numel`] and
/// allocated fallibly.
pub(crate) fn zeroed<T: Clone + Default>(context: &'static str, shape: &[usize]) -> GraphResult<Vec<T>> {
    let mut v = reserved(context, shape)?;
    v.resize(shape.iter().product(), T::default());
    Ok(v)
}

/// An empty vector with room for exactly a tensor of `shape`, checked by [`checked_numel`],
/// allocated fallibly and not written: for a kernel that appends the whole output
/// (`qkernels::gemm::Output::AppendU8`), so that the threads computing it are the first to
/// touch its memory.
pub(crate) fn reserved<T>(context: &'static str, shape: &[usize]) -> GraphResult<Vec<T>> {
    let n = checked_numel(context, shape)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| invalid(context, "output shape", shape, format!("cannot allocate {n} elements: {e}")))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_and_huge_shapes_are_errors() {
        assert_eq!(zeroed::<u8>("t", &[2, 3]).unwrap().len(), 6);
        assert_eq!(zeroed::<u8>("t", &[0, 1 << 20, 2]).unwrap().len(), 0);
        assert!(zeroed::<u8>("t", &[0, 1 << 40, 1 << 20]).is_err());
        let overflow = zeroed::<u8>("t", &[1 << 40, 1 << 40]).unwrap_err().to_string();
        assert!(overflow.contains("overflows"), "{overflow}");
        let huge = zeroed::<f32>("t", &[1 << 20, 1 << 20]).unwrap_err().to_string();
        assert!(huge.contains("more than the limit") && huge.contains("set_max_elements"), "{huge}");
    }
}
