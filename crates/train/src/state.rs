//! The trainer's resumable state: written atomically after every epoch, so a run killed at
//! any point continues from its last finished epoch and ends with the same weights as a run
//! never interrupted.
//!
//! One safetensors file holds the parameters (`param/<name>`), the optimizer's buffers
//! (`optim/<i>`), the best epoch's parameters under early stopping (`best/<name>`), and as
//! JSON metadata (`gauntlet.train-state`) the epochs done, the optimizer's step count, the
//! best validation error, the training log so far, and a fingerprint of what is being
//! trained. Shuffling, dropout masks and adversarial steps are drawn from seeds derived from
//! the run's seed and the epoch (and batch), so no generator state needs saving.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use gauntlet_models::io::write_atomic;
use gauntlet_models::Classifier;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::optim::{Optimizer, OptimizerState};
use crate::{Error, Result, TrainConfig, TrainLog};

/// Metadata key of the JSON part.
const META_KEY: &str = "gauntlet.train-state";
/// Layout version of the file; a file of another version is refused, not misread.
const VERSION: u32 = 1;

/// What a state file must have been written for: the same configuration (with its seed),
/// model and data sizes. A state of another run is refused instead of silently continued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    config: Value,
    seed: u64,
    model: Value,
    n_train: usize,
    n_valid: usize,
}

impl Fingerprint {
    pub(crate) fn new(
        config: &TrainConfig,
        model: &dyn Classifier,
        n_train: usize,
        n_valid: usize,
    ) -> Result<Self> {
        let json = |v: serde_json::Result<Value>| {
            v.map_err(|e| Error::Config(format!("cannot describe the run as JSON: {e}")))
        };
        Ok(Self {
            config: json(serde_json::to_value(config))?,
            seed: config.seed,
            model: json(serde_json::to_value(model.spec()))?,
            n_train,
            n_valid,
        })
    }
}

/// The JSON part of a state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    fingerprint: Fingerprint,
    /// Epochs finished (1-based count); training continues with `epoch + 1`.
    epoch: usize,
    optimizer_steps: u64,
    /// The best validation error as IEEE bits (exact) and its epoch, under early stopping.
    best: Option<(u64, usize)>,
    log: TrainLog,
}

/// The best epoch kept under early stopping: its validation error, epoch and parameters.
pub(crate) type Best = (f64, usize, Vec<Tensor>);

/// The loop's state at the end of an epoch.
pub(crate) struct Snapshot<'a> {
    pub epoch: usize,
    pub log: &'a TrainLog,
    pub best: Option<&'a Best>,
}

/// What [`load`] restored besides the model and optimizer.
pub(crate) struct Restored {
    pub epoch: usize,
    pub log: TrainLog,
    pub best: Option<Best>,
}

fn state_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes the state after an epoch, atomically.
pub(crate) fn save(
    path: &Path,
    fingerprint: &Fingerprint,
    model: &dyn Classifier,
    optimizer: &dyn Optimizer,
    snapshot: &Snapshot<'_>,
) -> Result<()> {
    let OptimizerState { steps, tensors } = optimizer.state()?;
    let mut named: Vec<(String, Tensor)> = model
        .params()
        .vars()
        .map(|(name, var)| (format!("param/{name}"), var.as_detached_tensor()))
        .collect();
    named.extend(
        tensors
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("optim/{i}"), t)),
    );
    if let Some((_, _, params)) = snapshot.best {
        let names = model.params().vars().map(|(n, _)| n);
        named.extend(
            names
                .zip(params)
                .map(|(n, t)| (format!("best/{n}"), t.clone())),
        );
    }
    let named = named
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = Meta {
        version: VERSION,
        fingerprint: fingerprint.clone(),
        epoch: snapshot.epoch,
        optimizer_steps: steps,
        best: snapshot.best.map(|(err, epoch, _)| (err.to_bits(), *epoch)),
        log: snapshot.log.clone(),
    };
    let json = serde_json::to_string(&meta).map_err(|e| state_error(path, e))?;
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| state_error(path, e))?;
    write_atomic(path, &bytes).map_err(|e| state_error(path, e))
}

/// Reads a state written by [`save`] for the same run, restoring the model's parameters and
/// the optimizer's buffers; `None` when there is no file.
pub(crate) fn load(
    path: &Path,
    fingerprint: &Fingerprint,
    model: &dyn Classifier,
    optimizer: &mut dyn Optimizer,
) -> Result<Option<Restored>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(path, e)),
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| state_error(path, format!("not a training state file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| state_error(path, format!("no `{META_KEY}` metadata")))?;
    let meta: Meta = serde_json::from_str(json)
        .map_err(|e| state_error(path, format!("metadata `{META_KEY}`: {e}")))?;
    if meta.version != VERSION {
        return Err(state_error(
            path,
            format!(
                "layout version {}, this gauntlet reads {VERSION}; delete it to start over",
                meta.version
            ),
        ));
    }
    if &meta.fingerprint != fingerprint {
        return Err(state_error(
            path,
            "was written by a different training run (configuration, seed, model or data size); \
             delete it to start over",
        ));
    }
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| state_error(path, e))?;
    let mut take = |name: String| {
        tensors
            .remove(&name)
            .ok_or_else(|| state_error(path, format!("tensor `{name}` is missing")))
    };
    let vars: Vec<_> = model.params().vars().cloned().collect();
    let mut params = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let t = take(format!("param/{name}"))?;
        if t.shape() != var.shape() || t.dtype() != var.dtype() {
            return Err(state_error(
                path,
                format!(
                    "tensor `param/{name}` is {:?} {:?}, the model's is {:?} {:?}",
                    t.dtype(),
                    t.shape(),
                    var.dtype(),
                    var.shape()
                ),
            ));
        }
        params.push(t.to_device(var.device())?);
    }
    let n_buffers = optimizer.state()?.tensors.len();
    let buffers = (0..n_buffers)
        .map(|i| take(format!("optim/{i}")))
        .collect::<Result<Vec<_>>>()?;
    let best = match meta.best {
        None => None,
        Some((bits, epoch)) => {
            let mut saved = Vec::with_capacity(vars.len());
            for (name, var) in &vars {
                saved.push(take(format!("best/{name}"))?.to_device(var.device())?);
            }
            Some((f64::from_bits(bits), epoch, saved))
        }
    };
    optimizer
        .set_state(OptimizerState {
            steps: meta.optimizer_steps,
            tensors: buffers,
        })
        .map_err(|e| state_error(path, e))?;
    for ((_, var), value) in vars.iter().zip(&params) {
        var.set(value)?;
    }
    Ok(Some(Restored {
        epoch: meta.epoch,
        log: meta.log,
        best,
    }))
}
