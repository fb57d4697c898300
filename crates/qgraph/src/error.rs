//! The one error type of `qgraph`.

/// Everything that can be wrong with the input of a `qgraph` function. Each variant names the
/// module or function, the offending value and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two sizes that must agree do not.
    #[error("{context}: {what} is {got} but must be {expected}")]
    ShapeMismatch {
        /// The module or function.
        context: &'static str,
        /// Which size.
        what: &'static str,
        /// The size given.
        got: usize,
        /// The size required.
        expected: usize,
    },
    /// A backend name that `get_default_qconfig` does not know.
    #[error(
        "get_default_qconfig: backend {backend:?} is not supported; use one of x86, fbgemm, qnnpack, onednn"
    )]
    UnknownBackend {
        /// The name given.
        backend: String,
    },
}

/// `Result` with [`GraphError`].
pub type GraphResult<T> = Result<T, GraphError>;
