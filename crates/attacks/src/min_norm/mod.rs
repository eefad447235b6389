//! Minimum-norm attacks: per example, the smallest perturbation that breaks it, instead of
//! "broken at this ε or not". One run gives robust accuracy at every ε (a security curve,
//! [`crate::evaluate_min_norm`]).
//!
//! Each attack implements [`MinNorm`]; it is also an [`Attack`] for a fixed ε (its minimal
//! example where that lies inside the ε-ball, the clean input elsewhere), so suites, the CLI,
//! ensembles and transfer take it like any other, and evaluation runs its search once for all
//! ε ([`Attack::min_norm`]).

mod cw;
mod ddn;
mod deepfool;
mod fab;
mod fmn;
#[cfg(test)]
mod tests;

pub use cw::CarliniWagner;
pub use ddn::Ddn;
pub use deepfool::DeepFool;
pub use fab::{project_onto_hyperplane, Fab};
pub use fmn::Fmn;

use candle_core::{DType, Result, Tensor};
use gauntlet_models::Classifier;

use crate::batch::where_rows;
use crate::loss::succeeded;
use crate::{Attack, Goal, Norm};

/// An attack that searches, per example, for the adversarial input closest to it in its
/// norm ([`Attack::norm`]).
pub trait MinNorm: Attack {
    /// Per example, the adversarial input for `goal` with the smallest perturbation the search
    /// found (its best iterate), or the clean input where it found none; inside `[0, 1]`,
    /// detached. Examples misclassified (untargeted) or at their target (targeted) already are
    /// returned as they are.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)` in `[0, 1]`; returns the same shape
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor>;
}

/// [`Attack`] for a minimum-norm attack: its minimal example where that lies in the ε-ball.
macro_rules! attack_at_fixed_eps {
    ($t:ty, name = $name:expr, norm = $norm:expr) => {
        impl $crate::Attack for $t {
            fn name(&self) -> String {
                ($name)(self)
            }

            fn norm(&self) -> $crate::Norm {
                ($norm)(self)
            }

            fn kind(&self) -> $crate::AttackKind {
                $crate::AttackKind::MinimumNorm
            }

            fn min_norm(&self) -> Option<&dyn $crate::MinNorm> {
                Some(self)
            }

            fn perturb(
                &self,
                model: &dyn gauntlet_models::Classifier,
                xs: &candle_core::Tensor,
                goal: &$crate::Goal<'_>,
                eps: f64,
            ) -> candle_core::Result<candle_core::Tensor> {
                $crate::min_norm::within(self, model, xs, goal, eps)
            }
        }
    };
}
pub(crate) use attack_at_fixed_eps;

/// `attack`'s minimal examples that lie within `eps` of `xs` in its norm; the clean rows
/// elsewhere.
pub(crate) fn within(
    attack: &dyn MinNorm,
    model: &dyn Classifier,
    xs: &Tensor,
    goal: &Goal<'_>,
    eps: f64,
) -> Result<Tensor> {
    crate::norm::check_eps(eps)?;
    let adv = attack.minimize(model, xs, goal)?;
    let sizes = row_norms(attack.norm(), &adv.sub(xs)?)?;
    let inside: Vec<bool> = sizes.iter().map(|&d| d <= eps).collect();
    where_rows(&inside, &adv, xs)
}

/// `‖row‖` of each row of `delta`, in f64.
pub(crate) fn row_norms(norm: Norm, delta: &Tensor) -> Result<Vec<f64>> {
    norm.norm(delta)?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// Whether each row of `logits` meets `goal` (untargeted: a class other than the label;
/// targeted: the target), by the arg-max evaluation uses.
pub(crate) fn successes(logits: &Tensor, ids: &[u32], targeted: bool) -> Result<Vec<bool>> {
    let rows = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows
        .iter()
        .zip(ids)
        .map(|(row, &y)| succeeded(row, y, targeted))
        .collect())
}

