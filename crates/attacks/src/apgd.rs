//! [`Apgd`]: Auto-PGD, projected gradient ascent with momentum and a step size that halves on a
//! schedule of checkpoints, keeping each example's best point. Steps and projections are the
//! [`Norm`] core's, except APGD-L1's sparse step (see [`Apgd`]).

use candle_core::{bail, DType, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::batch::{replace_rows, select_rows, where_rows};
use crate::loss::succeeded;
use crate::norm::check_eps;
use crate::{Attack, AttackKind, AttackLoss, ConfigError, Goal, Norm};

/// Auto-PGD (APGD): PGD without a step size to tune.
///
/// **Paper**: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
/// diverse parameter-free attacks", ICML 2020, <https://arxiv.org/abs/2003.01690>, Algorithm 1;
/// the L1 version from Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on
/// image classifiers", ICML 2021, <https://arxiv.org/abs/2103.01208>. Ported from the authors'
/// `autoattack/autopgd_base.py` (github.com/fra31/auto-attack).
///
/// **Threat model**: white-box, untargeted or targeted ([`Goal`]); `‖x_adv − x‖_p ≤ ε` per
/// example and `x_adv ∈ [0, 1]` when clipping.
///
/// **The iteration** (L∞, L2 and any other `p`): from `x⁽⁰⁾` (a uniform point of the ball,
/// [`Norm::random`], or the clean input), with `P` the projection onto the ball
/// ([`Norm::project`]) followed by clipping, `s` the steepest-ascent step of length `η`
/// ([`Norm::steepest`]) and momentum `α = 0.75` (1 at the first step):
/// `z = P(x⁽ᵏ⁾ + s(∇L(x⁽ᵏ⁾)))`, `x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))`.
/// The step starts at `η = 2ε`. At the checkpoints `w_j = ⌈p_j N⌉` with `p_0 = 0`,
/// `p_1 = 0.22`, `p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)` (in the reference code's
/// integer form) an example's step halves when (a) at most a fraction `ρ = 0.75` of the steps
/// since the last checkpoint increased its loss, or (b) its step was not halved at the last
/// checkpoint and its best loss has not improved since; it then restarts from its best point
/// with the gradient there. The first checkpoint counts the step from `x⁽⁰⁾` to `x⁽¹⁾` against
/// the loss at `x⁽⁰⁾` (the reference compares it with an unwritten 0).
///
/// **L1**: the step is APGD-L1's sparse one: the gradient's largest `⌈q·d⌉` coordinates by
/// magnitude (`q = 0.2` at first, then `‖x_best − x‖₀ / (1.5 d)`) each move by `η / k` for
/// the `k` coordinates chosen, in the sign of the gradient (`q·d = 1` would be
/// [`Norm::steepest`]'s single coordinate); the step starts at `η = ε`, and every
/// `max(⌊0.04 N⌋, 1)` steps an example whose best point got sparser by 5% goes back to
/// `η = ε` and its best point, any other has `η` divided by 1.5, within `[ε/10, ε]`. No
/// momentum, as in the reference. Two simplifications, because the [`Norm`] core projects onto
/// the ball alone: the projection is onto the L1 ball followed by clipping to the box (a point
/// of both, not the nearest point of their intersection, which the reference computes), and
/// there is no schedule of shrinking ε (the reference's `use_largereps`, 3ε → 2ε → ε), so
/// L1 results are those of plain APGD-L1 on the Norm core and may be somewhat weaker.
///
/// **Losses**: [`AttackLoss`] (cross-entropy, margin, DLR), each example's best point kept.
/// With `target_classes = Some(k)` and an untargeted goal this is **APGD-T**: one run per
/// target, the `i`-th run (i = 2..k+1) aiming every still-robust example at the class with its
/// `i`-th highest clean logit, ascending the targeted loss (the targeted DLR in AutoAttack)
/// while success stays untargeted (any wrong class), as in the reference. `k` is capped at
/// `n_classes − 1`.
///
/// **Per-example worst case**: examples misclassified before the attack are returned as they
/// are; an example is frozen at the first iterate that breaks it (of any restart or target);
/// an example nothing broke returns the highest-loss point of the run (restart or target)
/// that ended with the highest best loss. Its loss is never below its loss at that run's
/// start.
///
/// **Randomness**: each call seeds a `ChaCha8Rng` with `seed`; each run (restart, target)
/// draws the next random start for the whole batch. With `eot_draws > 1` every gradient is the
/// mean of that many evaluations (Expectation over Transformation, for a randomized model such
/// as [`crate::Randomized`]; on a deterministic model it only costs time); the loss and the
/// prediction are those of the last draw, as in the reference.
///
/// **Parameters** (defaults of [`Apgd::new`], AutoAttack's):
/// - `norm`: the Lp ball (no default);
/// - `steps`: iterations per run, `N` (100);
/// - `restarts`: runs per target (1);
/// - `loss`: [`AttackLoss::CrossEntropy`];
/// - `target_classes`: `None` (untargeted), `Some(9)` for APGD-T;
/// - `eot_draws`: gradient evaluations averaged per step (1);
/// - `rho`: the oscillation threshold `ρ` (0.75);
/// - `momentum`: `α` (0.75);
/// - `random_start`: start from a uniform point of the ball (`true`);
/// - `clip`: clip every iterate to `[0, 1]` (`true`);
/// - `seed`: of the random starts (0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Apgd {
    pub norm: Norm,
    pub steps: usize,
    pub restarts: usize,
    pub loss: AttackLoss,
    pub target_classes: Option<usize>,
    pub eot_draws: usize,
    pub rho: f64,
    pub momentum: f64,
    pub random_start: bool,
    pub clip: bool,
    pub seed: u64,
}

