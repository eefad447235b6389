//! [`Fab`]: the fast adaptive boundary attack.

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use gauntlet_models::{Classifier, Mode};
use serde::{Deserialize, Serialize};

use super::fmn::positive;
use super::{
    attack_at_fixed_eps, goal_ids, pair_gradient, row_norms, successes, wrong_class_at_rank, Best,
};
use crate::{ConfigError, Goal, MinNorm, Norm};

/// Fast Adaptive Boundary: at each step, linearise the classifier at the current point, project
/// both the current point and the original one onto the nearest linearised decision boundary
/// (within the box), and move to a convex combination of the two projections that leans
/// towards the original; once adversarial, step back towards the original.
///
/// **Paper**: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
/// boundary attack", ICML 2020, <https://arxiv.org/abs/1907.02196>, Algorithm 1, with the
/// defaults of AutoAttack's `fab_pt.py` (github.com/fra31/auto-attack).
///
/// **Threat model**: white box, L1, L2 or L∞; untargeted (the nearest boundary over all
/// other classes), targeted (the boundary between the target and the label, success being the
/// target), or FAB-T (`target_classes = Some(k)` with an untargeted goal: one run per each of
/// the k most likely wrong classes, each on the boundary with that class, success being any
/// wrong class, the smallest perturbation over the runs kept), as AutoAttack runs it.
///
/// **Each step**, per example at point `x_i` (starting at `x`): the logit differences
/// `f_k − f_y` and their gradients `w_k` (one backward pass per class considered); the boundary
/// `l` whose linearised distance `|f_l − f_y| / ‖w_l‖_q` is smallest; `d_i` and `d_0` the
/// smallest perturbations in the norm that take `x_i` and `x` onto that hyperplane inside the
/// box ([`project_onto_hyperplane`]); `α = min(‖d_i‖ / (‖d_i‖ + ‖d_0‖), α_max)`; then
/// `x_{i+1} = clip((1 − α)(x_i + η d_i) + α(x + η d_0))`. When `x_{i+1}` is adversarial it is
/// kept if smaller than the best so far and `x_{i+1} ← (1 − β) x + β x_{i+1}`. On a linear
/// model the first step lands `η` times the exact minimal distance away.
///
/// **Parameters** (defaults of [`Fab::new`], AutoAttack's):
/// - `norm`: L1, L2 or L∞ (no default);
/// - `steps`: iterations (100);
/// - `alpha_max` (0.1), `eta`, the overshoot (1.05), `beta`, the backward step (0.9);
/// - `target_classes`: `None`, or `Some(9)` for FAB-T.
///
/// Unlike the reference, there is one run from the clean point and no random restarts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fab {
    pub norm: Norm,
    pub steps: usize,
    pub alpha_max: f64,
    pub eta: f64,
    pub beta: f64,
    #[serde(default)]
    pub target_classes: Option<usize>,
}

