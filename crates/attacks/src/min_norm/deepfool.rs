//! [`DeepFool`]: steps to the nearest linearised decision boundary.

use candle_core::{DType, Result, Tensor, Var};
use gauntlet_models::{Classifier, Mode};
use serde::{Deserialize, Serialize};

use super::fmn::scale_rows;
use super::{attack_at_fixed_eps, goal_ids, pair_gradient, row_norms, successes};
use crate::batch::where_rows;
use crate::{ConfigError, Goal, MinNorm, Norm};

/// DeepFool: linearise the classifier around the current point, step to the nearest
/// boundary of the linearised classes, repeat until the example is broken.
///
/// **Paper**: Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to
/// fool deep neural networks", CVPR 2016, <https://arxiv.org/abs/1511.04599> (Algorithm 2 and
/// its Lp form, §3.2); the overshoot and the candidate classes as Foolbox applies them.
///
/// **Threat model**: white box, any Lp (the paper's L2 and L∞), untargeted or targeted.
///
/// **Each step**, for the examples not yet broken: at `x̂ = clip(x + (1 + overshoot) r)`, for
/// each candidate class `k`, `f_k = z_k − z_y` and `w_k = ∇f_k` (one backward pass per
/// candidate); the nearest boundary is `l = argmin_k |f_k| / ‖w_k‖_q` (`q` the dual norm), and
/// `r` grows by the steepest-ascent step of `w_l` ([`Norm::steepest`]) of length
/// `(|f_l| + 10⁻⁴) / ‖w_l‖_q`, which crosses that linearised boundary. Targeted, the one
/// boundary is between the target and the current best other class. On a linear model the
/// first step lands on the nearest boundary: the exact minimal perturbation.
///
/// **Parameters** (defaults of [`DeepFool::new`], Foolbox's):
/// - `norm`: no default;
/// - `steps`: at most this many linearisations (50);
/// - `overshoot`: the factor past the boundary, `1 + overshoot` (0.02);
/// - `candidates`: the classes with the largest clean logits considered (10; all classes when
///   there are fewer).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeepFool {
    pub norm: Norm,
    pub steps: usize,
    pub overshoot: f64,
    pub candidates: usize,
}

impl DeepFool {
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            steps: 50,
            overshoot: 0.02,
            candidates: 10,
        }
    }

    /// The settings' preconditions, by key.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        if !(self.overshoot.is_finite() && self.overshoot >= 0.0) {
            return Err(ConfigError::new(
                "overshoot",
                format!("must be finite and >= 0, got {}", self.overshoot),
            ));
        }
        if self.candidates < 2 {
            return Err(ConfigError::new(
                "candidates",
                format!(
                    "must be at least 2 (the label and one other class), got {}",
                    self.candidates
                ),
            ));
        }
        Ok(())
    }

    fn point(&self, xs: &Tensor, r: &Tensor) -> Result<Tensor> {
        xs.add(&r.affine(1.0 + self.overshoot, 0.0)?)?
            .clamp(0.0, 1.0)
    }
}

impl MinNorm for DeepFool {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        self.validate()?;
        let n = xs.dim(0)?;
        let n_classes = model.n_classes();
        let (ids, targeted) = goal_ids(goal, n, n_classes)?;
        // The candidate classes of each example, from its clean logits, the label excluded.
        let clean = model
            .forward(xs, Mode::Eval)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let others: Vec<Vec<u32>> = clean
            .iter()
            .zip(&ids)
            .map(|(row, &y)| {
                let mut order: Vec<usize> = (0..row.len()).filter(|&j| j != y as usize).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order.truncate(self.candidates - 1);
                order.into_iter().map(|j| j as u32).collect()
            })
            .collect();
        let dual = self.norm.dual();
        let mut r = xs.zeros_like()?;
        let mut done = vec![false; n];
        for _ in 0..self.steps {
            if model.exhausted() {
                break;
            }
            let at = self.point(xs, &r)?;
            let leaf = Var::from_tensor(&at)?;
            let logits = model.forward_input_grad(leaf.as_tensor(), Mode::Eval)?;
            let rows = logits.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let broken = successes(&logits.detach(), &ids, targeted)?;
            for (d, b) in done.iter_mut().zip(&broken) {
                *d = *d || *b;
            }
            if done.iter().all(|&d| d) {
                break;
            }
            // Per example: the boundaries to consider, as (class that must win, class that
            // must lose). Untargeted: each candidate against the label; targeted: the target
            // against the best other class.
            let pairs: Vec<Vec<(u32, u32)>> = rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    if targeted {
                        let t = ids[i] as usize;
                        let rival = (0..row.len())
                            .filter(|&j| j != t)
                            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                            .unwrap_or(t);
                        vec![(ids[i], rival as u32)]
                    } else {
                        others[i].iter().map(|&k| (k, ids[i])).collect()
                    }
                })
                .collect();
            let width = pairs.iter().map(Vec::len).max().unwrap_or(0);
            let mut best_len = vec![f64::INFINITY; n];
            let mut best_f = vec![0f64; n];
            let mut best_w: Option<Tensor> = None;
            let mut chosen = vec![false; n];
            for slot in 0..width {
                let pick = |i: usize| pairs[i][slot.min(pairs[i].len() - 1)];
                let w = pair_gradient(model, &leaf, &logits, &pairs, slot)?;
                let w_len = row_norms(dual, &w)?;
                for i in 0..n {
                    let (a, b) = pick(i);
                    let fi = rows[i][a as usize] - rows[i][b as usize];
                    let dist = fi.abs() / w_len[i].max(1e-12);
                    chosen[i] = dist < best_len[i];
                    if chosen[i] {
                        best_len[i] = dist;
                        best_f[i] = fi;
                    }
                }
                best_w = Some(match best_w {
                    None => w,
                    Some(prev) => where_rows(&chosen, &w, &prev)?,
                });
            }
            let Some(w) = best_w else { break };
            // The step crossing each chosen boundary; none for broken examples.
            let w_len = row_norms(dual, &w)?;
            let lengths: Vec<f64> = (0..n)
                .map(|i| {
                    if done[i] || w_len[i] <= 1e-12 {
                        0.0
                    } else {
                        (best_f[i].abs() + 1e-4) / w_len[i]
                    }
                })
                .collect();
            let unit = self.norm.steepest(&w, 1.0)?;
            r = r.add(&scale_rows(&unit, &lengths)?)?;
        }
        // The last point, kept where it breaks the example.
        let at = self.point(xs, &r)?;
        let broken = successes(&model.forward(&at, Mode::Eval)?, &ids, targeted)?;
        where_rows(&broken, &at, xs)
    }
}

attack_at_fixed_eps!(
    DeepFool,
    name = |a: &DeepFool| format!("deepfool-{}", a.norm.name()),
    norm = |a: &DeepFool| a.norm
);
