//! Training hyper-parameters as data (the `[train]` table of a configuration file).

use serde::{Deserialize, Serialize};

use gauntlet_attacks::Norm;

use crate::{Error, Regularizer, Result};

/// How to train. Defaults follow pylearn2's Maxout recipe where it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    /// Stop when the validation error has not improved for `patience` epochs.
    pub early_stopping: Option<EarlyStopping>,
    /// Stop after the first epoch whose mean training objective is at most this value:
    /// pylearn2's second Maxout stage, which continues on all the data until the objective
    /// reaches the first stage's training objective at its best epoch.
    pub stop_at_train_loss: Option<f64>,
    /// The objective: plain cross-entropy or a member of the Lp regularization family.
    pub regularizer: Regularizer,
    /// Single-step adversarial error on the first validation images after every epoch, so
    /// catastrophic overfitting shows in the log. Defaults to the regularizer's norm and ε.
    pub adversarial_validation: Option<AdversarialValidation>,
    /// Seed for shuffling and dropout masks; set from the run's top-level `seed`.
    #[serde(skip)]
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 100,
            optimizer: OptimizerConfig::default(),
            early_stopping: None,
            stop_at_train_loss: None,
            regularizer: Regularizer::None,
            adversarial_validation: None,
            seed: 1,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Config(format!(
                "epochs and batch-size must be at least 1, got {} and {}",
                self.epochs, self.batch_size
            )));
        }
        if let Some(es) = &self.early_stopping {
            if es.patience == 0 {
                return Err(Error::Config(
                    "early-stopping patience must be at least 1".into(),
                ));
            }
        }
        if let Some(av) = &self.adversarial_validation {
            if !(av.eps >= 0.0) || av.n == 0 {
                return Err(Error::Config(format!(
                    "adversarial-validation needs eps >= 0 and n >= 1, got eps {} and n {}",
                    av.eps, av.n
                )));
            }
        }
        self.regularizer.validate()?;
        self.optimizer.validate()
    }

    /// These settings continuing a first stage whose log is `first` (pylearn2's second Maxout
    /// stage): SGD at the learning rate and momentum the first stage had reached at the epoch
    /// it kept, the momentum held there and the rate still decaying per batch (Adam keeps its
    /// rate), stopping once an epoch's mean training objective falls to that epoch's.
    pub fn second_stage(&self, first: &crate::TrainLog) -> Result<TrainConfig> {
        let best = first
            .epochs
            .iter()
            .find(|e| e.epoch == first.best_epoch)
            .ok_or_else(|| {
                Error::Config(format!(
                    "the first stage's log has no record of its kept epoch {}",
                    first.best_epoch
                ))
            })?;
        if !best.train_loss.is_finite() || !best.lr.is_finite() {
            return Err(Error::Config(format!(
                "the first stage's epoch {} has training objective {} and learning rate {}",
                best.epoch, best.train_loss, best.lr
            )));
        }
        let mut out = self.clone();
        if let OptimizerConfig::Sgd {
            lr,
            momentum,
            final_momentum,
            ..
        } = &mut out.optimizer
        {
            let mu = best.momentum.unwrap_or(*momentum);
            (*lr, *momentum, *final_momentum) = (best.lr, mu, Some(mu));
        }
        out.stop_at_train_loss = Some(best.train_loss);
        Ok(out)
    }

    /// The adversarial check to run after each epoch: the configured one, else one at the
    /// regularizer's own norm and ε on 1,000 validation images.
    pub fn adversarial_check(&self) -> Option<AdversarialValidation> {
        self.adversarial_validation.clone().or_else(|| {
            self.regularizer
                .threat()
                .map(|(p, eps)| AdversarialValidation { p, eps, n: 1000 })
        })
    }
}

/// A fast-gradient attack on the first `n` validation images after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdversarialValidation {
    pub p: Norm,
    pub eps: f64,
    #[serde(default = "default_adv_n")]
    pub n: usize,
}

fn default_adv_n() -> usize {
    1000
}

/// Early stopping on the validation error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EarlyStopping {
    pub patience: usize,
}

/// The optimizer and its schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// pylearn2's SGD with momentum: `v ← μv − ηg; θ ← θ + v`, with `η_t = lr / lr_decay^t`
    /// per mini-batch (floored at `min_lr`) and μ rising linearly from `momentum` at epoch 1
    /// to `final_momentum` at epoch `momentum_saturate`.
    #[serde(rename_all = "kebab-case")]
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        final_momentum: Option<f64>,
        #[serde(default = "default_saturate")]
        momentum_saturate: usize,
        #[serde(default = "default_decay")]
        lr_decay: f64,
        #[serde(default = "default_min_lr")]
        min_lr: f64,
    },
    /// Adam (Kingma & Ba 2015).
    #[serde(rename_all = "kebab-case")]
    Adam {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_adam_eps")]
        eps: f64,
    },
}

