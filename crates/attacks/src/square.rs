//! [`Square`]: the Square attack, a score-based random search that never looks at a gradient,
//! so masked or obfuscated gradients do not stop it.

use candle_core::{bail, DType, Device, Result, Tensor};
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{Classifier, Mode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::loss::succeeded;
use crate::norm::check_eps;
use crate::{Attack, AttackKind, AttackLoss, ConfigError, Goal, Norm};

/// The Square attack: random search over square-shaped updates, accepted when they improve the
/// margin loss.
///
/// **Paper**: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
/// black-box adversarial attack via random search", ECCV 2020,
/// <https://arxiv.org/abs/1912.00049>. Ported from `autoattack/square.py`
/// (github.com/fra31/auto-attack), the version AutoAttack runs.
///
/// **Threat model**: score-based black box (logits only, no gradient), untargeted or targeted
/// ([`Goal`]), L∞ or L2: `‖x_adv − x‖ ≤ ε` per example and `x_adv ∈ [0, 1]` always.
///
/// **The search** (per example): L∞ starts from vertical stripes of `±ε`, L2 from a grid of
/// the paper's square "η" patterns scaled to `‖δ‖₂ = ε`. Each iteration proposes a change on
/// one random square window of side `s` (L∞: the window set to `x ± ε`, one random sign per
/// channel; L2: mass moved between two windows with η patterns, keeping `‖δ‖₂ ≤ ε`) and keeps
/// it when it raises the margin loss ([`AttackLoss::Margin`]) or breaks the example. The
/// window covers a fraction `p` of the image, `p` falling from `p_init` on the reference's
/// schedule (halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations; with
/// `rescale_schedule` those counts are scaled to `n_queries / 10000` of themselves).
///
/// Unlike the reference, which shares each iteration's window and signs across the batch,
/// every example draws its own, from its own generator (`seed`, restart, position in the
/// batch), so an example's search does not depend on which others are still running.
///
/// **Query budget**: one clean evaluation, then per restart at most `n_queries` evaluations
/// of each example, its starting point included; an example stops as soon as it is broken.
///
/// **Per-example worst case**: examples broken before the attack are returned as they are; a
/// broken example returns the point that broke it, any other its best point over the restarts.
///
/// **Parameters** (defaults of [`Square::new`], AutoAttack's):
/// - `norm`: L∞ or L2 (no default);
/// - `n_queries`: evaluations per example and restart (5000);
/// - `p_init`: the first window's fraction of the image (0.8);
/// - `restarts`: independent searches (1);
/// - `rescale_schedule`: fit the schedule of `p` to `n_queries` (false, as AutoAttack runs it);
/// - `seed`: (0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Square {
    pub norm: Norm,
    pub n_queries: usize,
    pub p_init: f64,
    pub restarts: usize,
    pub rescale_schedule: bool,
    pub seed: u64,
}

impl Square {
    /// The Square attack in `norm` with the defaults listed on [`Square`].
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            n_queries: 5000,
            p_init: 0.8,
            restarts: 1,
            rescale_schedule: false,
            seed: 0,
        }
    }

    /// The settings' preconditions, by key ([`crate::AttackConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if !matches!(self.norm, Norm::Linf | Norm::L2) {
            return Err(ConfigError::new(
                "norm",
                format!(
                    "the square attack supports norms inf and 2, got {}",
                    self.norm
                ),
            ));
        }
        ConfigError::at_least_one("n-queries", self.n_queries)?;
        ConfigError::at_least_one("restarts", self.restarts)?;
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(ConfigError::new(
                "p-init",
                format!("must be in (0, 1], got {}", self.p_init),
            ));
        }
        Ok(())
    }

    /// The window fraction at iteration `it` (0-based).
    fn p_at(&self, it: usize) -> f64 {
        let it = if self.rescale_schedule {
            (it as f64 / self.n_queries as f64 * 10000.0) as usize
        } else {
            it
        };
        let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
            .iter()
            .filter(|&&t| it > t)
            .count();
        // p_init / 2, / 4, / 8, ... / 512 (the reference jumps from /2 to /4 at 50, etc.).
        self.p_init / 2f64.powi(halvings as i32)
    }
}

/// `[channels, height, width]` of one example and its values.
#[derive(Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
}

impl Geometry {
    fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    fn at(&self, ch: usize, row: usize, col: usize) -> usize {
        (ch * self.h + row) * self.w + col
    }
}