/// The largest perturbation inside the box for each example: `‖max(x, 1 − x)‖`. No minimal
/// perturbation is larger, so radii are capped there.
pub(crate) fn box_diameter(norm: Norm, xs: &Tensor) -> Result<Vec<f64>> {
    let far = xs.maximum(&xs.affine(-1.0, 1.0)?)?;
    row_norms(norm, &far)
}

/// The smallest adversarial input seen so far for each example.
pub(crate) struct Best {
    pub(crate) adv: Tensor,
    pub(crate) size: Vec<f64>,
    pub(crate) found: Vec<bool>,
}

impl Best {
    /// Nothing found yet: the clean inputs, at infinite size.
    pub(crate) fn new(xs: &Tensor) -> Result<Self> {
        let n = xs.dim(0)?;
        Ok(Self {
            adv: xs.clone(),
            size: vec![f64::INFINITY; n],
            found: vec![false; n],
        })
    }

    /// Keeps each row of `candidate` that is adversarial and smaller than the best so far.
    pub(crate) fn offer(
        &mut self,
        candidate: &Tensor,
        size: &[f64],
        adversarial: &[bool],
    ) -> Result<()> {
        let better: Vec<bool> = (0..self.size.len())
            .map(|i| adversarial[i] && size[i] < self.size[i])
            .collect();
        if better.iter().any(|&b| b) {
            self.adv = where_rows(&better, &candidate.detach(), &self.adv)?;
        }
        for (i, &b) in better.iter().enumerate() {
            if b {
                self.size[i] = size[i];
                self.found[i] = true;
            }
        }
        Ok(())
    }
}

/// The attack's goal as labels and whether it is targeted, checked against the batch.
pub(crate) fn goal_ids(
    goal: &Goal<'_>,
    batch: usize,
    n_classes: usize,
) -> Result<(Vec<u32>, bool)> {
    let ids = goal.checked_ids(batch, n_classes)?;
    Ok((ids, matches!(goal, Goal::Targeted { .. })))
}

/// The input gradient of `z_a − z_b` for each row's pair in `slot` of `pairs` (a row with
/// fewer pairs repeats its last), from the graph of `logits = model(leaf)`. The first slot's
/// backward pass is the `forward_input_grad`'s own; each later one is reported to the model
/// ([`Classifier::note_backward`]) so that query counts see it.
///
/// # Shapes
/// - `logits`: `(n, classes)`; returns the shape of `leaf`
pub(crate) fn pair_gradient(
    model: &dyn Classifier,
    leaf: &candle_core::Var,
    logits: &Tensor,
    pairs: &[Vec<(u32, u32)>],
    slot: usize,
) -> Result<Tensor> {
    let n = pairs.len();
    let pick = |i: usize| pairs[i][slot.min(pairs[i].len() - 1)];
    let gather = |ids: Vec<u32>| -> Result<Tensor> {
        let ids = Tensor::from_vec(ids, (n, 1), logits.device())?;
        logits.gather(&ids, 1)?.squeeze(1)
    };
    let f = gather((0..n).map(|i| pick(i).0).collect())?
        .sub(&gather((0..n).map(|i| pick(i).1).collect())?)?;
    let grads = f.sum_all()?.backward()?;
    if slot > 0 {
        model.note_backward(n);
    }
    match grads.get(leaf.as_tensor()) {
        Some(g) => Ok(g.detach()),
        None => leaf.as_tensor().zeros_like(),
    }
}

/// The wrong class of `rank` (0: the runner-up) in `row`'s logits, label `y` left out: the
/// targets of FMN-T and FAB-T.
pub(crate) fn wrong_class_at_rank(row: &[f64], y: u32, rank: usize) -> u32 {
    let mut order: Vec<usize> = (0..row.len()).filter(|&j| j != y as usize).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order[rank] as u32
}

/// Cosine annealing from `start` (step 0) to `end` (the last step), as FMN and DDN schedule
/// their step sizes: `end + (start − end)(1 + cos(π i / steps)) / 2`.
pub(crate) fn cosine(start: f64, end: f64, i: usize, steps: usize) -> f64 {
    end + (start - end) * (1.0 + (std::f64::consts::PI * i as f64 / steps as f64).cos()) / 2.0
}
