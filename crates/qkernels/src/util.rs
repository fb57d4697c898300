//! Helpers every kernel module shares: argument checks, the split of work over rayon, the raw
//! output pointer tasks write through, and the [`Tiered`] kernel bodies compiled once per tier.
//! Nothing here depends on a tier or an architecture.

use std::cell::RefCell;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::error::{KernelError, KernelResult};

/// Runs `f` with the thread-local scratch behind `key`, or with a fresh one if this thread is
/// already using it (a kernel that waits in a rayon join can be handed another task that needs
/// it).
pub(crate) fn with_thread_local<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut value) => f(&mut value),
        Err(_) => f(&mut T::default()),
    })
}

/// Elements per rayon task; tensors at most this long run on the calling thread.
pub(crate) const PAR_CHUNK: usize = 1 << 16;

/// `ShapeMismatch` unless `got == expected`.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    got: usize,
    expected: usize,
) -> KernelResult<()> {
    if got == expected { Ok(()) } else { Err(KernelError::ShapeMismatch { op, what, got, expected }) }
}

/// `InvalidArgument` for `what = value` of `op`, with the reason.
pub(crate) fn invalid(
    op: &'static str,
    what: &'static str,
    value: impl std::fmt::Debug,
    reason: &'static str,
) -> KernelError {
    KernelError::InvalidArgument { op, what, value: format!("{value:?}"), reason }
}

/// The number of elements of `shape`, or an error if it overflows.
pub(crate) fn numel(op: &'static str, shape: &[usize]) -> KernelResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(op, "shape", shape, "the number of elements overflows usize"))
}

/// Splits `len` work items into one contiguous part per rayon thread (each a multiple of 64
/// items), or runs `f(0, len)` inline for inputs of at most [`PAR_CHUNK`] items.
///
/// Static parts, not many small tasks: a tensor that fits in the caches stays split the same way
/// between the cores from one call to the next, so each core finds its half in its own L2.
pub(crate) fn for_chunks(len: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if len <= PAR_CHUNK || threads == 1 {
        f(0, len);
    } else {
        let part = len.div_ceil(threads).next_multiple_of(64);
        (0..len.div_ceil(part)).into_par_iter().for_each(|t| f(t * part, ((t + 1) * part).min(len)));
    }
}

/// Runs `f(start, end)` over `rows` rows: inline when the work (`rows * row_len`) is small,
/// otherwise in one contiguous part per rayon thread (see [`for_chunks`] for why).
pub(crate) fn par_rows(rows: usize, row_len: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if rows.saturating_mul(row_len) <= PAR_CHUNK || threads == 1 || rows == 1 {
        f(0, rows);
    } else {
        let part = rows.div_ceil(threads);
        (0..rows.div_ceil(part)).into_par_iter().for_each(|t| f(t * part, ((t + 1) * part).min(rows)));
    }
}

/// A raw output pointer that rayon tasks write disjoint ranges of.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: the pointer is only used to write disjoint ranges from different tasks (see each use).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. A method, so that a closure using it captures the whole (`Send`) wrapper
    /// rather than the raw field.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// The pointer `n` elements further (not dereferenced here).
    pub(crate) fn offset(self, n: usize) -> Self {
        SendPtr(self.0.wrapping_add(n))
    }

    /// The mutable sub-slice `[start, end)`.
    ///
    /// # Safety
    /// The range must lie inside the buffer the pointer was taken from, that buffer must outlive
    /// the slice, and no other live reference may overlap the range.
    pub(crate) unsafe fn slice<'a>(self, start: usize, end: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), end - start) }
    }
}

/// A kernel whose body is compiled once per tier: `run` is `#[inline(always)]` and is inlined into
/// a `#[target_feature]` function for each tier (`crate::x86`'s `run_*`), where LLVM vectorises it
/// with that tier's ISA. `crate::dispatch::run_tiered` picks the function.
pub(crate) trait Tiered {
    /// The body.
    fn run(&self);
}