/// A uniform start of a window of side `s` in a dimension of size `n`: `0..n−s`, the
/// reference's range (its last position is never drawn), 0 when the window fills it.
fn window_start(rng: &mut ChaCha8Rng, n: usize, s: usize) -> usize {
    if n > s {
        rng.random_range(0..n - s)
    } else {
        0
    }
}

fn random_sign(rng: &mut ChaCha8Rng) -> f32 {
    if rng.random::<bool>() {
        1.0
    } else {
        -1.0
    }
}

/// The reference's `eta_rectangles(x, y)`: nested rectangles with weights `1/(k+1)²`,
/// normalised to unit L2 norm, row-major `x × y`.
fn eta_rectangles(x: usize, y: usize) -> Vec<f32> {
    let mut delta = vec![0f32; x * y];
    let (xc, yc) = ((x / 2 + 1) as i64, (y / 2 + 1) as i64);
    let (mut r0, mut c0) = (xc - 1, yc - 1);
    for k in 0..xc.max(yc) {
        let weight = 1.0 / ((k + 1) * (k + 1)) as f32;
        let (r_lo, r_hi) = (r0.max(0), (r0 + 2 * k + 1).min(x as i64));
        let (c_lo, c_hi) = (c0.max(0), (c0 + 2 * k + 1).min(y as i64));
        for r in r_lo..r_hi {
            for c in c_lo..c_hi {
                delta[r as usize * y + c as usize] += weight;
            }
        }
        r0 -= 1;
        c0 -= 1;
    }
    normalize_l2(&mut delta);
    delta
}

/// The reference's `eta(s)`: an `s × s` pattern, positive rectangles on top, negative below,
/// unit L2 norm, transposed with probability 1/2.
fn eta(s: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let top = s / 2;
    let mut delta = eta_rectangles(top, s);
    delta.extend(eta_rectangles(s - top, s).iter().map(|v| -v));
    normalize_l2(&mut delta);
    if rng.random::<bool>() {
        let mut t = vec![0f32; s * s];
        for r in 0..s {
            for c in 0..s {
                t[c * s + r] = delta[r * s + c];
            }
        }
        delta = t;
    }
    delta
}

fn normalize_l2(v: &mut [f32]) {
    let len = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if len > 0.0 {
        v.iter_mut().for_each(|x| *x /= len);
    }
}

/// `x + ε·δ/‖δ‖₂`, clipped to `[0, 1]` (the reference's `1e-12` guard included).
fn l2_point(x: &[f32], delta: &[f32], eps: f64) -> Vec<f32> {
    let len = delta.iter().map(|d| d * d).sum::<f32>().sqrt() + 1e-12;
    let scale = eps as f32 / len;
    x.iter()
        .zip(delta)
        .map(|(a, d)| (a + d * scale).clamp(0.0, 1.0))
        .collect()
}

impl Square {
    /// The starting point of one example.
    fn start(&self, x: &[f32], g: Geometry, eps: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let e = eps as f32;
        if self.norm == Norm::Linf {
            // Vertical stripes: one sign per channel and column.
            let mut out = x.to_vec();
            for ch in 0..g.c {
                for col in 0..g.w {
                    let d = e * random_sign(rng);
                    for row in 0..g.h {
                        let i = g.at(ch, row, col);
                        out[i] = (x[i] + d).clamp(0.0, 1.0);
                    }
                }
            }
            return out;
        }
        // L2: a grid of η patterns of side h/5 (at least 1), one sign per channel and tile.
        let s = (g.h / 5).max(1);
        let offset = g.h.saturating_sub(5 * s) / 2;
        let mut delta = vec![0f32; g.len()];
        let mut vh = offset;
        for _ in 0..g.h / s {
            let mut vw = offset;
            for _ in 0..g.w / s {
                if vh + s <= g.h && vw + s <= g.w {
                    let pattern = eta(s, rng);
                    for ch in 0..g.c {
                        let sign = random_sign(rng);
                        for r in 0..s {
                            for c in 0..s {
                                delta[g.at(ch, vh + r, vw + c)] += pattern[r * s + c] * sign;
                            }
                        }
                    }
                }
                vw += s;
            }
            vh += s;
        }
        l2_point(x, &delta, eps)
    }

