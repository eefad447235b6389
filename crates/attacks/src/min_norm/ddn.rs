//! [`Ddn`]: decoupling direction and norm.

use candle_core::{Result, Tensor};
use gauntlet_models::Classifier;
use serde::{Deserialize, Serialize};

use super::fmn::{inside_box, positive, scale_rows};
use super::{attack_at_fixed_eps, box_diameter, cosine, goal_ids, row_norms, successes, Best};
use crate::{ConfigError, Goal, MinNorm, Norm};

/// Decoupled Direction and Norm: a normalised gradient step on the cross-entropy sets the
/// direction, and the perturbation is then rescaled to a radius that shrinks by `γ` while the
/// iterate is adversarial and grows by `γ` while it is not.
///
/// **Paper**: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger, "Decoupling Direction
/// and Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019,
/// <https://arxiv.org/abs/1811.09600>; the steps as the authors' code (adv_lib's `ddn`)
/// takes them, without its quantisation option.
///
/// **Threat model**: white box, L2, untargeted or targeted.
///
/// **Each step** `i` of `steps`, per example: the cross-entropy's input gradient `g` at
/// `x + δ` (ascending the label's loss, or descending the target's), the iterate kept as the
/// best one when adversarial and smaller than the best so far; then `δ ← δ + α g / ‖g‖₂`,
/// `ε ← (1 − γ)ε` if the iterate was adversarial else `(1 + γ)ε` (at most the largest
/// perturbation in the box), `δ ← ε δ / ‖δ‖₂`, clipped so `x + δ ∈ [0, 1]`. `α` falls from
/// 1 to 0.01 by cosine annealing. A zero gradient leaves `δ` where it is. The gradient's
/// components that point out of the box at `x + δ` are dropped first (as in
/// [`crate::Fmn`]; the reference keeps them, and its radius can then stall short of the
/// boundary).
///
/// **Parameters** (defaults of [`Ddn::new`], the paper's):
/// - `steps`: iterations, each one forward and one backward pass (100);
/// - `gamma`: radius factor (0.05);
/// - `init_norm`: the first radius (1.0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ddn {
    pub steps: usize,
    pub gamma: f64,
    pub init_norm: f64,
}

impl Default for Ddn {
    fn default() -> Self {
        Self {
            steps: 100,
            gamma: 0.05,
            init_norm: 1.0,
        }
    }
}

impl Ddn {
    /// The settings' preconditions, by key.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        positive("init-norm", self.init_norm)?;
        if !(self.gamma > 0.0 && self.gamma < 1.0) {
            return Err(ConfigError::new(
                "gamma",
                format!("must be in (0, 1), got {}", self.gamma),
            ));
        }
        Ok(())
    }
}

impl MinNorm for Ddn {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        self.validate()?;
        let n = xs.dim(0)?;
        let (ids, targeted) = goal_ids(goal, n, model.n_classes())?;
        let worst = box_diameter(Norm::L2, xs)?;
        let mut best = Best::new(xs)?;
        let mut radius = vec![self.init_norm; n];
        let mut delta = xs.zeros_like()?;
        for i in 0..self.steps {
            if model.exhausted() {
                break;
            }
            let alpha = cosine(1.0, 0.01, i, self.steps);
            let size = row_norms(Norm::L2, &delta)?;
            let adv = xs.add(&delta)?;
            let res =
                model.loss_and_input_grad(&adv, goal.labels(), gauntlet_models::Mode::Eval)?;
            let adversarial = successes(&res.logits, &ids, targeted)?;
            best.offer(&adv, &size, &adversarial)?;
            let grad = if targeted { res.grad.neg()? } else { res.grad };
            let grad = inside_box(&grad, &adv)?;
            let lens = row_norms(Norm::L2, &grad)?;
            let scale: Vec<f64> = lens
                .iter()
                .map(|&g| if g > 1e-12 { alpha / g } else { 0.0 })
                .collect();
            let moved = delta.add(&scale_rows(&grad, &scale)?)?;
            for k in 0..n {
                let factor = if adversarial[k] {
                    1.0 - self.gamma
                } else {
                    1.0 + self.gamma
                };
                radius[k] = (radius[k] * factor).min(worst[k]);
            }
            let moved_size = row_norms(Norm::L2, &moved)?;
            let rescale: Vec<f64> = moved_size
                .iter()
                .zip(&radius)
                .map(|(&len, &r)| if len > 0.0 { r / len } else { 0.0 })
                .collect();
            let rescaled = scale_rows(&moved, &rescale)?;
            delta = xs.add(&rescaled)?.clamp(0.0, 1.0)?.sub(xs)?;
        }
        Ok(best.adv)
    }
}

attack_at_fixed_eps!(
    Ddn,
    name = |_: &Ddn| "ddn-l2".to_string(),
    norm = |_: &Ddn| Norm::L2
);
