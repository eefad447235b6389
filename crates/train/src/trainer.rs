//! The training loop.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use gauntlet_attacks::{Attack, FastGradient, Goal, Pgd};
use gauntlet_data::{Batches, Splits};
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{accuracy_counts, Classifier, Mode};

use crate::{evaluate, optim, state, EpochRecord, Error, Result, TrainConfig, TrainLog};

/// Receives progress; the CLI draws bars from it, tests ignore it.
pub trait Observer {
    fn batch_done(&mut self, _epoch: usize, _batch: usize, _n_batches: usize, _loss: f32) {}
    fn epoch_done(&mut self, _record: &EpochRecord) {}
    /// A resumable run continued from a saved state after `epoch` finished epochs.
    fn resumed(&mut self, _epoch: usize) {}
    /// Asked after every epoch (once its state is saved): `true` ends training with
    /// [`Error::Interrupted`]; a resumable run started again continues from there.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// An [`Observer`] that ignores everything.
pub struct SilentObserver;
impl Observer for SilentObserver {}

/// Seed streams, so that shuffling, dropout and later additions never share random numbers.
const SHUFFLE_STREAM: u64 = 1;
const DROPOUT_STREAM: u64 = 2;

/// Steps of the PGD run in the per-epoch adversarial check.
const PGD_CHECK_STEPS: usize = 10;

/// Trains `model` on `splits.train`, validating on `splits.valid` after every epoch.
///
/// With early stopping, training ends once the validation error has not improved for
/// `patience` epochs and the best epoch's weights are restored.
pub fn train(
    model: &dyn Classifier,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<TrainLog> {
    train_inner(model, splits, config, device, observer, None)
}

/// [`train`], saving the whole training state to `state` (atomically) after every epoch and,
/// when `state` already holds the state of the same run, continuing from it: a run killed at
/// any point and started again ends with the same weights and log (timings aside) as one
/// never interrupted. The model must be freshly built the same way both times. The file is
/// left in place; callers delete it once they have saved what they need.
///
/// # Errors
/// [`Error::State`] when `state` exists but is unreadable or belongs to another run.
pub fn train_resumable(
    model: &dyn Classifier,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    observer: &mut dyn Observer,
    state: &Path,
) -> Result<TrainLog> {
    train_inner(model, splits, config, device, observer, Some(state))
}

fn train_inner(
    model: &dyn Classifier,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    observer: &mut dyn Observer,
    state_path: Option<&Path>,
) -> Result<TrainLog> {
    config.validate()?;
    if splits.valid.is_empty() {
        for (set, what) in [
            (config.early_stopping.is_some(), "early-stopping"),
            (
                config.adversarial_validation.is_some(),
                "adversarial-validation",
            ),
        ] {
            if set {
                return Err(Error::Config(format!(
                    "{what} needs a validation split (valid-size > 0)"
                )));
            }
        }
    }
    flush_denormals();
    let mut optimizer = optim::build(&config.optimizer, optim::Param::of_model(model))?;
    let mut log = TrainLog {
        regularizer: config.regularizer.clone(),
        sigma_eff: config.regularizer.sigma_eff(),
        ..TrainLog::default()
    };
    let adv_check = config.adversarial_check();
    let adv_subset = match &adv_check {
        Some(check) if !splits.valid.is_empty() => {
            let subset = splits.valid.truncate(Some(check.n))?;
            Some((
                subset.images.to_device(device)?,
                subset.labels.to_device(device)?,
            ))
        }
        _ => None,
    };
    let mut best: Option<state::Best> = None;
    let eval_batch = 1000;
    let fingerprint = match state_path {
        Some(_) => Some(state::Fingerprint::new(
            config,
            model,
            splits.train.len(),
            splits.valid.len(),
        )?),
        None => None,
    };
    let mut first_epoch = 1;
    if let (Some(path), Some(fingerprint)) = (state_path, &fingerprint) {
        if let Some(restored) = state::load(path, fingerprint, model, optimizer.as_mut())? {
            first_epoch = restored.epoch + 1;
            log = restored.log;
            best = restored.best;
            observer.resumed(restored.epoch);
        }
    }

    for epoch in first_epoch..=config.epochs {
        let started = Instant::now();
        optimizer.start_epoch(epoch);
        let batches = Batches::new(
            splits.train.len(),
            config.batch_size,
            Some(derive_seed(
                derive_seed(config.seed, SHUFFLE_STREAM),
                epoch as u64,
            )),
        );
        let epoch_seed = derive_seed(derive_seed(config.seed, DROPOUT_STREAM), epoch as u64);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (batch_idx, batch) in batches.of(&splits.train).enumerate() {
            let batch = batch?;
            let xs = batch.images.to_device(device)?;
            let ys = batch.labels.to_device(device)?;
            let step = config.regularizer.step(
                model,
                &xs,
                &ys,
                derive_seed(epoch_seed, batch_idx as u64),
            )?;
            let loss_value = step.loss;
            if !loss_value.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    batch: batch_idx + 1,
                    loss: loss_value,
                });
            }
            optimizer.step(&step.grads)?;
            let logits = step.logits;

            let n = batch.len();
            loss_sum += loss_value as f64 * n as f64;
            correct += accuracy_counts(&logits, &ys)?.0;
            seen += n;
            observer.batch_done(epoch, batch_idx + 1, batches.len(), loss_value);
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let valid = if splits.valid.is_empty() {
            None
        } else {
            Some(evaluate(model, &splits.valid, eval_batch, device)?)
        };
        // Single-step and a short PGD on the same images: single-step training can overfit
        // to its own attack ("catastrophic overfitting"), which only the PGD column shows.
        let (valid_adv_error, valid_pgd_error) = match (&adv_check, &adv_subset) {
            (Some(check), Some((images, labels))) => {
                let mut pgd = Pgd::new(check.p);
                pgd.steps = PGD_CHECK_STEPS;
                pgd.seed = config.seed;
                let single = FastGradient::new(check.p);
                let mut errors = [0f64; 2];
                for (error, attack) in errors.iter_mut().zip([&single as &dyn Attack, &pgd]) {
                    let x_adv =
                        attack.perturb(model, images, &Goal::Untargeted { labels }, check.eps)?;
                    let (correct, _) =
                        accuracy_counts(&model.forward(&x_adv, Mode::Eval)?, labels)?;
                    *error = 1.0 - correct as f64 / labels.dims1()? as f64;
                }
                (Some(errors[0]), Some(errors[1]))
            }
            _ => (None, None),
        };
        let record = EpochRecord {
            epoch,
            lr: optimizer.learning_rate(),
            momentum: optimizer.momentum(),
            train_loss: loss_sum / seen as f64,
            train_error: 1.0 - correct as f64 / seen as f64,
            valid_loss: valid.map(|v| v.loss),
            valid_error: valid.map(|v| v.error),
            valid_adv_error,
            valid_pgd_error,
            seconds: started.elapsed().as_secs_f64(),
            examples_per_second: seen as f64 / train_seconds,
        };
        observer.epoch_done(&record);
        let train_loss = record.train_loss;
        log.epochs.push(record);
        log.best_epoch = epoch;
        if config
            .stop_at_train_loss
            .is_some_and(|target| train_loss <= target)
        {
            log.stopped_by = "train-loss-target".into();
            break;
        }

        if let (Some(es), Some(valid)) = (&config.early_stopping, valid) {
            let improved = best.as_ref().is_none_or(|(err, _, _)| valid.error < *err);
            if improved {
                best = Some((valid.error, epoch, model.params().snapshot()?));
            } else if epoch - best.as_ref().map_or(0, |b| b.1) >= es.patience {
                log.stopped_by = "early-stopping".into();
                break;
            }
        }
        if let (Some(path), Some(fingerprint)) = (state_path, &fingerprint) {
            let snapshot = state::Snapshot {
                epoch,
                log: &log,
                best: best.as_ref(),
            };
            state::save(path, fingerprint, model, optimizer.as_ref(), &snapshot)?;
        }
        if observer.should_stop() {
            return Err(Error::Interrupted { epoch });
        }
    }
    if log.stopped_by.is_empty() {
        log.stopped_by = "epochs".into();
    }
    if let Some((_, epoch, snapshot)) = best {
        model.params().restore(&snapshot)?;
        log.best_epoch = epoch;
    }
    Ok(log)
}

/// Sets flush-to-zero and denormals-are-zero on this thread: momentum buffers of unused maxout
/// pieces decay geometrically into subnormal floats, which made CPU epochs 25-50× slower in
/// measurements (research/candle.md, "Denormal floats").
fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting the FTZ (bit 15) and DAZ (bit 6) MXCSR flags only changes how this
    // thread rounds subnormal floats; it cannot violate memory safety.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}
