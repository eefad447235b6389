//! The training log: one record per epoch, kept as data and written as CSV or JSON by callers.

use serde::{Deserialize, Serialize};

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    pub momentum: Option<f64>,
    /// Mean training objective over the epoch's batches (train mode, dropout on).
    pub train_loss: f64,
    /// Error on the epoch's batches as they were trained on (train mode).
    pub train_error: f64,
    /// Clean validation loss and error in eval mode; `None` without a validation split.
    pub valid_loss: Option<f64>,
    pub valid_error: Option<f64>,
    /// Error under a single-step attack on a fixed validation subset (see
    /// [`crate::AdversarialValidation`]); `None` when no check is configured.
    pub valid_adv_error: Option<f64>,
    /// Error under a 10-step PGD at the same norm and ε on the same images.
    #[serde(default)]
    pub valid_pgd_error: Option<f64>,
    pub seconds: f64,
    pub examples_per_second: f64,
}

/// The whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    pub epochs: Vec<EpochRecord>,
    /// The epoch whose weights the model holds at the end (the best validation epoch when
    /// early stopping restored it, else the last).
    pub best_epoch: usize,
    /// Why training ended: "epochs" or "early-stopping".
    pub stopped_by: String,
    /// The objective, with its first-order penalty weight σ_eff = (1−α)·ε.
    pub regularizer: crate::Regularizer,
    pub sigma_eff: Option<f64>,
}

impl TrainLog {
    /// The epochs' wall times summed: the training time of a run that was interrupted and
    /// resumed, which no single process's clock sees whole.
    pub fn training_seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }
}
