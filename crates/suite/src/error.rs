//! The suite crate's error type: every message names the file, and where it can the line,
//! column and field it is about.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The suite file is not valid TOML or does not match the schema.
    #[error("{}: {message}", location(path, *line_col))]
    Toml {
        path: PathBuf,
        /// 1-based line and column, when the parser knows them.
        line_col: Option<(usize, usize)>,
        message: String,
    },
    /// The suite file parses but says something impossible (a negative ε, an unknown model).
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// Where in the file, e.g. ``model `fgsm`.train`` or ``attack `pgd`.eps``.
        field: String,
        message: String,
    },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{}: {error}", path.display())]
    Csv { path: PathBuf, error: csv::Error },
    /// Another run holds the results folder's lock.
    #[error("{}: {message}", path.display())]
    Locked { path: PathBuf, message: String },
    /// A value that would not read back from the file it was to be written to.
    #[error("{}: {message}", path.display())]
    Unstorable { path: PathBuf, message: String },
    /// A job failed; the message says which.
    #[error("job {id}: {error}")]
    Job { id: String, error: Box<Error> },
    #[error(transparent)]
    Data(#[from] gauntlet_data::Error),
    #[error(transparent)]
    Train(#[from] gauntlet_train::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn location(path: &Path, line_col: Option<(usize, usize)>) -> String {
    match line_col {
        Some((line, column)) => format!("{}:{line}:{column}", path.display()),
        None => path.display().to_string(),
    }
}

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn invalid(
        path: &Path,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}