impl Apgd {
    /// APGD in `norm` with the defaults listed on [`Apgd`] (APGD-CE).
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            steps: 100,
            restarts: 1,
            loss: AttackLoss::CrossEntropy,
            target_classes: None,
            eot_draws: 1,
            rho: 0.75,
            momentum: 0.75,
            random_start: true,
            clip: true,
            seed: 0,
        }
    }

    /// APGD-T as in AutoAttack: the targeted DLR loss over the 9 most likely wrong classes.
    pub fn targeted_dlr(norm: Norm) -> Self {
        Self {
            loss: AttackLoss::Dlr,
            target_classes: Some(9),
            ..Self::new(norm)
        }
    }

    /// The settings' preconditions, by key ([`crate::AttackConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        ConfigError::at_least_one("restarts", self.restarts)?;
        ConfigError::at_least_one("eot-draws", self.eot_draws)?;
        if let Some(n) = self.target_classes {
            ConfigError::at_least_one("target-classes", n)?;
        }
        if !(self.rho > 0.0 && self.rho <= 1.0) {
            return Err(ConfigError::new(
                "rho",
                format!("must be in (0, 1], got {}", self.rho),
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(ConfigError::new(
                "momentum",
                format!("must be in [0, 1], got {}", self.momentum),
            ));
        }
        Ok(())
    }

    fn clipped(&self, xs: Tensor) -> Result<Tensor> {
        if self.clip {
            xs.clamp(0.0, 1.0)
        } else {
            Ok(xs)
        }
    }

    /// `origin + Π_ε(x − origin)`, clipped.
    fn project(&self, x: &Tensor, origin: &Tensor, eps: f64) -> Result<Tensor> {
        let delta = self.norm.project(&x.sub(origin)?, eps)?;
        self.clipped(origin.add(&delta)?)
    }

    /// The mean input gradient over `eot_draws` evaluations, with the last draw's objective
    /// values and logits.
    fn gradient(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Goal<'_>,
    ) -> Result<(Tensor, Vec<f64>, Vec<Vec<f64>>)> {
        let mut sum: Option<Tensor> = None;
        let mut last = None;
        for _ in 0..self.eot_draws {
            let res = self.loss.value_and_input_grad(model, x, goal)?;
            sum = Some(match sum {
                None => res.grad.clone(),
                Some(s) => s.add(&res.grad)?,
            });
            last = Some(res);
        }
        let res = last.expect("eot_draws >= 1");
        let grad = sum.expect("eot_draws >= 1");
        let grad = if self.eot_draws > 1 {
            grad.affine(1.0 / self.eot_draws as f64, 0.0)?
        } else {
            grad
        };
        let values = res.value.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let logits = res.logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok((grad, values, logits))
    }

    /// One APGD run on `x0` from `start`: the loss ascends `loss_ids` (targets when
    /// `loss_targeted`), success is judged against `success_ids` (targets when
    /// `success_targeted`). Examples are dropped from the batch once they succeed.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        model: &dyn Classifier,
        x0: &Tensor,
        start: Tensor,
        loss_ids: &[u32],
        loss_targeted: bool,
        success_ids: &[u32],
        success_targeted: bool,
        eps: f64,
    ) -> Result<Run> {
        let n = x0.dim(0)?;
        let device = x0.device();
        let dim = x0.elem_count() / n.max(1);
        let l1 = self.norm == Norm::L1;
        let schedule = Checkpoints::new(self.steps, l1);
        // The step length and its ceiling: 2ε for L∞ and L2 (and other p), ε for L1.
        let max_step = if l1 { eps } else { 2.0 * eps };

        let goal_for = |live: &[usize]| -> Result<Tensor> {
            let ids: Vec<u32> = live.iter().map(|&r| loss_ids[r]).collect();
            Tensor::from_vec(ids, live.len(), device)
        };
        let mut live: Vec<usize> = (0..n).collect();
        let mut origin = x0.clone();
        let mut x = start;
        let mut labels = goal_for(&live)?;
        let (mut grad, values, logits) =
            self.gradient(model, &x, &make_goal(&labels, loss_targeted))?;

        let mut run = Run {
            x_best: x.clone(),
            loss_best: values.clone(),
            loss_start: values.clone(),
            success: vec![false; n],
            x_success: x0.clone(),
        };
        let mut grad_best = grad.clone();
        let mut x_old = x.clone();
        let mut step = vec![max_step; n];
        // Loss after each step, the start's first.
        let mut history: Vec<Vec<f64>> = values.iter().map(|&v| vec![v]).collect();
        let mut best_at_check = values.clone();
        let mut reduced_at_check = vec![true; n];
        let mut sparsity = vec![0.2f64; n];
        let mut nonzero_at_check = vec![dim as f64; n];

        // Success at the start (a random start can break an example).
        let mut hits = successes(&logits, &live, success_ids, success_targeted);
        let mut next_check = schedule.first;
        let mut since_check = 0;
        for iteration in 0..=self.steps {
            if !hits.is_empty() {
                let rows: Vec<usize> = hits.iter().map(|&k| live[k]).collect();
                run.x_success = replace_rows(&run.x_success, &rows, &select_rows(&x, &hits)?)?;
                rows.iter().for_each(|&r| run.success[r] = true);
                let keep: Vec<usize> = (0..live.len()).filter(|k| !hits.contains(k)).collect();
                if keep.is_empty() {
                    break;
                }
                x = select_rows(&x, &keep)?;
                x_old = select_rows(&x_old, &keep)?;
                origin = select_rows(&origin, &keep)?;
                grad = select_rows(&grad, &keep)?;
                grad_best = select_rows(&grad_best, &keep)?;
                live = keep.iter().map(|&k| live[k]).collect();
                labels = goal_for(&live)?;
            }
            if iteration == self.steps {
                break;
            }
            let steps_now: Vec<f64> = live.iter().map(|&r| step[r]).collect();
            let x_next = if l1 {
                let k_now: Vec<f64> = live.iter().map(|&r| sparsity[r]).collect();
                let direction = sparse_l1_direction(&grad, &k_now)?;
                self.project(&x.add(&scale_rows(&direction, &steps_now)?)?, &origin, eps)?
            } else {
                let direction = self.norm.steepest(&grad, 1.0)?;
                let z =
                    self.project(&x.add(&scale_rows(&direction, &steps_now)?)?, &origin, eps)?;
                let a = if iteration == 0 { 1.0 } else { self.momentum };
                // x + a(z − x) + (1 − a)(x − x_old)
                let moved = x
                    .add(&z.sub(&x)?.affine(a, 0.0)?)?
                    .add(&x.sub(&x_old)?.affine(1.0 - a, 0.0)?)?;
                self.project(&moved, &origin, eps)?
            };
            x_old = x;
            x = x_next;
            let (g, values, logits) =
                self.gradient(model, &x, &make_goal(&labels, loss_targeted))?;
            grad = g;
            hits = successes(&logits, &live, success_ids, success_targeted);

            let improved: Vec<usize> = (0..live.len())
                .filter(|&k| values[k] > run.loss_best[live[k]])
                .collect();
            for (k, &r) in live.iter().enumerate() {
                history[r].push(values[k]);
                if values[k] > run.loss_best[r] {
                    run.loss_best[r] = values[k];
                }
            }
            if !improved.is_empty() {
                let rows: Vec<usize> = improved.iter().map(|&k| live[k]).collect();
                run.x_best = replace_rows(&run.x_best, &rows, &select_rows(&x, &improved)?)?;
                grad_best = replace_rows(&grad_best, &improved, &select_rows(&grad, &improved)?)?;
            }

            since_check += 1;
            if since_check < next_check {
                continue;
            }
            // A checkpoint: which live examples go back to their best point.
            let mut back = vec![false; live.len()];
            if l1 {
                let moved = run.x_best.sub(x0)?.flatten_from(1)?.to_dtype(DType::F64)?;
                let nonzero = moved
                    .ne(0.0)?
                    .to_dtype(DType::F64)?
                    .sum(1)?
                    .to_vec1::<f64>()?;
                for (k, &r) in live.iter().enumerate() {
                    let sparser = nonzero[r] / nonzero_at_check[r] < 0.95;
                    sparsity[r] = nonzero[r] / dim as f64 / 1.5;
                    step[r] = if sparser { max_step } else { step[r] / 1.5 };
                    step[r] = step[r].clamp(max_step / 10.0, max_step);
                    nonzero_at_check[r] = nonzero[r];
                    back[k] = sparser;
                }
            } else {
                for (k, &r) in live.iter().enumerate() {
                    let h = &history[r];
                    let recent = &h[h.len() - 1 - since_check..];
                    let increases = recent.windows(2).filter(|w| w[1] > w[0]).count();
                    let oscillating = increases as f64 <= since_check as f64 * self.rho;
                    let stalled = !reduced_at_check[r] && best_at_check[r] >= run.loss_best[r];
                    let reduce = oscillating || stalled;
                    reduced_at_check[r] = reduce;
                    best_at_check[r] = run.loss_best[r];
                    if reduce {
                        step[r] /= 2.0;
                    }
                    back[k] = reduce;
                }
            }
            if back.contains(&true) {
                x = where_rows(&back, &select_rows(&run.x_best, &live)?, &x)?;
                grad = where_rows(&back, &grad_best, &grad)?;
            }
            next_check = schedule.next(next_check);
            since_check = 0;
        }
        Ok(run)
    }
}

