//! [`Fmn`]: the fast minimum-norm attack.

use candle_core::{bail, DType, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use serde::{Deserialize, Serialize};

use super::{
    attack_at_fixed_eps, box_diameter, cosine, goal_ids, row_norms, successes, wrong_class_at_rank,
    Best,
};
use crate::{AttackLoss, ConfigError, Goal, MinNorm, Norm};

/// Fast Minimum-Norm: normalised gradient steps on the logit margin, projected onto an
/// ε-ball whose radius adapts per example: it shrinks while the iterate is adversarial and
/// grows while it is not.
///
/// **Paper**: Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through
/// Adaptive Norm Constraints", NeurIPS 2021, <https://arxiv.org/abs/2102.12827>; the steps as
/// the authors' reference code (adv_lib's `fmn`) takes them.
///
/// **Threat model**: white box, L1, L2, L∞ (and any Lp, with [`Norm::project_each`]'s radial
/// projection), untargeted or targeted.
///
/// **Each step** `i` of `steps`, per example: the margin `m` ([`AttackLoss::Margin`]: best
/// other logit minus the label's, or the target's minus the best other) and its gradient `g`
/// at `x + δ`; the iterate is kept as the best one when adversarial and smaller than the best
/// so far. The radius becomes `min((1 − γ)ε, best)` when adversarial, `(1 + γ)ε` when not
/// (once something was found), and before that `‖δ‖ + |m| / ‖g‖_dual` (the linearised
/// distance to the boundary; at least `(1 + γ)‖δ‖`, so that an iterate stuck on a tie still
/// moves, a departure from the reference); it never exceeds the largest perturbation in the box. Then
/// `δ ← proj_ε(δ + α g / ‖g‖₂)`, clipped so `x + δ ∈ [0, 1]`. `α` and `γ` fall from their
/// initial to their final values by cosine annealing. In L1 the projection is onto the ball
/// and the box at once ([`project_l1_box`]): projecting onto the ball and then clipping, as
/// the reference does, spends the sparse L1 budget on coordinates the box cuts off, and on
/// small inputs the search then stalls short of the boundary. For the same reason the
/// gradient's components that point out of the box at `x + δ` are dropped before the step and
/// the distance estimate ([`inside_box`]); the reference keeps them.
///
/// **Parameters** (defaults of [`Fmn::new`], the paper's):
/// - `norm`: no default;
/// - `steps`: iterations, each one forward and one backward pass (100);
/// - `alpha_init`, `alpha_final`: step size (1.0, then `alpha_init / 100`);
/// - `gamma_init`, `gamma_final`: radius factor (0.05, 0.001);
/// - `target_classes`: `None`, or `Some(k)` for **FMN-T**: with an untargeted goal, one
///   targeted run at each of the `k` most likely wrong classes of the clean input (as FAB-T
///   and APGD-T pick theirs), the smallest perturbation over the runs kept. The margin's
///   gradient points at the runner-up class; on a non-linear model the nearest boundary is
///   often another class's, which the untargeted run then never reaches. Costs `k` runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fmn {
    pub norm: Norm,
    pub steps: usize,
    pub alpha_init: f64,
    pub alpha_final: f64,
    pub gamma_init: f64,
    pub gamma_final: f64,
    /// Left out of the serialised form when `None`, so untargeted FMN keeps its cache keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_classes: Option<usize>,
}

impl Fmn {
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            steps: 100,
            alpha_init: 1.0,
            alpha_final: 0.01,
            gamma_init: 0.05,
            gamma_final: 0.001,
            target_classes: None,
        }
    }

    /// The settings' preconditions, by key.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        if let Some(k) = self.target_classes {
            ConfigError::at_least_one("target-classes", k)?;
        }
        positive("alpha-init", self.alpha_init)?;
        positive("alpha-final", self.alpha_final)?;
        for (key, gamma) in [
            ("gamma-init", self.gamma_init),
            ("gamma-final", self.gamma_final),
        ] {
            if !(gamma > 0.0 && gamma < 1.0) {
                return Err(ConfigError::new(
                    key,
                    format!("must be in (0, 1), got {gamma}"),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn positive(key: &'static str, v: f64) -> std::result::Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ConfigError::new(
            key,
            format!("must be finite and > 0, got {v}"),
        ));
    }
    Ok(())
}

impl MinNorm for Fmn {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        self.validate()?;
        let (k, labels) = match (self.target_classes, goal) {
            (Some(k), Goal::Untargeted { labels }) => (k, *labels),
            (Some(_), Goal::Targeted { .. }) => {
                bail!("fmn with target-classes (FMN-T) picks its own targets: give it true labels, not targets")
            }
            (None, _) => return Ok(self.run(model, xs, goal)?.adv),
        };
        let n = xs.dim(0)?;
        let n_classes = model.n_classes();
        let ids = goal.checked_ids(n, n_classes)?;
        let clean = model
            .forward(xs, Mode::Eval)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let mut best = Best::new(xs)?;
        for rank in 0..k.min(n_classes.saturating_sub(1)) {
            if model.exhausted() {
                break;
            }
            let targets: Vec<u32> = clean
                .iter()
                .zip(&ids)
                .map(|(row, &y)| wrong_class_at_rank(row, y, rank))
                .collect();
            let targets = Tensor::from_vec(targets, n, labels.device())?;
            let run = self.run(model, xs, &Goal::Targeted { targets: &targets })?;
            // At its target means misclassified: every success of a run is one here.
            best.offer(&run.adv, &run.size, &run.found)?;
        }
        Ok(best.adv)
    }
}