    /// A proposal from the current best point `best` of clean input `x` at iteration `it`.
    fn propose(
        &self,
        x: &[f32],
        best: &[f32],
        g: Geometry,
        eps: f64,
        it: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<f32> {
        let p = self.p_at(it);
        let area = p * g.len() as f64 / g.c as f64;
        let side = g.h.min(g.w);
        let e = eps as f32;
        if self.norm == Norm::Linf {
            let s = (area.sqrt().round() as usize).max(1).min(side);
            let (vh, vw) = (window_start(rng, g.h, s), window_start(rng, g.w, s));
            let mut out = best.to_vec();
            for ch in 0..g.c {
                let d = 2.0 * e * random_sign(rng);
                for r in vh..vh + s {
                    for c in vw..vw + s {
                        let i = g.at(ch, r, c);
                        out[i] = (best[i] + d).clamp(x[i] - e, x[i] + e).clamp(0.0, 1.0);
                    }
                }
            }
            return out;
        }
        // L2: move the mass of window 1 (re-shaped by a new η) and window 2 into window 1.
        let mut s = (area.sqrt().round() as usize).max(3);
        if s.is_multiple_of(2) {
            s += 1;
        }
        let s = s.min(side);
        let (vh, vw) = (window_start(rng, g.h, s), window_start(rng, g.w, s));
        let (vh2, vw2) = (window_start(rng, g.h, s), window_start(rng, g.w, s));
        let mut delta: Vec<f32> = best.iter().zip(x).map(|(b, a)| b - a).collect();
        let image_norm_sq: f32 = delta.iter().map(|d| d * d).sum();
        let in1 = |r: usize, c: usize| (vh..vh + s).contains(&r) && (vw..vw + s).contains(&c);
        let in2 = |r: usize, c: usize| (vh2..vh2 + s).contains(&r) && (vw2..vw2 + s).contains(&c);
        let pattern = eta(s, rng);
        let mut updates = Vec::with_capacity(g.c);
        for ch in 0..g.c {
            let (mut window1_sq, mut windows_sq) = (0f32, 0f32);
            for r in 0..g.h {
                for c in 0..g.w {
                    let d = delta[g.at(ch, r, c)];
                    if in1(r, c) {
                        window1_sq += d * d;
                    }
                    if in1(r, c) || in2(r, c) {
                        windows_sq += d * d;
                    }
                }
            }
            let window1 = window1_sq.sqrt();
            let sign = random_sign(rng);
            let mut new: Vec<f32> = (0..s * s)
                .map(|k| {
                    let (r, c) = (vh + k / s, vw + k % s);
                    pattern[k] * sign + delta[g.at(ch, r, c)] / (1e-12 + window1)
                })
                .collect();
            let len = new.iter().map(|v| v * v).sum::<f32>().sqrt();
            let budget = ((e * e - image_norm_sq).max(0.0) / g.c as f32 + windows_sq).sqrt();
            new.iter_mut()
                .for_each(|v| *v = *v / (1e-12 + len) * budget);
            updates.push(new);
        }
        for (ch, new) in updates.iter().enumerate() {
            for r in vh2..vh2 + s {
                for c in vw2..vw2 + s {
                    delta[g.at(ch, r, c)] = 0.0;
                }
            }
            for (k, &v) in new.iter().enumerate() {
                delta[g.at(ch, vh + k / s, vw + k % s)] = v;
            }
        }
        l2_point(x, &delta, eps)
    }
}

/// Logits of `rows` (each one example's values) as f64 rows.
fn evaluate_rows(
    model: &dyn Classifier,
    rows: &[&[f32]],
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let mut values = Vec::with_capacity(rows.len() * rows.first().map_or(0, |r| r.len()));
    rows.iter().for_each(|r| values.extend_from_slice(r));
    let mut dims = shape.to_vec();
    dims[0] = rows.len();
    let xs = Tensor::from_vec(values, dims, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?;
    model
        .forward(&xs, Mode::Eval)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()
}

impl Attack for Square {
    fn name(&self) -> String {
        format!("square-{}", self.norm.name())
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::ScoreBased
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
        let dims = xs.dims().to_vec();
        let &[batch, c, h, w] = dims.as_slice() else {
            bail!("the square attack needs images (batch, channels, height, width), got shape {dims:?}")
        };
        let n_classes = model.n_classes();
        AttackLoss::Margin.check_classes(n_classes, false)?;
        let ids = goal.checked_ids(batch, n_classes)?;
        let targeted = matches!(goal, Goal::Targeted { .. });
        let g = Geometry { c, h, w };
        let (dtype, device) = (xs.dtype(), xs.device());
        let clean: Vec<Vec<f32>> = xs
            .detach()
            .to_dtype(DType::F32)?
            .flatten_from(1)?
            .to_vec2::<f32>()?;
        let mut out = clean.clone();
        let logits = evaluate_rows(
            model,
            &clean.iter().map(|r| r.as_slice()).collect::<Vec<_>>(),
            &dims,
            dtype,
            device,
        )?;
        let mut broken: Vec<bool> = logits
            .iter()
            .zip(&ids)
            .map(|(row, &y)| succeeded(row, y, targeted))
            .collect();
        // The margin loss (ascended) of each example's returned point.
        let mut best_value = vec![f64::NEG_INFINITY; batch];
        let value_of = |row: &[f64], y: u32| {
            AttackLoss::Margin.values(std::slice::from_ref(&row.to_vec()), &[y], targeted)[0]
        };
        for restart in 0..self.restarts {
            let mut active: Vec<usize> = (0..batch).filter(|&i| !broken[i]).collect();
            if active.is_empty() {
                break;
            }
            let restart_seed = derive_seed(self.seed, restart as u64);
            let mut rngs: Vec<ChaCha8Rng> = (0..batch)
                .map(|i| ChaCha8Rng::seed_from_u64(derive_seed(restart_seed, i as u64)))
                .collect();
            let mut current: Vec<Vec<f32>> = vec![vec![]; batch];
            let mut value = vec![f64::NEG_INFINITY; batch];
            for &i in &active {
                current[i] = self.start(&clean[i], g, eps, &mut rngs[i]);
            }
            // Query 1 is the start; queries 2..=n_queries are iterations 0..n_queries−1.
            for it in 0..self.n_queries {
                let proposals: Vec<Vec<f32>> = if it == 0 {
                    active.iter().map(|&i| current[i].clone()).collect()
                } else {
                    active
                        .iter()
                        .map(|&i| {
                            self.propose(&clean[i], &current[i], g, eps, it - 1, &mut rngs[i])
                        })
                        .collect()
                };
                let logits = evaluate_rows(
                    model,
                    &proposals.iter().map(|r| r.as_slice()).collect::<Vec<_>>(),
                    &dims,
                    dtype,
                    device,
                )?;
                let mut still = Vec::with_capacity(active.len());
                for ((&i, proposal), row) in active.iter().zip(proposals).zip(&logits) {
                    let v = value_of(row, ids[i]);
                    let success = succeeded(row, ids[i], targeted);
                    if success || v > value[i] {
                        value[i] = v;
                        current[i] = proposal;
                    }
                    if success {
                        broken[i] = true;
                        out[i] = current[i].clone();
                    } else {
                        still.push(i);
                    }
                }
                active = still;
                if active.is_empty() {
                    break;
                }
            }
            for i in 0..batch {
                if !broken[i] && !current[i].is_empty() && value[i] > best_value[i] {
                    best_value[i] = value[i];
                    out[i] = std::mem::take(&mut current[i]);
                }
            }
        }
        let flat: Vec<f32> = out.concat();
        Tensor::from_vec(flat, dims, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, inputs};
    use crate::{evaluate_attack, evaluate_attack_detailed};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the examples each forward pass evaluates.
    struct Counting {
        inner: Box<dyn Classifier>,
        calls: AtomicUsize,
        rows: AtomicUsize,
    }

    impl Classifier for Counting {
        fn spec(&self) -> &gauntlet_models::ModelSpec {
            self.inner.spec()
        }
        fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.rows.fetch_add(xs.dim(0)?, Ordering::SeqCst);
            self.inner.forward(xs, mode)
        }
        fn params(&self) -> &gauntlet_models::Params {
            self.inner.params()
        }
    }

    fn data(model: &dyn Classifier, n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
        let (xs, _) = inputs(n, seed)?;
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        Ok((xs, labels))
    }

    #[test]
    fn stays_in_the_ball_and_the_box_within_the_query_budget() -> Result<()> {
        for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 0.3)] {
            let model = Counting {
                inner: balanced_maxout()?,
                calls: AtomicUsize::new(0),
                rows: AtomicUsize::new(0),
            };
            let (xs, labels) = data(&model, 24, 31)?;
            let attack = Square {
                n_queries: 40,
                restarts: 2,
                ..Square::new(norm)
            };
            model.calls.store(0, Ordering::SeqCst);
            model.rows.store(0, Ordering::SeqCst);
            let adv = attack.perturb(&model, &xs, &Goal::Untargeted { labels: &labels }, eps)?;
            // One clean pass, then at most n_queries passes per restart, each example at most
            // once per pass.
            let (calls, rows) = (
                model.calls.load(Ordering::SeqCst),
                model.rows.load(Ordering::SeqCst),
            );
            assert!(calls <= 1 + 2 * 40, "{norm}: {calls} forward passes");
            assert!(
                rows <= 24 * (1 + 2 * 40),
                "{norm}: {rows} example evaluations"
            );
            let sizes = norm.norm(&adv.sub(&xs)?)?.to_vec1::<f32>()?;
            for (i, s) in sizes.iter().enumerate() {
                assert!(
                    *s as f64 <= eps * (1.0 + 1e-5),
                    "{norm} example {i}: {s} > {eps}"
                );
            }
            let (lo, hi) = (
                adv.min_all()?.to_scalar::<f32>()?,
                adv.max_all()?.to_scalar::<f32>()?,
            );
            assert!(lo >= 0.0 && hi <= 1.0, "{norm}: range [{lo}, {hi}]");
            // The search spends its budget: a sizeable share of examples is moved.
            let moved = sizes.iter().filter(|&&s| s > 0.0).count();
            assert!(moved >= 12, "{norm}: {moved} examples moved");
        }
        Ok(())
    }

