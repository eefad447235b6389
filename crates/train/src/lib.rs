//! Training for gauntlet classifiers.
//!
//! [`TrainConfig`] (serde, the `[train]` table of a config file) says how long and with which
//! [`OptimizerConfig`]; [`train`] runs the loop on a [`Splits`](gauntlet_data::Splits): seeded
//! shuffling and dropout masks, the model's constraints after every update, early stopping on
//! the validation split with the best weights restored, a NaN/inf guard, and a [`TrainLog`] of
//! per-epoch records. Progress is reported to an [`Observer`]; the library never prints.

// `!(x > 0.0)` is deliberate throughout: unlike `x <= 0.0`, it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod config;
mod error;
mod eval;
mod log;
mod names;
mod optim;
mod regularizer;
mod state;
mod trainer;

pub use config::{AdversarialValidation, EarlyStopping, OptimizerConfig, TrainConfig};
pub use error::{Error, Result};
pub use eval::{evaluate, EvalResult};
pub use log::{EpochRecord, TrainLog};
pub use names::{check_file_name, MAX_NAME_LEN};
pub use optim::{Adam, Gradients, Optimizer, OptimizerState, Param, SgdMomentum};
pub use regularizer::{double_backprop_works, PerturbLabels, PerturbMode, Regularizer, StepOutput};
pub use trainer::{train, train_resumable, Observer, SilentObserver};