/// One run's outcome, by row of its input.
struct Run {
    /// The highest-loss point of each example.
    x_best: Tensor,
    loss_best: Vec<f64>,
    /// The loss at the run's starting point (only the tests read it: a run must never end
    /// below it).
    #[cfg_attr(not(test), allow(dead_code))]
    loss_start: Vec<f64>,
    success: Vec<bool>,
    /// The first successful iterate of each successful example (the input elsewhere).
    x_success: Tensor,
}

/// The checkpoint spacing of Croce & Hein's reference code, in iterations.
struct Checkpoints {
    first: usize,
    min: usize,
    decrease: usize,
    /// L1: a fixed spacing.
    fixed: bool,
}

impl Checkpoints {
    fn new(steps: usize, l1: bool) -> Self {
        let part = |f: f64| ((f * steps as f64) as usize).max(1);
        if l1 {
            let every = part(0.04);
            Self {
                first: every,
                min: every,
                decrease: 0,
                fixed: true,
            }
        } else {
            // p₁ = 0.22; the spacing shrinks by 0.03 N per checkpoint, down to 0.06 N.
            Self {
                first: part(0.22),
                min: part(0.06),
                decrease: part(0.03),
                fixed: false,
            }
        }
    }

    /// The spacing after a checkpoint that followed `spacing` iterations.
    fn next(&self, spacing: usize) -> usize {
        if self.fixed {
            spacing
        } else {
            spacing.saturating_sub(self.decrease).max(self.min)
        }
    }
}