impl Fab {
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            steps: 100,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            target_classes: None,
        }
    }

    /// FAB-T as AutoAttack's standard version runs it: 9 target classes.
    pub fn targeted_top(norm: Norm) -> Self {
        Self {
            target_classes: Some(9),
            ..Self::new(norm)
        }
    }

    /// The settings' preconditions, by key.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if !matches!(self.norm, Norm::L1 | Norm::L2 | Norm::Linf) {
            return Err(ConfigError::new(
                "norm",
                format!("fab takes L1, L2 or L∞, got {}", self.norm),
            ));
        }
        ConfigError::at_least_one("steps", self.steps)?;
        if let Some(k) = self.target_classes {
            ConfigError::at_least_one("target-classes", k)?;
        }
        positive("eta", self.eta)?;
        for (key, v) in [("alpha-max", self.alpha_max), ("beta", self.beta)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(ConfigError::new(key, format!("must be in (0, 1], got {v}")));
            }
        }
        Ok(())
    }

    /// One run: each row of `xs` towards the boundaries `pairs` gives it (`(k, y)`: class `k`
    /// against class `y`); a row succeeds at its target `ids[i]` (`targeted`) or at any class
    /// other than its label `ids[i]`. Every success smaller than the best so far goes to
    /// `best`.
    fn run(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        pairs: &[Vec<(u32, u32)>],
        ids: &[u32],
        targeted: bool,
        best: &mut Best,
    ) -> Result<()> {
        let n = xs.dim(0)?;
        let shape = xs.dims().to_vec();
        let dim = xs.elem_count() / n.max(1);
        let origin = rows_f64(xs)?;
        let mut point = origin.clone();
        let dual = self.norm.dual();
        for _ in 0..self.steps {
            if model.exhausted() {
                break;
            }
            let at = tensor_of(&point, &shape, xs)?;
            let leaf = Var::from_tensor(&at)?;
            let logits = model.forward_input_grad(leaf.as_tensor(), Mode::Eval)?;
            let values = logits.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
            // The nearest linearised boundary of each row: its value f and normal w.
            let width = pairs.iter().map(Vec::len).max().unwrap_or(0);
            let mut nearest = vec![f64::INFINITY; n];
            let mut value = vec![0f64; n];
            let mut normal: Vec<Vec<f64>> = vec![Vec::new(); n];
            for slot in 0..width {
                let pick = |i: usize| pairs[i][slot.min(pairs[i].len() - 1)];
                let w = pair_gradient(model, &leaf, &logits, pairs, slot)?;
                let lens = row_norms(dual, &w)?;
                let w_rows = rows_f64(&w)?;
                for i in 0..n {
                    let (a, b) = pick(i);
                    let fi = values[i][a as usize] - values[i][b as usize];
                    let d = fi.abs() / (lens[i] + 1e-12);
                    if d < nearest[i] {
                        nearest[i] = d;
                        value[i] = fi;
                        normal[i] = w_rows[i].clone();
                    }
                }
            }
            // Step every row; rows already at their best keep going, as in the reference.
            for i in 0..n {
                let w = &normal[i];
                if w.is_empty() {
                    continue;
                }
                let (x0, xi) = (&origin[i], point[i].clone());
                let xi = &xi;
                // The hyperplane w·z + b = 0 through the linearisation at x_i.
                let b = value[i] - dot(w, xi);
                let d_i = project_onto_hyperplane(self.norm, xi, w, -(dot(w, xi) + b));
                let d_0 = project_onto_hyperplane(self.norm, x0, w, -(dot(w, x0) + b));
                let (a_i, a_0) = (lp(self.norm, &d_i), lp(self.norm, &d_0));
                let alpha = if a_i + a_0 > 0.0 {
                    (a_i / (a_i + a_0)).clamp(0.0, self.alpha_max)
                } else {
                    0.0
                };
                for j in 0..dim {
                    let moved = (1.0 - alpha) * (xi[j] + self.eta * d_i[j])
                        + alpha * (x0[j] + self.eta * d_0[j]);
                    point[i][j] = moved.clamp(0.0, 1.0);
                }
            }
            let next = tensor_of(&point, &shape, xs)?;
            let adversarial = successes(&model.forward(&next, Mode::Eval)?, ids, targeted)?;
            let sizes = row_norms(self.norm, &next.sub(xs)?)?;
            best.offer(&next, &sizes, &adversarial)?;
            for i in 0..n {
                if adversarial[i] {
                    for j in 0..dim {
                        point[i][j] = (1.0 - self.beta) * origin[i][j] + self.beta * point[i][j];
                    }
                }
            }
        }
        Ok(())
    }
}

impl MinNorm for Fab {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        self.validate()?;
        let n = xs.dim(0)?;
        let n_classes = model.n_classes();
        let (ids, targeted) = goal_ids(goal, n, n_classes)?;
        if n_classes < 2 {
            bail!("fab needs at least 2 classes, got {n_classes}")
        }
        let mut best = Best::new(xs)?;
        let clean = model.forward(xs, Mode::Eval)?;
        let broken_clean = successes(&clean, &ids, targeted)?;
        best.offer(xs, &vec![0.0; n], &broken_clean)?;
        let clean_rows = clean.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        match (targeted, self.target_classes) {
            (true, _) => {
                // The target against the label of each row: ids are the targets here, and
                // the label is the clean prediction's class the attack must leave.
                let pairs: Vec<Vec<(u32, u32)>> = clean_rows
                    .iter()
                    .zip(&ids)
                    .map(|(row, &t)| vec![(t, crate::attack::arg_max(row) as u32)])
                    .collect();
                self.run(model, xs, &pairs, &ids, true, &mut best)?;
            }
            (false, None) => {
                let pairs: Vec<Vec<(u32, u32)>> = ids
                    .iter()
                    .map(|&y| {
                        (0..n_classes as u32)
                            .filter(|&k| k != y)
                            .map(|k| (k, y))
                            .collect()
                    })
                    .collect();
                self.run(model, xs, &pairs, &ids, false, &mut best)?;
            }
            (false, Some(k)) => {
                // FAB-T: one run per rank of the most likely wrong classes.
                for rank in 0..k.min(n_classes - 1) {
                    let pairs: Vec<Vec<(u32, u32)>> = clean_rows
                        .iter()
                        .zip(&ids)
                        .map(|(row, &y)| vec![(wrong_class_at_rank(row, y, rank), y)])
                        .collect();
                    self.run(model, xs, &pairs, &ids, false, &mut best)?;
                }
            }
        }
        Ok(best.adv)
    }
}

