//! [`CarliniWagner`]: the Carlini & Wagner L2 attack.

use candle_core::{DType, Result, Tensor};
use gauntlet_models::Classifier;
use serde::{Deserialize, Serialize};

use super::fmn::positive;
use super::{attack_at_fixed_eps, goal_ids, row_norms, successes, Best};
use crate::batch::where_rows;
use crate::{AttackLoss, ConfigError, Goal, MinNorm, Norm};

/// Carlini & Wagner's L2 attack: minimise `‖x' − x‖₂² + c · f(x')` over `x' = (tanh w + 1)/2`
/// (so the box holds without clipping) with Adam, for a constant `c` found per example by
/// binary search.
///
/// **Paper**: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE
/// S&P 2017, <https://arxiv.org/abs/1608.04644>; the defaults and the search as the authors'
/// `l2_attack.py` (nn_robust_attacks) has them.
///
/// **Threat model**: white box, L2, untargeted or targeted.
///
/// **The objective**: `f(x') = max(z_y − max_{j≠y} z_j, −κ)` untargeted, `max(max_{j≠t} z_j −
/// z_t, −κ)` targeted: the logit margin, which is negative once the example is broken.
///
/// **The search**: `binary_search_steps` rounds, each from `w = atanh((2x − 1)·0.999999)` with
/// a fresh Adam (`lr`, β = (0.9, 0.999), ε = 1e-8) run for `steps` iterations, stopped early
/// when the batch's objective has not fallen by 0.01% over a tenth of them. Every iterate that
/// is adversarial and closer than the best so far is kept. After a round, an example broken in
/// it halves its interval from above (`c ← (low + high) / 2` with `high = c`), any other raises
/// `low = c` and bisects, or multiplies `c` by 10 while no upper bound is known. The last round
/// runs with the upper bound where one was found (`repeat` of the reference is not used).
///
/// **Parameters** (defaults of [`CarliniWagner::default`], the reference's):
/// - `steps`: Adam iterations per round, each one forward and one backward pass (10000);
/// - `binary_search_steps`: rounds (9);
/// - `initial_const`: the first `c` (1e-3);
/// - `lr`: Adam's step size (1e-2);
/// - `confidence`: κ, how far past the boundary (0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CarliniWagner {
    pub steps: usize,
    pub binary_search_steps: usize,
    pub initial_const: f64,
    pub lr: f64,
    pub confidence: f64,
}

impl Default for CarliniWagner {
    fn default() -> Self {
        Self {
            steps: 10_000,
            binary_search_steps: 9,
            initial_const: 1e-3,
            lr: 1e-2,
            confidence: 0.0,
        }
    }
}

impl CarliniWagner {
    /// The settings' preconditions, by key.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        ConfigError::at_least_one("binary-search-steps", self.binary_search_steps)?;
        positive("initial-const", self.initial_const)?;
        positive("lr", self.lr)?;
        if !(self.confidence.is_finite() && self.confidence >= 0.0) {
            return Err(ConfigError::new(
                "confidence",
                format!("must be finite and >= 0, got {}", self.confidence),
            ));
        }
        Ok(())
    }
}

