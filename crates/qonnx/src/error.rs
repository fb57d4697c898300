//! The one error type of `qonnx`.

/// What can go wrong importing an ONNX model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ONNX protobuf.
    #[error("malformed ONNX file: {message} at byte {offset}: {reason}")]
    Malformed {
        /// The protobuf message being read.
        message: &'static str,
        /// The byte offset within that message.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A node's operator is not one the importer maps.
    #[error(
        "node `{node}`: operator {op_type:?} (domain {domain:?}) is not supported; supported operators: \
         {supported}"
    )]
    UnsupportedOp {
        /// The node's name.
        node: String,
        /// Its operator.
        op_type: String,
        /// Its domain.
        domain: String,
        /// The supported operators, comma-separated.
        supported: String,
    },
    /// A node uses an operator in a way the importer does not map.
    #[error("node `{node}` ({op_type}): {reason}; {fix}")]
    Node {
        /// The node's name.
        node: String,
        /// Its operator.
        op_type: String,
        /// What is wrong.
        reason: String,
        /// What to do about it.
        fix: String,
    },
    /// A feature of the file the importer does not read.
    #[error("{what} is not supported: {fix}")]
    Unsupported {
        /// The feature.
        what: String,
        /// What to do instead.
        fix: String,
    },
    /// A graph value is used but never defined.
    #[error("value `{value}` used by node `{node}` is not defined by any earlier node, input or initializer")]
    Undefined {
        /// The value's name.
        value: String,
        /// The node reading it.
        node: String,
    },
    /// Building or running the qgraph model failed.
    #[error(transparent)]
    Graph(#[from] qgraph::GraphError),
}