impl Fmn {
    /// One search for `goal`: the best iterate per example, with its size.
    fn run(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Best> {
        let norm = self.norm;
        let n = xs.dim(0)?;
        let (ids, targeted) = goal_ids(goal, n, model.n_classes())?;
        let worst = box_diameter(norm, xs)?;
        let mut best = Best::new(xs)?;
        let mut radius = vec![f64::INFINITY; n];
        let mut delta = xs.zeros_like()?;
        for i in 0..self.steps {
            if model.exhausted() {
                break;
            }
            let alpha = cosine(self.alpha_init, self.alpha_final, i, self.steps);
            let gamma = cosine(self.gamma_init, self.gamma_final, i, self.steps);
            let size = row_norms(norm, &delta)?;
            let adv = xs.add(&delta)?;
            let objective = AttackLoss::Margin.value_and_input_grad(model, &adv, goal)?;
            let adversarial = successes(&objective.logits, &ids, targeted)?;
            best.offer(&adv, &size, &adversarial)?;
            let margin = objective
                .value
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            let grad = inside_box(&objective.grad, &adv)?;
            let dual = row_norms(norm.dual(), &grad)?;
            for k in 0..n {
                radius[k] = if adversarial[k] {
                    (radius[k] * (1.0 - gamma)).min(best.size[k])
                } else if best.found[k] {
                    radius[k] * (1.0 + gamma)
                } else {
                    // The linearised distance is 0 on a tie at the boundary (which the
                    // arg-max gives to the first class), so the radius grows at least by γ.
                    (size[k] + margin[k].abs() / dual[k].max(1e-12)).max(size[k] * (1.0 + gamma))
                };
                radius[k] = radius[k].min(worst[k]);
                if !radius[k].is_finite() {
                    radius[k] = worst[k];
                }
            }
            let l2 = row_norms(Norm::L2, &grad)?;
            let scale: Vec<f64> = l2.iter().map(|&g| alpha / g.max(1e-12)).collect();
            let step = scale_rows(&grad, &scale)?;
            let moved = if norm == Norm::L1 {
                project_l1_box(&delta.add(&step)?, &radius, xs)?
            } else {
                norm.project_each(&delta.add(&step)?, &radius)?
            };
            // Clipped in f32 too: the L1 projection's own box is exact in f64 only.
            delta = xs.add(&moved)?.clamp(0.0, 1.0)?.sub(xs)?;
        }
        Ok(best)
    }
}

attack_at_fixed_eps!(
    Fmn,
    name = |a: &Fmn| match a.target_classes {
        Some(_) => format!("fmn-t-{}", a.norm.name()),
        None => format!("fmn-{}", a.norm.name()),
    },
    norm = |a: &Fmn| a.norm
);

/// `grad` without the components that point out of the box at `at`: those of coordinates
/// at 1 that would grow and at 0 that would shrink. A step along the rest loses nothing to
/// clipping; along the whole gradient, on images with many saturated pixels (MNIST), the
/// clipped part can be most of the step, and FMN's and DDN's radius then stops growing
/// short of the boundary.
pub(crate) fn inside_box(grad: &Tensor, at: &Tensor) -> Result<Tensor> {
    let dtype = grad.dtype();
    let up = at
        .ge(1.0)?
        .to_dtype(dtype)?
        .mul(&grad.gt(0.0)?.to_dtype(dtype)?)?;
    let down = at
        .le(0.0)?
        .to_dtype(dtype)?
        .mul(&grad.lt(0.0)?.to_dtype(dtype)?)?;
    grad.mul(&up.add(&down)?.affine(-1.0, 1.0)?)
}

/// Row `i` of `xs` times `factors[i]`.
pub(crate) fn scale_rows(xs: &Tensor, factors: &[f64]) -> Result<Tensor> {
    let mut shape = vec![1usize; xs.rank()];
    shape[0] = factors.len();
    let column = Tensor::from_vec(factors.to_vec(), shape, &candle_core::Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())?;
    xs.broadcast_mul(&column)
}

/// The Euclidean projection of each row `v` of `delta` onto `{‖w‖₁ ≤ εᵢ} ∩ {x + w ∈ [0, 1]}`:
/// `w_j = sign(v_j) · clamp(|v_j| − θ, 0, c_j)` with `c_j` the room the box leaves in the
/// direction of `v_j`, and `θ ≥ 0` the smallest threshold that brings `‖w‖₁` within `εᵢ`
/// (the KKT conditions of the problem; the sum is monotone in `θ`, found by bisection).
pub(crate) fn project_l1_box(delta: &Tensor, eps: &[f64], xs: &Tensor) -> Result<Tensor> {
    use candle_core::{DType, Device};
    let v = delta
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let x = xs.flatten_from(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mut out = Vec::with_capacity(v.len() * v.first().map_or(0, Vec::len));
    for ((v, x), &eps) in v.iter().zip(&x).zip(eps) {
        let cap: Vec<f64> = v
            .iter()
            .zip(x)
            .map(|(&vj, &xj)| if vj >= 0.0 { 1.0 - xj } else { xj }.max(0.0))
            .collect();
        let mass = |theta: f64| -> f64 {
            v.iter()
                .zip(&cap)
                .map(|(&vj, &c)| (vj.abs() - theta).clamp(0.0, c))
                .sum()
        };
        let theta = if mass(0.0) <= eps {
            0.0
        } else {
            let (mut lo, mut hi) = (0.0, v.iter().fold(0f64, |m, vj| m.max(vj.abs())));
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if mass(mid) > eps {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        out.extend(
            v.iter()
                .zip(&cap)
                .map(|(&vj, &c)| vj.signum() * (vj.abs() - theta).clamp(0.0, c)),
        );
    }
    Tensor::from_vec(out, delta.shape(), &Device::Cpu)?
        .to_dtype(delta.dtype())?
        .to_device(delta.device())
}
