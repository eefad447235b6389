//! The [`Attack`] trait, the attacker's [`Goal`] and how targets are chosen
//! ([`TargetSelection`]): what every attack shares. Attacks only perturb; sweeping ε and
//! scoring the results belong to [`crate::evaluate_attack`].

use candle_core::{bail, DType, Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{AttackKind, MinNorm, Norm};

/// What the attacker is trying to achieve.
#[derive(Clone, Copy, Debug)]
pub enum Goal<'a> {
    /// Any wrong class: ascend the loss of the true labels, `(batch,)` u32.
    Untargeted { labels: &'a Tensor },
    /// A chosen class per example: descend the loss of `targets`, `(batch,)` u32.
    Targeted { targets: &'a Tensor },
}

impl Goal<'_> {
    /// The labels whose loss the attacker moves (true labels or targets).
    pub fn labels(&self) -> &Tensor {
        match self {
            Goal::Untargeted { labels } => labels,
            Goal::Targeted { targets } => targets,
        }
    }

    /// The labels (or targets) as `u32`, checked: one per example of a batch of `batch`, each
    /// below `n_classes`.
    pub(crate) fn checked_ids(&self, batch: usize, n_classes: usize) -> Result<Vec<u32>> {
        let ids = self.labels().to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if ids.len() != batch {
            bail!(
                "expected one label per example ({batch}), got {}",
                ids.len()
            )
        }
        if let Some(&bad) = ids.iter().find(|&&y| y as usize >= n_classes) {
            bail!("expected labels below {n_classes}, got {bad}")
        }
        Ok(ids)
    }

    /// The input gradient of the attacker's objective, to be *ascended*: `∇ₓL(x, y)` when
    /// untargeted, `−∇ₓL(x, t)` when targeted. The model runs in [`Mode::Eval`] and each row
    /// is that example's own gradient (of the summed per-example loss), detached.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)`; returns the same shape
    pub fn gradient(&self, model: &dyn Classifier, xs: &Tensor) -> Result<Tensor> {
        let labels = self.labels();
        let (batch, n_labels) = (xs.dim(0)?, labels.dims1()?);
        if n_labels != batch {
            bail!("expected one label per example ({batch}), got {n_labels}")
        }
        let grad = model.loss_and_input_grad(xs, labels, Mode::Eval)?.grad;
        match self {
            Goal::Untargeted { .. } => Ok(grad),
            Goal::Targeted { .. } => grad.neg(),
        }
    }
}

/// An attack within an Lp ball of radius ε.
pub trait Attack: Send + Sync {
    /// Short stable name for result files, e.g. `"fast-gradient-linf"`.
    fn name(&self) -> String;

    /// The threat model: outputs satisfy `‖x_adv − xs‖ ≤ ε` in this norm, per example.
    fn norm(&self) -> Norm;

    /// How the attack searches; [`AttackKind::Other`] unless the attack says otherwise.
    fn kind(&self) -> AttackKind {
        AttackKind::Other
    }

    /// The attacks an ensemble runs in turn, each on the examples the earlier ones left
    /// robust; empty for a single attack. Evaluation runs the members itself, so it can record
    /// which one broke each example ([`crate::ExampleOutcome::broken_by`]).
    fn members(&self) -> Vec<&dyn Attack> {
        Vec::new()
    }

    /// The attack as a minimum-norm search, when it is one: evaluation then runs the search
    /// once and scores every ε from its minimal examples ([`crate::evaluate_min_norm`]).
    fn min_norm(&self) -> Option<&dyn MinNorm> {
        None
    }

    /// The class each row of `xs` is aimed at when the attack, given the true `labels`,
    /// picks targets of its own ([`crate::Targeted`]), so evaluation can score targeted
    /// success; `None` for an attack that is not targeted.
    fn targets(
        &self,
        _model: &dyn Classifier,
        _xs: &Tensor,
        _labels: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Adversarial versions of `xs` for `goal`, detached.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)` in `[0, 1]`; returns the same shape
    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor>;
}

/// How a targeted attack picks each example's target class. A target is never the example's
/// own label, except with [`TargetSelection::Class`] for the examples of that class. Given
/// targets need no helper: pass them to [`Goal::Targeted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSelection {
    /// Uniform over the other classes, from a generator seeded with `seed` at every call (so a
    /// batch gets the same targets every time).
    Random { seed: u64 },
    /// The class with the lowest clean logit other than the label (Kurakin, Goodfellow &
    /// Bengio 2017, "Adversarial examples in the physical world", arXiv:1607.02533): the
    /// hardest target.
    LeastLikely,
    /// One class for every example. The examples of that class get it as their target too;
    /// [`crate::Targeted`] leaves them unattacked, since moving an image to its own class is
    /// no attack.
    Class(u32),
}

impl TargetSelection {
    /// Stable identifier for attack names: `"random"`, `"least-likely"`, `"class-3"`.
    pub fn name(&self) -> String {
        match self {
            TargetSelection::Random { .. } => "random".to_string(),
            TargetSelection::LeastLikely => "least-likely".to_string(),
            TargetSelection::Class(class) => format!("class-{class}"),
        }
    }

    /// One target per example, `(batch,)` u32 on the device of `xs`.
    ///
    /// [`TargetSelection::LeastLikely`] runs `model` on `xs` in [`Mode::Eval`];
    /// [`TargetSelection::Random`] and [`TargetSelection::Class`] only need its number of
    /// classes.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)`; `labels`: `(batch,)` integer classes
    ///
    /// # Errors
    /// On a label count different from the batch, a label or a [`TargetSelection::Class`]
    /// outside the model's classes, or a model with fewer than 2 classes (no other class to
    /// target).
    pub fn targets(&self, model: &dyn Classifier, xs: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (batch, n_labels) = (xs.dim(0)?, labels.dims1()?);
        if n_labels != batch {
            bail!("expected one label per example ({batch}), got {n_labels}")
        }
        let n_classes = model.n_classes();
        if n_classes < 2 {
            bail!("targets need at least 2 classes, got {n_classes}")
        }
        let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= n_classes) {
            bail!("expected labels below {n_classes}, got {bad}")
        }
        let targets: Vec<u32> = match self {
            TargetSelection::Random { seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(*seed);
                // Shifting the label by 1..n_classes−1 is uniform over the other classes.
                labels
                    .iter()
                    .map(|&y| (y + rng.random_range(1..n_classes as u32)) % n_classes as u32)
                    .collect()
            }
            TargetSelection::LeastLikely => {
                let logits = model
                    .forward(xs, Mode::Eval)?
                    .to_dtype(DType::F64)?
                    .to_vec2::<f64>()?;
                logits
                    .iter()
                    .zip(&labels)
                    .map(|(row, &y)| {
                        let mut least = if y == 0 { 1 } else { 0 };
                        for (j, &z) in row.iter().enumerate() {
                            if j as u32 != y && z < row[least] {
                                least = j;
                            }
                        }
                        least as u32
                    })
                    .collect()
            }
            TargetSelection::Class(class) => {
                if *class as usize >= n_classes {
                    bail!("expected a target class below {n_classes}, got {class}")
                }
                vec![*class; batch]
            }
        };
        Tensor::from_vec(targets, batch, &Device::Cpu)?.to_device(xs.device())
    }
}

/// Index of the largest entry, the first one on ties; 0 for an all-NaN row. Evaluation and the
/// attacks' own success checks use this one rule, so they agree on every example.
pub(crate) fn arg_max(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |(a, m), (i, &z)| {
                if z > m {
                    (i, z)
                } else {
                    (a, m)
                }
            },
        )
        .0
}
