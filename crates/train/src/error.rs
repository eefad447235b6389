//! The training crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "training diverged: loss {loss} at epoch {epoch}, batch {batch} (lower the learning rate?)"
    )]
    Diverged {
        epoch: usize,
        batch: usize,
        loss: f32,
    },
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A saved training state that cannot be resumed.
    #[error("training state {}: {message}", path.display())]
    State {
        path: std::path::PathBuf,
        message: String,
    },
    /// The observer asked to stop; the state of `epoch` is saved when the run is resumable.
    #[error("training stopped on request after epoch {epoch}")]
    Interrupted { epoch: usize },
    #[error(transparent)]
    Data(#[from] gauntlet_data::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
