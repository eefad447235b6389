//! [`Pgd`]: projected gradient ascent in any Lp ball, the one iterative gradient loop. Each
//! step is [`Norm::steepest`] followed by [`Norm::project`]; there is no per-norm code here.

use candle_core::{bail, DType, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::batch::{replace_rows, select_rows, where_rows};
use crate::loss::succeeded;
use crate::norm::check_eps;
use crate::{Attack, AttackKind, AttackLoss, ConfigError, Goal, Norm};

/// Relative tolerance under which a perturbation counts as inside the ε-ball. A steepest-ascent
/// step of length ε lands on the sphere only up to rounding (its measured norm can exceed ε by
/// a few ulps); projecting it would change it by those ulps. With this tolerance one step from
/// the clean input is bit for bit [`crate::FastGradient`].
const BALL_SLACK: f64 = 1e-6;

/// The length of one PGD step, in the attack's norm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepSize {
    /// `factor · ε / steps`. The default, factor 2.5, is the rule of thumb of Madry et al.'s
    /// `robustness` library: the iterate can cross the ball 2.5 times, so it can reach any
    /// point of it even from a random start on the far side, and the rule adapts to any `steps`.
    EpsOverSteps(f64),
    /// `factor · ε` (foolbox's `rel_stepsize`).
    RelativeToEps(f64),
    /// A fixed length (foolbox's `abs_stepsize`).
    Absolute(f64),
}

impl Default for StepSize {
    fn default() -> Self {
        StepSize::EpsOverSteps(2.5)
    }
}

impl StepSize {
    /// The step length for budget `eps` and `steps` steps.
    ///
    /// # Errors
    /// When the factor or length is negative or not finite, or `steps = 0`.
    pub fn resolve(&self, eps: f64, steps: usize) -> Result<f64> {
        let (value, res) = match *self {
            StepSize::EpsOverSteps(f) => {
                if steps == 0 {
                    bail!("pgd needs steps >= 1, got 0")
                }
                (f, f * eps / steps as f64)
            }
            StepSize::RelativeToEps(f) => (f, f * eps),
            StepSize::Absolute(a) => (a, a),
        };
        if !(value.is_finite() && value >= 0.0) {
            bail!("step size must be finite and >= 0, got {self:?}")
        }
        Ok(res)
    }
}

/// Projected gradient descent (here ascent) on the attacker's loss in any Lp ball:
/// `x_{t+1} = clip_[0,1](x₀ + Π_ε(x_t − x₀ + r*(∇ₓL(x_t))))`, with `r*` the steepest-ascent
/// step of length `step_size` ([`Norm::steepest`]) and `Π_ε` the projection onto the ε-ball
/// ([`Norm::project`]).
///
/// **Paper**: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant
/// to Adversarial Attacks", ICLR 2018, <https://arxiv.org/abs/1706.06083>. The margin loss is
/// Carlini & Wagner's ([`AttackLoss::Margin`]); restarts keep the per-example worst case, as in
/// Croce & Hein's AutoAttack, <https://arxiv.org/abs/2003.01690>.
///
/// **Threat model**: white-box (input gradients in eval mode), untargeted or targeted
/// ([`Goal`]); `‖x_adv − x‖_p ≤ ε` per example (up to a relative 1e-6 of rounding), and
/// `x_adv ∈ [0, 1]` when clipping.
///
/// **Per-example worst case**: an example counts as broken when any iterate of any restart
/// was misclassified (untargeted) or classified as its target (targeted); it returns that
/// first successful point and later restarts skip it. An example no restart broke returns the
/// final iterate of the restart with the highest loss. With `early_stop` an example is frozen
/// as soon as it is broken, so more steps or restarts (same seed, same absolute step size)
/// never break fewer examples. Without it every restart runs all its steps and only its final
/// iterate counts, which is what adversarial training wants (the highest-loss point, not the
/// first wrong one).
///
/// **Randomness**: each call seeds a `ChaCha8Rng` with `seed`; restart `k` draws the `k`-th
/// random start for the whole batch (so an example's start does not depend on which others
/// are still being attacked). Equal batches give equal results.
///
/// **Parameters** (defaults of [`Pgd::new`]):
/// - `norm`: the Lp ball (no default);
/// - `steps`: gradient steps per restart (40, Madry et al.'s MNIST setting);
/// - `step_size`: [`StepSize::EpsOverSteps`]`(2.5)`;
/// - `random_start`: start from a uniform point of the ball ([`Norm::random`]) (`true`);
/// - `restarts`: independent runs, at least 1 (1);
/// - `loss`: [`AttackLoss::CrossEntropy`];
/// - `early_stop`: freeze an example once broken (`true`);
/// - `clip`: clip every iterate to `[0, 1]` (`true`);
/// - `seed`: of the random starts (0).
///
/// `steps = 1`, `step_size = RelativeToEps(1.0)`, no random start and no early stop is the fast
/// gradient method, bit for bit ([`Pgd::fast_gradient`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pgd {
    pub norm: Norm,
    pub steps: usize,
    pub step_size: StepSize,
    pub random_start: bool,
    pub restarts: usize,
    pub loss: AttackLoss,
    pub early_stop: bool,
    pub clip: bool,
    pub seed: u64,
}

