//! The command line's one error type, and how it is printed.

use std::error::Error;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A workflow, model-file or module error from qgraph.
    #[error(transparent)]
    Graph(#[from] qgraph::GraphError),
    /// An ONNX model that cannot be imported.
    #[error("{}", prefixed(path, source))]
    Onnx {
        /// The ONNX file.
        path: String,
        /// What the importer said (boxed: the importer's error is large).
        source: Box<qonnx::OnnxError>,
    },
    /// A file or folder that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// An image that cannot be decoded.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: String,
        /// What the decoder said.
        source: image::ImageError,
    },
    /// Input data that does not fit the command (a tensor file without the named tensor, a
    /// shape the model cannot take, ...): the message names the file, the value and the fix.
    #[error("{0}")]
    Input(String),
    /// Arguments that parse but do not go together (exit code 2).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// An [`CliError::Io`] for `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CliError::Io { path: path.display().to_string(), source }
    }
}

/// `path: message`, unless the message already names the path.
fn prefixed(path: &str, message: &dyn std::fmt::Display) -> String {
    let message = message.to_string();
    if message.contains(path) { message } else { format!("{path}: {message}") }
}

/// Result of a command.
pub type Result<T> = std::result::Result<T, CliError>;

/// The error's message followed by each cause that the message does not already contain,
/// separated by `: `, on one line.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