    #[test]
    fn lowers_accuracy_of_an_undefended_model_and_follows_the_seed() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 60, 32)?;
        for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 0.3)] {
            let attack = Square {
                n_queries: 200,
                seed: 3,
                ..Square::new(norm)
            };
            let (records, outcomes) =
                evaluate_attack_detailed(model.as_ref(), &attack, &xs, &labels, &[0.0, eps], 32)?;
            assert_eq!(records[0].adversarial_correct, 60, "{norm}: ε = 0");
            let robust = records[1].adversarial_correct;
            assert!(robust <= 40, "{norm}: {robust}/60 robust after square");
            assert_eq!(records[1].kind, AttackKind::ScoreBased);
            assert!(outcomes[60..]
                .iter()
                .all(|o| o.robust || o.broken_by.as_deref() == Some(attack.name().as_str())));
            let again = evaluate_attack(model.as_ref(), &attack, &xs, &labels, &[eps], 32)?;
            assert_eq!(again[0].adversarial_correct, robust, "{norm}: same seed");
        }
        Ok(())
    }

    #[test]
    fn schedule_and_patterns_match_the_reference() {
        let square = Square::new(Norm::Linf);
        let ps: Vec<f64> = [0, 10, 11, 50, 51, 4001, 9000]
            .iter()
            .map(|&it| square.p_at(it))
            .collect();
        assert_eq!(ps, [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 128.0, 0.8 / 512.0]);
        let rescaled = Square {
            n_queries: 1000,
            rescale_schedule: true,
            ..square
        };
        // Iteration 6 of 1000 is iteration 60 of the 10,000-query schedule.
        assert_eq!(rescaled.p_at(6), 0.2);
        // eta_rectangles(3, 3) before normalisation: centre 1 + 1/4, ring 1/4.
        let e = eta_rectangles(3, 3);
        let ratio = e[4] / e[0];
        assert!((ratio - 5.0).abs() < 1e-6, "{e:?}");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let pattern = eta(5, &mut rng);
        let norm: f32 = pattern.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        assert!(pattern.iter().any(|&v| v > 0.0) && pattern.iter().any(|&v| v < 0.0));
    }

    #[test]
    fn invalid_settings_are_rejected() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = data(model.as_ref(), 2, 1)?;
        let goal = Goal::Untargeted { labels: &labels };
        let err = |attack: Square| {
            attack
                .perturb(model.as_ref(), &xs, &goal, 0.1)
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(Square::new(Norm::L1)).contains("supports norms inf and 2, got l1"));
        assert!(err(Square {
            n_queries: 0,
            ..Square::new(Norm::Linf)
        })
        .contains("n-queries: must be at least 1"));
        assert!(err(Square {
            p_init: 1.5,
            ..Square::new(Norm::Linf)
        })
        .contains("p-init: must be in (0, 1]"));
        Ok(())
    }
}