/// Per-row factors as a `(n, 1, ..)` tensor that broadcasts against `like`.
fn column(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = values.len();
    Tensor::from_vec(values.to_vec(), shape, &candle_core::Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

impl MinNorm for CarliniWagner {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        self.validate()?;
        let n = xs.dim(0)?;
        let (ids, targeted) = goal_ids(goal, n, model.n_classes())?;
        let mut best = Best::new(xs)?;
        // Examples broken clean are returned as they are.
        let clean = model.forward(xs, gauntlet_models::Mode::Eval)?;
        let broken_clean = successes(&clean, &ids, targeted)?;
        best.offer(xs, &vec![0.0; n], &broken_clean)?;
        let w0 = xs.affine(2.0, -1.0)?.affine(0.999_999, 0.0)?;
        // atanh(u) = ½ ln((1 + u) / (1 − u))
        let w0 = w0
            .affine(1.0, 1.0)?
            .div(&w0.affine(-1.0, 1.0)?)?
            .log()?
            .affine(0.5, 0.0)?;
        let (mut low, mut high) = (vec![0.0f64; n], vec![1e10f64; n]);
        let mut c = vec![self.initial_const; n];
        let (beta1, beta2, eps_adam) = (0.9f64, 0.999f64, 1e-8f64);
        for _ in 0..self.binary_search_steps {
            let mut w = w0.clone();
            let mut m = w.zeros_like()?;
            let mut v = w.zeros_like()?;
            let mut broken_now = vec![false; n];
            let mut previous = f64::INFINITY;
            for t in 1..=self.steps {
                if model.exhausted() {
                    break;
                }
                let tanh = w.tanh()?;
                let adv = tanh.affine(0.5, 0.5)?;
                let delta = adv.sub(xs)?;
                let objective = AttackLoss::Margin.value_and_input_grad(model, &adv, goal)?;
                // margin: best other minus label (untargeted), target minus best other
                // (targeted); f = max(−margin, −κ), active while −margin > −κ.
                let margin = objective.value.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let adversarial = successes(&objective.logits, &ids, targeted)?;
                let size = row_norms(Norm::L2, &delta)?;
                best.offer(&adv, &size, &adversarial)?;
                for (b, &a) in broken_now.iter_mut().zip(&adversarial) {
                    *b = *b || a;
                }
                let active: Vec<f64> = margin
                    .iter()
                    .zip(&c)
                    .map(|(&mg, &ck)| if -mg > -self.confidence { -ck } else { 0.0 })
                    .collect();
                // ∇ₓ = 2δ − c·∇margin (where f is active); ∇w = ∇ₓ · (1 − tanh²) / 2.
                let grad_x = delta
                    .affine(2.0, 0.0)?
                    .add(&objective.grad.broadcast_mul(&column(&active, xs)?)?)?;
                let grad_w = grad_x.mul(&tanh.sqr()?.affine(-0.5, 0.5)?)?;
                m = m
                    .affine(beta1, 0.0)?
                    .add(&grad_w.affine(1.0 - beta1, 0.0)?)?;
                v = v
                    .affine(beta2, 0.0)?
                    .add(&grad_w.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                let m_hat = m.affine(1.0 / (1.0 - beta1.powi(t as i32)), 0.0)?;
                let v_hat = v.affine(1.0 / (1.0 - beta2.powi(t as i32)), 0.0)?;
                let step = m_hat.div(&v_hat.sqrt()?.affine(1.0, eps_adam)?)?;
                w = w.sub(&step.affine(self.lr, 0.0)?)?;
                // Abort when the batch's objective stalls, as the reference does.
                let check = (self.steps / 10).max(1);
                if t % check == 0 {
                    let total: f64 = size
                        .iter()
                        .zip(&margin)
                        .zip(&c)
                        .map(|((&d, &mg), &ck)| d * d + ck * (-mg).max(-self.confidence))
                        .sum();
                    if total > previous * 0.9999 {
                        break;
                    }
                    previous = total;
                }
            }
            for k in 0..n {
                if broken_now[k] {
                    high[k] = high[k].min(c[k]);
                    if high[k] < 1e9 {
                        c[k] = (low[k] + high[k]) / 2.0;
                    }
                } else {
                    low[k] = low[k].max(c[k]);
                    c[k] = if high[k] < 1e9 {
                        (low[k] + high[k]) / 2.0
                    } else {
                        c[k] * 10.0
                    };
                }
            }
        }
        // Clipped so that rounding in tanh cannot leave the box.
        let out = best.adv.clamp(0.0, 1.0)?;
        where_rows(&best.found, &out, xs)
    }
}

attack_at_fixed_eps!(
    CarliniWagner,
    name = |_: &CarliniWagner| "cw-l2".to_string(),
    norm = |_: &CarliniWagner| Norm::L2
);