attack_at_fixed_eps!(
    Fab,
    name = |a: &Fab| match a.target_classes {
        Some(_) => format!("fab-t-{}", a.norm.name()),
        None => format!("fab-{}", a.norm.name()),
    },
    norm = |a: &Fab| a.norm
);

fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.flatten_from(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()
}

fn tensor_of(rows: &[Vec<f64>], shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, shape, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn lp(norm: Norm, v: &[f64]) -> f64 {
    match norm {
        Norm::Linf => v.iter().fold(0f64, |m, x| m.max(x.abs())),
        Norm::L1 => v.iter().map(|x| x.abs()).sum(),
        _ => v.iter().map(|x| x * x).sum::<f64>().sqrt(),
    }
}

/// The smallest `δ` in `norm` (L1, L2 or L∞) with `w·δ = c` and `z + δ ∈ [0, 1]`, or, when
/// the box does not reach the hyperplane, the point of the box closest to it along that
/// direction. Each coordinate moves towards the sign of `c·w_j` by at most its room in the
/// box: L2 by `λ|w_j|` (the KKT conditions), L∞ by a common `t`, each with the smallest
/// multiplier that reaches `c` (exactly: `w·δ` is piecewise linear in it, with a kink where
/// each coordinate reaches its face); L1 fills the coordinates of largest `|w_j|` first (a
/// fractional knapsack).
pub fn project_onto_hyperplane(norm: Norm, z: &[f64], w: &[f64], c: f64) -> Vec<f64> {
    let sign = if c < 0.0 { -1.0 } else { 1.0 };
    let target = c.abs();
    // Along s_j = sign(c·w_j), coordinate j may move by room_j and gains |w_j| per unit.
    let dir: Vec<f64> = w.iter().map(|&wj| sign * wj.signum()).collect();
    let room: Vec<f64> = z
        .iter()
        .zip(&dir)
        .map(|(&zj, &s)| {
            if s > 0.0 {
                1.0 - zj
            } else if s < 0.0 {
                zj
            } else {
                0.0
            }
        })
        .map(|r| r.max(0.0))
        .collect();
    let to_delta =
        |moves: Vec<f64>| -> Vec<f64> { moves.iter().zip(&dir).map(|(m, s)| m * s).collect() };
    if target == 0.0 {
        return vec![0.0; z.len()];
    }
    match norm {
        Norm::L1 => {
            let mut order: Vec<usize> = (0..z.len()).filter(|&j| w[j] != 0.0).collect();
            order.sort_by(|&a, &b| w[b].abs().total_cmp(&w[a].abs()));
            let mut moves = vec![0.0; z.len()];
            let mut left = target;
            for j in order {
                if left <= 0.0 {
                    break;
                }
                let m = room[j].min(left / w[j].abs());
                moves[j] = m;
                left -= m * w[j].abs();
            }
            to_delta(moves)
        }
        Norm::Linf | Norm::L2 | Norm::Lp(_) => {
            // Coordinate j moves by min(t·a_j, room_j), gaining |w_j| per unit: a_j = 1 for
            // L∞ (a common step t), a_j = |w_j| for L2 (δ = t·w, the KKT conditions). The gain
            // is piecewise linear in t, with a kink where each coordinate reaches its face:
            // walk the kinks in order to the segment where it reaches the target.
            let rate: Vec<f64> = w
                .iter()
                .map(|wj| match norm {
                    Norm::Linf => 1.0,
                    _ => wj.abs(),
                })
                .collect();
            let mut kinks: Vec<(f64, usize)> = (0..z.len())
                .filter(|&j| w[j] != 0.0 && rate[j] > 0.0)
                .map(|j| (room[j] / rate[j], j))
                .collect();
            kinks.sort_by(|a, b| a.0.total_cmp(&b.0));
            // gain(t) = slope·t + fixed over the current segment.
            let mut slope: f64 = kinks.iter().map(|&(_, j)| w[j].abs() * rate[j]).sum();
            let mut fixed = 0.0;
            let mut t_end = f64::INFINITY;
            let mut from = 0.0;
            for &(t, j) in &kinks {
                if slope * t + fixed >= target {
                    t_end = ((target - fixed) / slope).max(from);
                    break;
                }
                slope -= w[j].abs() * rate[j];
                fixed += w[j].abs() * room[j];
                from = t;
            }
            let t = if t_end.is_finite() {
                t_end
            } else {
                // The box does not reach the hyperplane: every coordinate at its face.
                f64::INFINITY
            };
            let moves: Vec<f64> = (0..z.len())
                .map(|j| {
                    if w[j] == 0.0 {
                        0.0
                    } else {
                        (t * rate[j]).min(room[j])
                    }
                })
                .collect();
            to_delta(moves)
        }
    }
}