fn make_goal(labels: &Tensor, targeted: bool) -> Goal<'_> {
    if targeted {
        Goal::Targeted { targets: labels }
    } else {
        Goal::Untargeted { labels }
    }
}

/// Positions `k` (in `live`) whose logits count as a success.
fn successes(logits: &[Vec<f64>], live: &[usize], ids: &[u32], targeted: bool) -> Vec<usize> {
    (0..live.len())
        .filter(|&k| succeeded(&logits[k], ids[live[k]], targeted))
        .collect()
}

/// Row `i` of `xs` times `factors[i]`.
fn scale_rows(xs: &Tensor, factors: &[f64]) -> Result<Tensor> {
    let mut shape = vec![1usize; xs.rank()];
    shape[0] = factors.len();
    let factors = Tensor::from_vec(factors.to_vec(), shape, xs.device())?.to_dtype(xs.dtype())?;
    xs.broadcast_mul(&factors)
}

/// APGD-L1's sparse direction of L1 length 1: `sign(g)` on the coordinates whose `|g|` reaches
/// the row's `(1 − q)`-quantile (about `q·d` of them, `q = fractions[i]`), divided by their
/// number.
fn sparse_l1_direction(grad: &Tensor, fractions: &[f64]) -> Result<Tensor> {
    let flat = grad.flatten_from(1)?;
    let (rows, dim) = flat.dims2()?;
    let abs = flat.abs()?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mut thresholds = Vec::with_capacity(rows);
    for (row, &q) in abs.iter().zip(fractions) {
        let mut sorted = row.clone();
        sorted.sort_by(f64::total_cmp);
        let index = (((1.0 - q) * dim as f64).max(0.0) as usize).min(dim - 1);
        thresholds.push(sorted[index]);
    }
    let thresholds = Tensor::from_vec(thresholds, (rows, 1), grad.device())?;
    let chosen = flat
        .abs()?
        .to_dtype(DType::F64)?
        .broadcast_ge(&thresholds)?
        .to_dtype(flat.dtype())?;
    let signs = flat.sign()?.mul(&chosen)?;
    // ‖sign(sparse g)‖₁, guarded like the reference (1e-10).
    let count = signs.abs()?.sum_keepdim(1)?.affine(1.0, 1e-10)?;
    signs.broadcast_div(&count)?.reshape(grad.shape())
}