fn default_momentum() -> f64 {
    0.5
}
fn default_saturate() -> usize {
    250
}
fn default_decay() -> f64 {
    1.0
}
fn default_min_lr() -> f64 {
    1e-6
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    /// pylearn2's `mnist_pi.yaml`: lr 0.1 decaying by 1.000004 per batch, momentum 0.5 → 0.7.
    fn default() -> Self {
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.5,
            final_momentum: Some(0.7),
            momentum_saturate: 250,
            lr_decay: 1.000004,
            min_lr: 1e-6,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        // `inf > 0`: a non-finite setting would pass a bare comparison and diverge.
        let positive = |x: f64| x.is_finite() && x > 0.0;
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                final_momentum,
                momentum_saturate,
                lr_decay,
                min_lr,
            } => {
                if !(positive(lr) && min_lr.is_finite() && min_lr >= 0.0) {
                    return bad(format!(
                        "sgd lr must be > 0 and min-lr >= 0, both finite, got {lr} and {min_lr}"
                    ));
                }
                for m in std::iter::once(momentum).chain(final_momentum) {
                    if !(0.0..1.0).contains(&m) {
                        return bad(format!("sgd momentum must be in [0, 1), got {m}"));
                    }
                }
                if momentum_saturate == 0 || !(lr_decay.is_finite() && lr_decay >= 1.0) {
                    return bad(format!(
                        "sgd momentum-saturate must be >= 1 and lr-decay finite and >= 1, got {momentum_saturate} and {lr_decay}"
                    ));
                }
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                if !positive(lr)
                    || !(0.0..1.0).contains(&beta1)
                    || !(0.0..1.0).contains(&beta2)
                    || !positive(eps)
                {
                    return bad(format!(
                        "adam needs a finite lr > 0, betas in [0, 1) and a finite eps > 0, got lr {lr}, beta1 {beta1}, beta2 {beta2}, eps {eps}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, lr: f64, momentum: f64, train_loss: f64) -> crate::EpochRecord {
        crate::EpochRecord {
            epoch,
            lr,
            momentum: Some(momentum),
            train_loss,
            train_error: 0.1,
            valid_loss: Some(0.2),
            valid_error: Some(0.05),
            valid_adv_error: None,
            valid_pgd_error: None,
            seconds: 1.0,
            examples_per_second: 1.0,
        }
    }

    #[test]
    fn a_second_stage_starts_at_the_kept_epochs_rate_and_momentum() {
        let first = crate::TrainLog {
            epochs: vec![
                epoch(1, 0.09, 0.5, 0.4),
                epoch(2, 0.08, 0.6, 0.3),
                epoch(3, 0.07, 0.7, 0.2),
            ],
            best_epoch: 2,
            ..Default::default()
        };
        let base = TrainConfig {
            optimizer: OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.5,
                final_momentum: Some(0.7),
                momentum_saturate: 3,
                lr_decay: 1.01,
                min_lr: 1e-6,
            },
            ..Default::default()
        };
        let second = base.second_stage(&first).unwrap();
        assert_eq!(
            second.optimizer,
            OptimizerConfig::Sgd {
                lr: 0.08,
                momentum: 0.6,
                final_momentum: Some(0.6),
                momentum_saturate: 3,
                lr_decay: 1.01,
                min_lr: 1e-6,
            }
        );
        assert_eq!(second.stop_at_train_loss, Some(0.3));
        assert_eq!(second.epochs, base.epochs);

        let lost = crate::TrainLog {
            best_epoch: 5,
            ..first.clone()
        };
        let err = base.second_stage(&lost).unwrap_err().to_string();
        assert!(err.contains("no record of its kept epoch 5"), "{err}");
        let mut broken = first;
        broken.epochs[1].train_loss = f64::NAN;
        let err = base.second_stage(&broken).unwrap_err().to_string();
        assert!(err.contains("training objective NaN"), "{err}");
    }

    #[test]
    fn parses_toml_with_defaults_and_rejects_typos() {
        let c: TrainConfig = toml::from_str(
            "epochs = 3\noptimizer = { kind = \"sgd\", lr = 0.05, final-momentum = 0.9 }\nearly-stopping = { patience = 2 }",
        )
        .unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.batch_size, 100);
        match c.optimizer {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                final_momentum,
                ..
            } => {
                assert_eq!((lr, momentum, final_momentum), (0.05, 0.5, Some(0.9)))
            }
            _ => panic!("expected sgd"),
        }
        let err = toml::from_str::<TrainConfig>("epoch = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch"), "{err}");
        let err =
            toml::from_str::<TrainConfig>("optimizer = { kind = \"sgd\", lr = 1, momentun = 0.9 }")
                .unwrap_err()
                .to_string();
        assert!(err.contains("momentun"), "{err}");
        let c: TrainConfig =
            toml::from_str("optimizer = { kind = \"sgd\", lr = 0.1, momentum = 1.5 }").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("momentum"));
    }

    #[test]
    fn non_finite_learning_rates_are_refused() {
        for text in [
            "optimizer = { kind = \"sgd\", lr = inf }",
            "optimizer = { kind = \"sgd\", lr = nan }",
            "optimizer = { kind = \"sgd\", lr = 0.1, lr-decay = inf }",
            "optimizer = { kind = \"adam\", lr = inf }",
            "optimizer = { kind = \"adam\", lr = 0.1, eps = inf }",
        ] {
            let c: TrainConfig = toml::from_str(text).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("finite"), "{text}: {err}");
        }
    }
}