impl Pgd {
    /// PGD in `norm` with the defaults listed on [`Pgd`].
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            steps: 40,
            step_size: StepSize::default(),
            random_start: true,
            restarts: 1,
            loss: AttackLoss::CrossEntropy,
            early_stop: true,
            clip: true,
            seed: 0,
        }
    }

    /// One step of length ε from the clean input: the same output as
    /// [`crate::FastGradient`] with the same `norm`.
    pub fn fast_gradient(norm: Norm) -> Self {
        Self {
            steps: 1,
            step_size: StepSize::RelativeToEps(1.0),
            random_start: false,
            early_stop: false,
            ..Self::new(norm)
        }
    }

    /// The settings' preconditions, by key ([`crate::AttackConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        ConfigError::at_least_one("restarts", self.restarts)?;
        let factor = match self.step_size {
            StepSize::EpsOverSteps(f) | StepSize::RelativeToEps(f) | StepSize::Absolute(f) => f,
        };
        if !(factor.is_finite() && factor > 0.0) {
            return Err(ConfigError::new(
                "step-size",
                format!("must be finite and > 0, got {factor}"),
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
}

impl Attack for Pgd {
    fn name(&self) -> String {
        match self.loss {
            AttackLoss::CrossEntropy => format!("pgd-{}", self.norm.name()),
            AttackLoss::Margin => format!("pgd-margin-{}", self.norm.name()),
            AttackLoss::Dlr => format!("pgd-dlr-{}", self.norm.name()),
        }
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        if self.steps == 1 {
            AttackKind::SingleStep
        } else {
            AttackKind::Iterative
        }
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
        let step_size = self.step_size.resolve(eps, self.steps)?;
        let batch = xs.dim(0)?;
        let n_labels = goal.labels().dims1()?;
        if n_labels != batch {
            bail!("expected one label per example ({batch}), got {n_labels}")
        }
        let label_ids = goal.labels().to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let targeted = matches!(goal, Goal::Targeted { .. });

        let x0 = xs.detach();
        let mut adv = x0.clone();
        let mut broken = vec![false; batch];
        let mut best_value = vec![f64::NEG_INFINITY; batch];
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        for _ in 0..self.restarts {
            if model.exhausted() {
                break;
            }
            // `active[k]` is the batch row of the k-th row of `x`, `origin` and `ys`.
            let mut active: Vec<usize> = (0..batch).filter(|&i| !broken[i]).collect();
            if active.is_empty() {
                break;
            }
            let start = if self.random_start {
                Some(self.norm.random(&x0, eps, &mut rng)?)
            } else {
                None
            };
            let mut origin = select_rows(&x0, &active)?;
            let mut x = match &start {
                Some(noise) => self.clipped(origin.add(&select_rows(noise, &active)?)?)?,
                None => origin.clone(),
            };
            for step in 0..=self.steps {
                // A spent query budget ends the run as its last step would.
                let last = step == self.steps || model.exhausted();
                if last && self.restarts == 1 && !self.early_stop {
                    // One run that keeps its final iterate whatever it scores: no need to
                    // classify it (so one step costs one forward and one backward pass).
                    adv = take_rows(&adv, &active, &x, &(0..active.len()).collect::<Vec<_>>())?;
                    break;
                }
                let ys: Vec<u32> = active.iter().map(|&i| label_ids[i]).collect();
                let (logits, grad) = if last {
                    (model.forward(&x, Mode::Eval)?, None)
                } else {
                    let ys = Tensor::from_vec(ys.clone(), ys.len(), xs.device())?;
                    let goal = match goal {
                        Goal::Untargeted { .. } => Goal::Untargeted { labels: &ys },
                        Goal::Targeted { .. } => Goal::Targeted { targets: &ys },
                    };
                    let res = self.loss.value_and_input_grad(model, &x, &goal)?;
                    (res.logits, Some(res.grad))
                };
                let rows = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let success: Vec<bool> = rows
                    .iter()
                    .zip(&ys)
                    .map(|(row, &y)| succeeded(row, y, targeted))
                    .collect();
                if self.early_stop || last {
                    let hits: Vec<usize> = (0..active.len()).filter(|&k| success[k]).collect();
                    let hit_rows: Vec<usize> = hits.iter().map(|&k| active[k]).collect();
                    adv = take_rows(&adv, &hit_rows, &x, &hits)?;
                    hit_rows.iter().for_each(|&i| broken[i] = true);
                }
                if last {
                    // Unbroken examples keep the restart that got their loss highest.
                    let values = self.loss.values(&rows, &ys, targeted);
                    let better: Vec<usize> = (0..active.len())
                        .filter(|&k| !success[k] && values[k] > best_value[active[k]])
                        .collect();
                    let better_rows: Vec<usize> = better.iter().map(|&k| active[k]).collect();
                    for (&k, &i) in better.iter().zip(&better_rows) {
                        best_value[i] = values[k];
                    }
                    adv = take_rows(&adv, &better_rows, &x, &better)?;
                    break;
                }
                let mut grad = grad.expect("every iterate but the last has a gradient");
                if self.early_stop && success.contains(&true) {
                    let keep: Vec<usize> = (0..active.len()).filter(|&k| !success[k]).collect();
                    if keep.is_empty() {
                        break;
                    }
                    x = select_rows(&x, &keep)?;
                    origin = select_rows(&origin, &keep)?;
                    grad = select_rows(&grad, &keep)?;
                    active = keep.iter().map(|&k| active[k]).collect();
                }
                if step == 0 && start.is_none() && step_size <= eps {
                    // From the clean input a step no longer than ε stays in the ball.
                    x = fast_gradient_step(self.norm, &origin, &grad, step_size, self.clip)?;
                    continue;
                }
                // δ is re-read from the clipped iterate.
                let delta = x
                    .sub(&origin)?
                    .add(&self.norm.steepest(&grad, step_size)?)?;
                let delta = project_with_slack(self.norm, &delta, eps)?;
                x = self.clipped(origin.add(&delta)?)?;
            }
        }
        Ok(adv)
    }
}

/// `xs + r*`, clipped to `[0, 1]` when `clip`: one step of length `eps` along the
/// steepest-ascent direction of `grad` ([`Norm::steepest`]). The fast gradient method is this
/// step from the clean input (PGD's first step without a random start), and so is the
/// perturbation `r*` of the Lp-regularized training objective.
pub fn fast_gradient_step(
    norm: Norm,
    xs: &Tensor,
    grad: &Tensor,
    eps: f64,
    clip: bool,
) -> Result<Tensor> {
    let adv = xs.add(&norm.steepest(grad, eps)?)?;
    if clip {
        adv.clamp(0f32, 1f32)
    } else {
        Ok(adv)
    }
}

/// `adv` with its rows `rows` replaced by the rows `from` of `x`.
fn take_rows(adv: &Tensor, rows: &[usize], x: &Tensor, from: &[usize]) -> Result<Tensor> {
    if rows.is_empty() {
        return Ok(adv.clone());
    }
    replace_rows(adv, rows, &select_rows(x, from)?)
}

/// [`Norm::project`] applied only to the rows measuring more than `eps · (1 + BALL_SLACK)`.
fn project_with_slack(norm: Norm, delta: &Tensor, eps: f64) -> Result<Tensor> {
    let limit = eps * (1.0 + BALL_SLACK);
    let sizes = norm.norm(delta)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    // NaN rows are projected too: projection cannot make them worse.
    let outside: Vec<bool> = sizes.iter().map(|&s| s.is_nan() || s > limit).collect();
    if !outside.contains(&true) {
        return Ok(delta.clone());
    }
    where_rows(&outside, &norm.project(delta, eps)?, delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, inputs, next_class, small_maxout, Counting, Saturated};
    use crate::{evaluate_attack_detailed, FastGradient, RandomNoise, TargetSelection};
    use candle_core::Device;

    const PS: [f64; 5] = [1.0, 1.5, 2.0, 3.0, f64::INFINITY];

    /// `n` images of the 4×4 test model, half of them with pixels at 0 or 1 so that clipping
    /// matters, labelled by the model's own clean prediction (clean accuracy 100%).
    fn data(model: &dyn Classifier, n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
        let (xs, _) = inputs(n, seed)?;
        let xs = xs.affine(2.0, -0.5)?.clamp(0.0, 1.0)?;
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        Ok((xs, labels))
    }

    fn sizes(norm: Norm, adv: &Tensor, xs: &Tensor) -> Result<Vec<f64>> {
        norm.norm(&adv.sub(xs)?)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()
    }

    #[test]
    fn every_output_lies_in_the_ball_and_the_box_for_every_norm() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 12, 1)?;
        let targets = next_class(&labels)?;
        for p in PS {
            let norm = Norm::new(p)?;
            let eps = if p.is_infinite() { 0.3 } else { 1.5 };
            let attacks: Vec<Box<dyn Attack>> = vec![
                Box::new(FastGradient::new(norm)),
                Box::new(Pgd {
                    steps: 7,
                    restarts: 2,
                    ..Pgd::new(norm)
                }),
                Box::new(Pgd {
                    steps: 5,
                    loss: AttackLoss::Margin,
                    early_stop: false,
                    step_size: StepSize::RelativeToEps(0.7),
                    ..Pgd::new(norm)
                }),
                Box::new(RandomNoise::new(norm)),
            ];
            for attack in &attacks {
                for goal in [
                    Goal::Untargeted { labels: &labels },
                    Goal::Targeted { targets: &targets },
                ] {
                    let adv = attack.perturb(model.as_ref(), &xs, &goal, eps)?;
                    assert_eq!(adv.dims(), xs.dims());
                    for (i, s) in sizes(norm, &adv, &xs)?.iter().enumerate() {
                        assert!(
                            *s <= eps + 1e-5,
                            "{} {goal:?} example {i}: ‖δ‖ = {s} > {eps}",
                            attack.name()
                        );
                    }
                    let (lo, hi) = (
                        adv.min_all()?.to_scalar::<f32>()?,
                        adv.max_all()?.to_scalar::<f32>()?,
                    );
                    assert!(
                        lo >= 0.0 && hi <= 1.0,
                        "{}: range [{lo}, {hi}]",
                        attack.name()
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn one_step_without_random_start_is_the_closed_form_in_one_gradient_pass() -> Result<()> {
        let model = Counting::new(small_maxout()?);
        let (xs, _) = inputs(9, 2)?;
        // Labels i mod 3 leave some examples misclassified at the start.
        let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2], &Device::Cpu)?;
        let targets = next_class(&labels)?;
        let clean = model
            .forward(&xs, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        for p in PS {
            let norm = Norm::new(p)?;
            for goal in [
                Goal::Untargeted { labels: &labels },
                Goal::Targeted { targets: &targets },
            ] {
                // x + r*(∇ₓL), clipped: Goodfellow et al.'s formula, computed directly.
                let grad = goal.gradient(&model, &xs)?;
                let want = xs.add(&norm.steepest(&grad, 0.2)?)?.clamp(0.0, 1.0)?;
                let want = want.flatten_from(1)?.to_vec2::<f32>()?;
                model.take();
                let pgd = Pgd::fast_gradient(norm);
                for attack in [&pgd as &dyn Attack, &FastGradient::new(norm)] {
                    let got = attack.perturb(&model, &xs, &goal, 0.2)?;
                    assert_eq!(
                        got.flatten_from(1)?.to_vec2::<f32>()?,
                        want,
                        "{norm} {goal:?}"
                    );
                    assert_eq!(
                        model.take(),
                        (0, 1),
                        "one gradient pass and no other forward"
                    );
                    assert_eq!(attack.kind(), AttackKind::SingleStep);
                }
                // With early stopping, examples already broken at the start stay clean.
                let stopping = Pgd {
                    early_stop: true,
                    ..pgd
                };
                let got = stopping.perturb(&model, &xs, &goal, 0.2)?;
                let got = got.flatten_from(1)?.to_vec2::<f32>()?;
                let x0 = xs.flatten_from(1)?.to_vec2::<f32>()?;
                let ids = goal.labels().to_vec1::<u32>()?;
                for i in 0..ids.len() {
                    let broken_at_start =
                        (clean[i] == ids[i]) == matches!(goal, Goal::Targeted { .. });
                    let expected = if broken_at_start { &x0[i] } else { &want[i] };
                    assert_eq!(&got[i], expected, "{norm} {goal:?} example {i}");
                }
            }
        }
        Ok(())
    }

    /// Robust flags per example of `attack` at `eps`.
    fn robust(
        model: &dyn Classifier,
        attack: &dyn Attack,
        xs: &Tensor,
        labels: &Tensor,
        eps: f64,
    ) -> Result<Vec<bool>> {
        let (_, outcomes) = evaluate_attack_detailed(model, attack, xs, labels, &[eps], 16)?;
        Ok(outcomes.iter().map(|o| o.robust).collect())
    }

    #[test]
    fn more_steps_or_restarts_never_raise_robust_accuracy() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 40, 3)?;
        for (norm, eps, step) in [(Norm::Linf, 0.04, 0.01), (Norm::L2, 0.15, 0.04)] {
            for loss in [AttackLoss::CrossEntropy, AttackLoss::Margin] {
                let base = Pgd {
                    step_size: StepSize::Absolute(step),
                    loss,
                    seed: 5,
                    ..Pgd::new(norm)
                };
                let mut last: Option<Vec<bool>> = None;
                let mut counts = vec![];
                for (steps, restarts) in [(1, 1), (2, 1), (5, 1), (5, 3), (20, 3), (20, 6)] {
                    let attack = Pgd {
                        steps,
                        restarts,
                        ..base
                    };
                    let now = robust(model.as_ref(), &attack, &xs, &labels, eps)?;
                    if let Some(before) = &last {
                        // Nested: an example robust now was robust with fewer steps/restarts.
                        for (i, (&b, &n)) in before.iter().zip(&now).enumerate() {
                            assert!(b || !n, "{norm} {loss:?} {steps}x{restarts}: example {i}");
                        }
                    }
                    counts.push(now.iter().filter(|&&r| r).count());
                    last = Some(now);
                }
                // The sweep must actually move, or the test proves nothing.
                assert!(
                    counts[0] > *counts.last().unwrap(),
                    "{norm} {loss:?}: {counts:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn restarts_keep_the_highest_loss_for_unbroken_examples() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 30, 4)?;
        let goal = Goal::Untargeted { labels: &labels };
        let ids = labels.to_vec1::<u32>()?;
        let loss_of = |adv: &Tensor| -> Result<Vec<f64>> {
            let rows = model
                .forward(adv, Mode::Eval)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            Ok(AttackLoss::CrossEntropy.values(&rows, &ids, false))
        };
        let one = Pgd {
            steps: 3,
            ..Pgd::new(Norm::L2)
        };
        let many = Pgd { restarts: 5, ..one };
        let (a, b) = (
            loss_of(&one.perturb(model.as_ref(), &xs, &goal, 0.05)?)?,
            loss_of(&many.perturb(model.as_ref(), &xs, &goal, 0.05)?)?,
        );
        // Small ε: nobody breaks, and every example's loss can only go up with restarts.
        let mut improved = 0;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(y >= x, "example {i}: {x} -> {y}");
            improved += usize::from(y > x);
        }
        assert!(improved > 0);
        Ok(())
    }

    #[test]
    fn targeted_attack_reaches_its_targets_at_large_eps() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 30, 5)?;
        for selection in [
            TargetSelection::Random { seed: 3 },
            TargetSelection::LeastLikely,
        ] {
            let targets = selection.targets(model.as_ref(), &xs, &labels)?;
            for loss in [AttackLoss::CrossEntropy, AttackLoss::Margin] {
                let attack = Pgd {
                    steps: 20,
                    loss,
                    ..Pgd::new(Norm::Linf)
                };
                let goal = Goal::Targeted { targets: &targets };
                let adv = attack.perturb(model.as_ref(), &xs, &goal, 0.5)?;
                let preds = model
                    .forward(&adv, Mode::Eval)?
                    .argmax(1)?
                    .to_vec1::<u32>()?;
                let hits = preds
                    .iter()
                    .zip(targets.to_vec1::<u32>()?)
                    .filter(|(p, t)| **p == *t)
                    .count();
                assert!(
                    hits >= 27,
                    "{selection:?} {loss:?}: {hits}/30 reach the target"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn margin_loss_breaks_a_saturated_model_that_cross_entropy_cannot() -> Result<()> {
        // Logits × 1e4 make the softmax one-hot in f32: the cross-entropy gradient is exactly
        // zero, the margin's is not.
        let model = Saturated::new(balanced_maxout()?, 1e4);
        let (xs, labels) = data(&model, 30, 6)?;
        let ce = Pgd {
            steps: 10,
            random_start: false,
            ..Pgd::new(Norm::Linf)
        };
        let margin = Pgd {
            loss: AttackLoss::Margin,
            ..ce
        };
        let count = |attack: &Pgd| -> Result<usize> {
            Ok(robust(&model, attack, &xs, &labels, 0.3)?
                .iter()
                .filter(|&&r| r)
                .count())
        };
        let (ce_robust, margin_robust) = (count(&ce)?, count(&margin)?);
        assert!(ce_robust >= 25, "cross-entropy: {ce_robust}/30 robust");
        assert!(margin_robust <= 5, "margin: {margin_robust}/30 robust");
        Ok(())
    }

    #[test]
    fn target_selection_avoids_the_label_and_follows_the_seed() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 60, 7)?;
        let ids = labels.to_vec1::<u32>()?;
        let random = |seed| -> Result<Vec<u32>> {
            TargetSelection::Random { seed }
                .targets(model.as_ref(), &xs, &labels)?
                .to_vec1::<u32>()
        };
        let a = random(1)?;
        assert_eq!(a, random(1)?);
        assert_ne!(a, random(2)?);
        assert!(a.iter().zip(&ids).all(|(t, y)| t != y && *t < 3));
        // Both other classes turn up.
        assert!(a.iter().zip(&ids).any(|(t, y)| *t == (y + 1) % 3));
        assert!(a.iter().zip(&ids).any(|(t, y)| *t == (y + 2) % 3));
        let least = TargetSelection::LeastLikely
            .targets(model.as_ref(), &xs, &labels)?
            .to_vec1::<u32>()?;
        let logits = model.forward(&xs, Mode::Eval)?.to_vec2::<f32>()?;
        for ((row, &t), &y) in logits.iter().zip(&least).zip(&ids) {
            // Labels are the clean predictions, so the other two classes compete.
            let min = (0..3)
                .filter(|&j| j != y as usize)
                .map(|j| row[j])
                .fold(f32::INFINITY, f32::min);
            assert!(
                t != y && row[t as usize] == min,
                "{row:?} label {y} target {t}"
            );
        }
        let bad = Tensor::new(&[7u32], &Device::Cpu)?;
        let err = TargetSelection::LeastLikely
            .targets(model.as_ref(), &xs.narrow(0, 0, 1)?, &bad)
            .expect_err("label out of range")
            .to_string();
        assert!(err.contains("expected labels below 3, got 7"), "{err}");
        Ok(())
    }

    #[test]
    fn invalid_settings_are_rejected() -> Result<()> {
        let model = small_maxout()?;
        let (xs, labels) = inputs(2, 1)?;
        let goal = Goal::Untargeted { labels: &labels };
        let err = |attack: Pgd, eps: f64| {
            attack
                .perturb(model.as_ref(), &xs, &goal, eps)
                .expect_err("invalid settings")
                .to_string()
        };
        let pgd = Pgd::new(Norm::L2);
        assert!(err(Pgd { steps: 0, ..pgd }, 0.1).contains("steps: must be at least 1, got 0"));
        assert!(
            err(Pgd { restarts: 0, ..pgd }, 0.1).contains("restarts: must be at least 1, got 0")
        );
        let negative = Pgd {
            step_size: StepSize::Absolute(-0.1),
            ..pgd
        };
        assert!(err(negative, 0.1).contains("step-size: must be finite and > 0"));
        assert!(err(pgd, f64::INFINITY).contains("eps must be finite"));
        let short = labels.narrow(0, 0, 1)?;
        let res = pgd.perturb(
            model.as_ref(),
            &xs,
            &Goal::Untargeted { labels: &short },
            0.1,
        );
        assert!(res
            .expect_err("label count")
            .to_string()
            .contains("expected one label per example (2), got 1"));
        // ε = 0 returns the input whatever the start.
        let same = pgd.perturb(model.as_ref(), &xs, &goal, 0.0)?;
        assert_eq!(
            same.flatten_all()?.to_vec1::<f32>()?,
            xs.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            (pgd.name(), pgd.kind()),
            ("pgd-l2".to_string(), AttackKind::Iterative)
        );
        let margin = Pgd {
            loss: AttackLoss::Margin,
            ..pgd
        };
        assert_eq!(margin.name(), "pgd-margin-l2");
        assert!((StepSize::default().resolve(0.3, 40)? - 2.5 * 0.3 / 40.0).abs() < 1e-15);
        Ok(())
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let pgd = Pgd {
            norm: Norm::Lp(1.5),
            step_size: StepSize::Absolute(0.01),
            loss: AttackLoss::Margin,
            ..Pgd::new(Norm::L2)
        };
        let text = toml::to_string(&pgd).unwrap();
        assert!(text.contains("loss = \"margin\""), "{text}");
        let back: Pgd = toml::from_str(&text).unwrap();
        assert_eq!(back, pgd);
    }
}