impl Attack for Apgd {
    fn name(&self) -> String {
        let loss = match self.loss {
            AttackLoss::CrossEntropy => "ce",
            AttackLoss::Margin => "margin",
            AttackLoss::Dlr => "dlr",
        };
        match self.target_classes {
            Some(_) => format!("apgd-t-{loss}-{}", self.norm.name()),
            None => format!("apgd-{loss}-{}", self.norm.name()),
        }
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::Iterative
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        check_eps(eps)?;
        self.validate()?;
        let batch = xs.dim(0)?;
        let targeted = matches!(goal, Goal::Targeted { .. });
        if targeted && self.target_classes.is_some() {
            bail!("apgd with target-classes (APGD-T) picks its own targets: give it true labels, not targets")
        }
        let n_classes = model.n_classes();
        self.loss
            .check_classes(n_classes, targeted || self.target_classes.is_some())?;
        let ids = goal.checked_ids(batch, n_classes)?;
        let x0 = xs.detach();
        let clean = model
            .forward(&x0, Mode::Eval)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        // Examples broken before any attack stay as they are.
        let mut broken: Vec<bool> = clean
            .iter()
            .zip(&ids)
            .map(|(row, &y)| succeeded(row, y, targeted))
            .collect();
        let mut adv = x0.clone();
        let mut best = vec![f64::NEG_INFINITY; batch];
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        // (loss ids, loss targeted) per run: the goal itself, or one target rank at a time.
        let ranks: Vec<Option<usize>> = match self.target_classes {
            None => vec![None],
            Some(k) => (1..=k.min(n_classes - 1)).map(Some).collect(),
        };
        for rank in ranks {
            for _ in 0..self.restarts {
                let rows: Vec<usize> = (0..batch).filter(|&i| !broken[i]).collect();
                if rows.is_empty() {
                    return Ok(adv);
                }
                let start = if self.random_start {
                    let noise = self.norm.random(&x0, eps, &mut rng)?;
                    Some(self.clipped(x0.add(&noise)?)?)
                } else {
                    None
                };
                let sub_x0 = select_rows(&x0, &rows)?;
                let sub_start = match &start {
                    Some(s) => select_rows(s, &rows)?,
                    None => sub_x0.clone(),
                };
                let sub_ids: Vec<u32> = rows.iter().map(|&i| ids[i]).collect();
                let (loss_ids, loss_targeted) = match rank {
                    None => (sub_ids.clone(), targeted),
                    Some(r) => {
                        // The class with the (r+1)-th highest clean logit: the label itself is
                        // first on every example still correctly classified.
                        let targets = rows
                            .iter()
                            .map(|&i| {
                                let mut order: Vec<usize> = (0..n_classes).collect();
                                order.sort_by(|&a, &b| clean[i][b].total_cmp(&clean[i][a]));
                                order[r] as u32
                            })
                            .collect();
                        (targets, true)
                    }
                };
                let run = self.run(
                    model,
                    &sub_x0,
                    sub_start,
                    &loss_ids,
                    loss_targeted,
                    &sub_ids,
                    targeted,
                    eps,
                )?;
                let hit: Vec<usize> = (0..rows.len()).filter(|&k| run.success[k]).collect();
                let hit_rows: Vec<usize> = hit.iter().map(|&k| rows[k]).collect();
                adv = replace_rows(&adv, &hit_rows, &select_rows(&run.x_success, &hit)?)?;
                hit_rows.iter().for_each(|&i| broken[i] = true);
                let better: Vec<usize> = (0..rows.len())
                    .filter(|&k| !run.success[k] && run.loss_best[k] > best[rows[k]])
                    .collect();
                let better_rows: Vec<usize> = better.iter().map(|&k| rows[k]).collect();
                for (&k, &i) in better.iter().zip(&better_rows) {
                    best[i] = run.loss_best[k];
                }
                adv = replace_rows(&adv, &better_rows, &select_rows(&run.x_best, &better)?)?;
            }
        }
        Ok(adv)
    }
}

#[cfg(test)]
mod tests;
