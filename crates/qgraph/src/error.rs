//! The one error type of `qgraph`.

/// Everything that can be wrong with the input of a `qgraph` function. Each variant names the
/// module or function, the offending value and the fix. An error raised inside a container
/// carries the dotted path of the module it came from ([`GraphError::At`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// An error inside the module at `path` (dotted, as PyTorch names it).
    #[error("module `{path}`: {source}")]
    At {
        /// The module's path, e.g. `layer1.0.conv1`.
        path: String,
        /// What went wrong there.
        source: Box<GraphError>,
    },
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
    /// A module or function argument outside what is accepted.
    #[error("{context}: {what} = {value} is invalid: {reason}")]
    InvalidArgument {
        /// The module or function.
        context: &'static str,
        /// The argument.
        what: &'static str,
        /// Its value, formatted.
        value: String,
        /// Why, and what would be accepted.
        reason: String,
    },
    /// A backend name that `get_default_qconfig` does not know.
    #[error(
        "get_default_qconfig: backend {backend:?} is not supported; use one of x86, fbgemm, qnnpack, onednn"
    )]
    UnknownBackend {
        /// The name given.
        backend: String,
    },
    /// A float tensor reached a quantized module.
    #[error(
        "{module} received a float tensor but runs on quantized tensors: a QuantStub is missing before \
         it (or give it qconfig None before prepare so that it stays float)"
    )]
    ExpectedQuantized {
        /// The module's type.
        module: String,
    },
    /// A quantized tensor reached a module that only runs in float.
    #[error(
        "{module} received a quantized tensor but runs on float tensors: a DeQuantStub is missing before it"
    )]
    ExpectedFloat {
        /// The module's type.
        module: String,
    },
    /// A value a module cannot take: a quantized dtype its kernels do not run on (a qint8
    /// tensor reaching a quint8 kernel), a tuple where one tensor is needed, or the reverse.
    #[error("{module} received {got} but runs on {expected}: {fix}")]
    UnsupportedValue {
        /// The module's type or path.
        module: String,
        /// The value given: its dtype and shape ([`crate::Value::describe`]).
        got: String,
        /// What the module runs on.
        expected: String,
        /// What to change.
        fix: String,
    },
    /// No module has this path.
    #[error("no module is named `{path}`; {hint}")]
    NoSuchModule {
        /// The path asked for.
        path: String,
        /// The names that exist at the deepest level reached.
        hint: String,
    },
    /// Modules that cannot be fused as asked.
    #[error("fuse_modules {modules:?}: {reason}")]
    Fusion {
        /// The names given.
        modules: Vec<String>,
        /// Why, and what is supported.
        reason: String,
    },
    /// A workflow step (prepare, calibrate, convert) cannot go ahead.
    #[error("{step}: {reason}")]
    Workflow {
        /// `prepare`, `calibrate`, `convert`, ...
        step: &'static str,
        /// Why, naming the modules concerned and the fix.
        reason: String,
    },
    /// A state dict or saved model does not fit the module tree.
    #[error("{context}: {reason}")]
    Mismatch {
        /// `load_state_dict`, `load`, ...
        context: &'static str,
        /// Which names or shapes differ.
        reason: String,
    },
    /// A model file that cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file (or `<bytes>`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved module whose type no loader knows.
    #[error(
        "module `{path}`: unknown module type {name:?}; register a loader for it (io::Loaders::register or \
         register_config) and load with io::load_with / io::from_bytes_with"
    )]
    UnknownModuleType {
        /// The saved type name ([`Module::saved_type`](crate::Module::saved_type)).
        name: String,
        /// The module's path in the saved tree.
        path: String,
    },
    /// A model file that was read but whose content cannot be rebuilt: the file and the typed
    /// error underneath (`source`, with the module path as [`GraphError::At`]).
    #[error("{file}: {source}")]
    Load {
        /// The file (or `<bytes>`).
        file: String,
        /// What went wrong while rebuilding.
        source: Box<GraphError>,
    },
    /// Invalid quantization parameters, as `qcore` reports them.
    #[error(transparent)]
    Quant(#[from] qcore::QError),
    /// A kernel refused its input.
    #[error(transparent)]
    Kernel(#[from] qkernels::KernelError),
    /// An observer refused its input or has no statistics.
    #[error(transparent)]
    Observe(#[from] qobserve::ObserveError),
}

impl GraphError {
    /// This error as raised inside the child `name`: the path grows at the front, so an error
    /// three containers deep reads `layer1.0.conv1: ...`.
    pub fn within(self, name: &str) -> GraphError {
        match self {
            GraphError::At { path, source } => GraphError::At { path: format!("{name}.{path}"), source },
            other => GraphError::At { path: name.to_string(), source: Box::new(other) },
        }
    }

    /// [`GraphError::within`] for a full dotted path (`""` leaves the error as it is).
    pub fn within_path(self, path: &str) -> GraphError {
        if path.is_empty() { self } else { self.within(path) }
    }

    /// The error without its path.
    pub fn root_cause(&self) -> &GraphError {
        match self {
            GraphError::At { source, .. } | GraphError::Load { source, .. } => source.root_cause(),
            other => other,
        }
    }
}

/// `Result` with [`GraphError`].
pub type GraphResult<T> = Result<T, GraphError>;

/// Shorthand for [`GraphError::InvalidArgument`].
pub(crate) fn invalid(
    context: &'static str,
    what: &'static str,
    value: impl std::fmt::Debug,
    reason: impl Into<String>,
) -> GraphError {
    GraphError::InvalidArgument { context, what, value: format!("{value:?}"), reason: reason.into() }
}
