//! The report's error type: every message names the file it is about.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not valid JSON, or JSON that does not match the results schema.
    #[error("{}: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{}: {error}", path.display())]
    Csv { path: PathBuf, error: csv::Error },
    /// The file has no `schema_version` field: it was not written by `gauntlet`.
    #[error("{}: no `schema_version` field; is this a gauntlet results file?", path.display())]
    MissingSchemaVersion { path: PathBuf },
    /// The file was written with a layout this version of the report cannot read.
    #[error("{}: schema_version {found} is {}; this gauntlet reads schema_version {supported}: {}",
        path.display(),
        if *found < u64::from(*supported) { "older than supported" } else { "newer than supported" },
        if *found < u64::from(*supported) {
            "re-run `gauntlet run` (or `gauntlet merge`) on the suite to rewrite the results"
        } else {
            "use the gauntlet version that wrote the results"
        })]
    SchemaVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },
    /// The file parses but its content is inconsistent (an array of the wrong length, ...).
    #[error("{}: {what}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        what: String,
        message: String,
    },
    /// plotters failed to draw or encode a figure.
    #[error("{}: drawing failed: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn invalid(
        path: &Path,
        what: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
            message: message.into(),
        }
    }
}
