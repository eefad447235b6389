//! [`AttackLoss`]: the objective an iterative attack ascends — cross-entropy, or the margin
//! loss of Carlini & Wagner — with its input gradient and its per-example value.

use candle_core::{bail, DType, Result, Tensor, Var};
use gauntlet_models::{Classifier, Mode};
use serde::{Deserialize, Serialize};

use crate::attack::arg_max;
use crate::Goal;

/// The objective an attack *ascends*, per example.
///
/// For a goal with labels `y` (untargeted) or targets `t` (targeted), logits `z`, and `z_π1 ≥
/// z_π2 ≥ …` the logits sorted:
///
/// | loss | untargeted | targeted |
/// |---|---|---|
/// | [`AttackLoss::CrossEntropy`] | `CE(z, y)` | `−CE(z, t)` |
/// | [`AttackLoss::Margin`] | `max_{j≠y} z_j − z_y` | `z_t − max_{j≠t} z_j` |
/// | [`AttackLoss::Dlr`] | `(max_{j≠y} z_j − z_y) / (z_π1 − z_π3 + 1e−12)` | `(z_t − max_{j≠t} z_j) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12)` |
///
/// The margin is positive exactly when the attack has succeeded. Its gradient is a difference
/// of two logits' gradients, so it does not vanish when the softmax saturates, which is the
/// point of Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE
/// S&P 2017, <https://arxiv.org/abs/1608.04644> (their loss f₆ with κ = 0).
///
/// The Difference of Logits Ratio (DLR) is the margin divided by a spread of the top logits,
/// so it is also invariant to scaling the logits (and to shifting them): the loss of Croce &
/// Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
/// parameter-free attacks", ICML 2020, <https://arxiv.org/abs/2003.01690>, §4. It needs at
/// least 3 classes, 4 when targeted. Their targeted DLR is `−(z_y − z_t) / (…)` with the true
/// label `y`, which a targeted [`Goal`] does not carry; `max_{j≠t} z_j` equals `z_y` as long
/// as the example is still classified as `y`, and APGD-T ([`crate::Apgd`]) stops attacking
/// an example as soon as it is not, so the two agree wherever it is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum AttackLoss {
    /// Cross-entropy (`ce`).
    #[default]
    #[serde(alias = "ce")]
    #[cfg_attr(feature = "clap", value(alias = "ce"))]
    CrossEntropy,
    /// Carlini & Wagner's margin (`cw`).
    #[serde(alias = "cw")]
    #[cfg_attr(feature = "clap", value(alias = "cw"))]
    Margin,
    /// Croce & Hein's difference of logits ratio.
    Dlr,
}

/// One evaluation of an [`AttackLoss`] on a batch, all detached.
#[derive(Clone, Debug)]
pub struct Objective {
    /// The objective of each example, `(batch,)`, in the dtype of the logits.
    pub value: Tensor,
    /// `(batch, n_classes)`.
    pub logits: Tensor,
    /// Gradient of the *sum* of the objectives with respect to the input, so each row is that
    /// example's own gradient; the shape of the input.
    pub grad: Tensor,
}

impl AttackLoss {
    /// Stable identifier: `"cross-entropy"`, `"margin"` or `"dlr"`.
    pub fn name(&self) -> &'static str {
        match self {
            AttackLoss::CrossEntropy => "cross-entropy",
            AttackLoss::Margin => "margin",
            AttackLoss::Dlr => "dlr",
        }
    }

    /// The objective of `goal` at `xs`, its logits and its input gradient, with the model in
    /// [`Mode::Eval`].
    ///
    /// Cross-entropy goes through [`Classifier::loss_and_input_grad`] (so a model's own fast
    /// backward is used); the margin and DLR through Candle's autograd with `xs` as a fresh
    /// leaf. A model whose logits do not depend on its input gets a zero gradient.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)`; returns [`Objective`] shapes
    ///
    /// # Errors
    /// On a label count different from the batch, labels outside the classes (margin, DLR),
    /// fewer than 2 classes (margin), 3 (DLR) or 4 (targeted DLR), and model errors.
    pub fn value_and_input_grad(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
    ) -> Result<Objective> {
        let labels = goal.labels();
        let (batch, n_labels) = (xs.dim(0)?, labels.dims1()?);
        if n_labels != batch {
            bail!("expected one label per example ({batch}), got {n_labels}")
        }
        let targeted = matches!(goal, Goal::Targeted { .. });
        match self {
            AttackLoss::CrossEntropy => {
                let res = model.loss_and_input_grad(xs, labels, Mode::Eval)?;
                let (value, grad) = if targeted {
                    (res.loss.neg()?, res.grad.neg()?)
                } else {
                    (res.loss, res.grad)
                };
                Ok(Objective {
                    value,
                    logits: res.logits,
                    grad,
                })
            }
            AttackLoss::Margin | AttackLoss::Dlr => {
                pairwise_value_and_input_grad(*self, model, xs, labels, targeted)
            }
        }
    }

    /// Fails unless a model with `n_classes` classes has enough of them for this loss: 2 for
    /// the margin, 3 for DLR, 4 for targeted DLR.
    pub fn check_classes(&self, n_classes: usize, targeted: bool) -> Result<()> {
        let (needed, what) = match (self, targeted) {
            (AttackLoss::CrossEntropy, _) => return Ok(()),
            (AttackLoss::Margin, _) => (2, "the margin loss"),
            (AttackLoss::Dlr, false) => (3, "the DLR loss"),
            (AttackLoss::Dlr, true) => (4, "the targeted DLR loss"),
        };
        if n_classes < needed {
            bail!("{what} needs at least {needed} classes, got {n_classes}")
        }
        Ok(())
    }

    /// The objective of each row of `logits` for `labels` (targets when `targeted`), in f64.
    pub(crate) fn values(&self, logits: &[Vec<f64>], labels: &[u32], targeted: bool) -> Vec<f64> {
        logits
            .iter()
            .zip(labels)
            .map(|(row, &y)| {
                let y = y as usize;
                let value = match self {
                    AttackLoss::CrossEntropy => {
                        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z));
                        let log_sum = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
                        log_sum - row[y]
                    }
                    AttackLoss::Margin => row[arg_max_except(row, y)] - row[y],
                    AttackLoss::Dlr => {
                        let sorted: Vec<f64> = sorted_desc(row).iter().map(|&j| row[j]).collect();
                        (row[arg_max_except(row, y)] - row[y]) / dlr_spread(&sorted, targeted)
                    }
                };
                // A targeted attack descends the target's loss and climbs its margin over the
                // rest, which is the negated margin of the target seen as a label.
                if targeted {
                    -value
                } else {
                    value
                }
            })
            .collect()
    }
}

/// Whether logits `row` count as a success: a class other than `label` (untargeted) or the
/// target `label` itself (targeted).
pub(crate) fn succeeded(row: &[f64], label: u32, targeted: bool) -> bool {
    (arg_max(row) == label as usize) == targeted
}

/// The largest entry other than `skip`, the first one on ties.
fn arg_max_except(row: &[f64], skip: usize) -> usize {
    let mut best = usize::from(skip == 0);
    for (j, &z) in row.iter().enumerate() {
        if j != skip && z > row[best] {
            best = j;
        }
    }
    best
}

/// Class indices of `row` from the largest logit down (stable on ties).
fn sorted_desc(row: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order
}

/// The DLR denominator from logits sorted in decreasing order: `z_π1 − z_π3 + 1e−12`, or
/// `z_π1 − (z_π3 + z_π4)/2 + 1e−12` when targeted. Callers check the number of classes first
/// ([`AttackLoss::check_classes`]); a missing rank falls back to the smallest logit.
fn dlr_spread(sorted: &[f64], targeted: bool) -> f64 {
    let rank = |k: usize| sorted.get(k).or(sorted.last()).copied().unwrap_or(0.0);
    if targeted {
        rank(0) - 0.5 * (rank(2) + rank(3)) + DLR_EPS
    } else {
        rank(0) - rank(2) + DLR_EPS
    }
}

/// Croce & Hein's guard against a zero spread.
const DLR_EPS: f64 = 1e-12;

/// The margin or the DLR objective by autograd: the competing class (and for DLR the order of
/// the logits) is chosen on the detached logits, then the value is differentiated, which is
/// the sub-gradient of the max (and of the sort).
fn pairwise_value_and_input_grad(
    loss: AttackLoss,
    model: &dyn Classifier,
    xs: &Tensor,
    labels: &Tensor,
    targeted: bool,
) -> Result<Objective> {
    let leaf = Var::from_tensor(&xs.detach())?;
    // Only the input's gradient is wanted: the models' fast path skips the weights'.
    let logits = model.forward_input_grad(leaf.as_tensor(), Mode::Eval)?;
    let (batch, n_classes) = logits.dims2()?;
    loss.check_classes(n_classes, targeted)?;
    let rows = logits.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let (mut plus, mut minus) = (Vec::with_capacity(batch), Vec::with_capacity(batch));
    // For DLR: π1, π3 and (targeted) π4 of every row.
    let mut ranks: [Vec<u32>; 3] = Default::default();
    for (row, &y) in rows.iter().zip(&labels) {
        if y as usize >= n_classes {
            bail!("expected labels below {n_classes}, got {y}")
        }
        let other = arg_max_except(row, y as usize) as u32;
        let (p, m) = if targeted { (y, other) } else { (other, y) };
        plus.push(p);
        minus.push(m);
        if loss == AttackLoss::Dlr {
            let order = sorted_desc(row);
            for (slot, rank) in ranks.iter_mut().zip([0, 2, 3]) {
                // π4 exists whenever it is used (targeted, checked above).
                slot.push(order.get(rank).copied().unwrap_or(order[0]) as u32);
            }
        }
    }
    let pick = |ids: &[u32]| -> Result<Tensor> {
        let ids = Tensor::from_vec(ids.to_vec(), (batch, 1), logits.device())?;
        logits.gather(&ids, 1)?.squeeze(1)
    };
    let mut value = pick(&plus)?.sub(&pick(&minus)?)?;
    if loss == AttackLoss::Dlr {
        let [first, third, fourth] = &ranks;
        let low = if targeted {
            pick(third)?.add(&pick(fourth)?)?.affine(0.5, 0.0)?
        } else {
            pick(third)?
        };
        let spread = pick(first)?.sub(&low)?.affine(1.0, DLR_EPS)?;
        value = value.div(&spread)?;
    }
    let grads = value.sum_all()?.backward()?;
    // No gradient at all means the logits do not depend on the input (a constant model).
    let grad = match grads.get(leaf.as_tensor()) {
        Some(g) => g.detach(),
        None => xs.detach().zeros_like()?,
    };
    Ok(Objective {
        value: value.detach(),
        logits: logits.detach(),
        grad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{inputs, next_class, small_maxout, wide_maxout, LinearModel};
    use candle_core::Device;

    #[test]
    fn margin_gradient_of_a_linear_model_is_a_weight_difference() -> Result<()> {
        // logits = W x, W = [[1, −2, 0.5], [−1, 1, 0.5], [0, 0, 3]]; at x = (0.5, 0.5, 0.5) the
        // logits are (−0.25, 0.25, 1.5). Label 0: the best other class is 2, so the margin is
        // 1.75 with gradient W₂ − W₀ = (−1, 2, 2.5). Targeted at 1: z₁ − z₂ = −1.25, gradient
        // W₁ − W₂ = (−1, 1, −2.5).
        let model = LinearModel::new(&[[1.0, -2.0, 0.5], [-1.0, 1.0, 0.5], [0.0, 0.0, 3.0]])?;
        let xs = Tensor::new(&[[0.5f32, 0.5, 0.5]], &Device::Cpu)?;
        let labels = Tensor::new(&[0u32], &Device::Cpu)?;
        let targets = Tensor::new(&[1u32], &Device::Cpu)?;
        let un = AttackLoss::Margin.value_and_input_grad(
            &model,
            &xs,
            &Goal::Untargeted { labels: &labels },
        )?;
        assert_eq!(un.value.to_vec1::<f32>()?, [1.75]);
        assert_eq!(un.grad.to_vec2::<f32>()?, [[-1.0, 2.0, 2.5]]);
        let ta = AttackLoss::Margin.value_and_input_grad(
            &model,
            &xs,
            &Goal::Targeted { targets: &targets },
        )?;
        assert_eq!(ta.value.to_vec1::<f32>()?, [-1.25]);
        assert_eq!(ta.grad.to_vec2::<f32>()?, [[-1.0, 1.0, -2.5]]);
        // The f64 bookkeeping values agree with the autograd ones.
        let rows = un.logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        assert_eq!(AttackLoss::Margin.values(&rows, &[0], false), [1.75]);
        assert_eq!(AttackLoss::Margin.values(&rows, &[1], true), [-1.25]);
        Ok(())
    }

    #[test]
    fn margin_and_dlr_gradients_match_finite_differences() -> Result<()> {
        // The Maxout MLP is piecewise linear, so for the margin central differences with a
        // step far below the distance to the next kink are exact up to f32 rounding of the
        // logits (~1e-7 / h); DLR is a smooth ratio of such differences, off by O(h²) more.
        // Targeted DLR needs 4 classes: the 5-class model with targets y + 1 mod 5. The step is
        // small because two of its lower logits lie 6e-4 apart, and swapping π4 and π5 is a
        // kink of the targeted DLR.
        let three = small_maxout()?;
        let five = wide_maxout()?;
        let (xs, labels) = inputs(4, 3)?;
        let next3 = next_class(&labels)?;
        let next5 = Tensor::from_vec(
            labels
                .to_vec1::<u32>()?
                .iter()
                .map(|y| (y + 1) % 5)
                .collect::<Vec<_>>(),
            4,
            &Device::Cpu,
        )?;
        let h = 2.5e-4f32;
        let cases: [(AttackLoss, &dyn Classifier, Goal<'_>); 4] = [
            (
                AttackLoss::Margin,
                three.as_ref(),
                Goal::Untargeted { labels: &labels },
            ),
            (
                AttackLoss::Margin,
                three.as_ref(),
                Goal::Targeted { targets: &next3 },
            ),
            (
                AttackLoss::Dlr,
                three.as_ref(),
                Goal::Untargeted { labels: &labels },
            ),
            (
                AttackLoss::Dlr,
                five.as_ref(),
                Goal::Targeted { targets: &next5 },
            ),
        ];
        for (loss, model, goal) in cases {
            let res = loss.value_and_input_grad(model, &xs, &goal)?;
            let grad = res.grad.flatten_from(1)?.to_vec2::<f32>()?;
            let flat = xs.flatten_from(1)?.to_vec2::<f32>()?;
            let ids = goal.labels().to_vec1::<u32>()?;
            let targeted = matches!(goal, Goal::Targeted { .. });
            // The f64 bookkeeping values agree with the autograd ones.
            let rows = res.logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            for (a, b) in loss
                .values(&rows, &ids, targeted)
                .iter()
                .zip(res.value.to_vec1::<f32>()?)
            {
                assert!(
                    (a - b as f64).abs() < 1e-5 * a.abs().max(1.0),
                    "{loss:?}: {a} vs {b}"
                );
            }
            let value_at = |row: &[f32], i: usize| -> Result<f64> {
                let x = Tensor::new(row, &Device::Cpu)?.reshape((1, 1, 4, 4))?;
                let logits = model
                    .forward(&x, Mode::Eval)?
                    .to_dtype(DType::F64)?
                    .to_vec2::<f64>()?;
                Ok(loss.values(&logits, &ids[i..=i], targeted)[0])
            };
            for (i, row) in flat.iter().enumerate() {
                for j in 0..row.len() {
                    let (mut up, mut down) = (row.clone(), row.clone());
                    up[j] += h;
                    down[j] -= h;
                    let fd = (value_at(&up, i)? - value_at(&down, i)?) / (2.0 * h as f64);
                    let g = grad[i][j] as f64;
                    assert!(
                        (fd - g).abs() <= 2e-3 * g.abs().max(1.0),
                        "{loss:?} {goal:?} example {i} pixel {j}: autograd {g}, finite difference {fd}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn dlr_is_scale_free_and_checks_its_classes() -> Result<()> {
        use crate::testing::Saturated;
        // −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3): logits (3, 1, 0, −2), label 0: −2/3; label
        // 1: −(1 − 3)/3 = 2/3. Targeted at 3 (label 0 on top): (−2 − 3)/(3 − (0 − 2)/2) = −5/4.
        let rows = vec![vec![3.0, 1.0, 0.0, -2.0]];
        let dlr = |label, targeted| AttackLoss::Dlr.values(&rows, &[label], targeted)[0];
        assert!((dlr(0, false) + 2.0 / 3.0).abs() < 1e-12);
        assert!((dlr(1, false) - 2.0 / 3.0).abs() < 1e-12);
        assert!((dlr(3, true) + 1.25).abs() < 1e-12);
        // Logits × 1e4 leave DLR and its gradient as they were; the margin scales.
        let (xs, labels) = inputs(5, 8)?;
        let goal = Goal::Untargeted { labels: &labels };
        let plain = AttackLoss::Dlr.value_and_input_grad(small_maxout()?.as_ref(), &xs, &goal)?;
        let scaled = AttackLoss::Dlr.value_and_input_grad(
            &Saturated::new(small_maxout()?, 1e4),
            &xs,
            &goal,
        )?;
        let (a, b) = (
            plain.value.to_vec1::<f32>()?,
            scaled.value.to_vec1::<f32>()?,
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
        let diff = plain
            .grad
            .sub(&scaled.grad)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let size = plain.grad.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= 1e-2 * size,
            "gradient moved by {diff} (size {size})"
        );
        let targets = next_class(&labels)?;
        let err = AttackLoss::Dlr
            .value_and_input_grad(
                small_maxout()?.as_ref(),
                &xs,
                &Goal::Targeted { targets: &targets },
            )
            .expect_err("3 classes")
            .to_string();
        assert!(
            err.contains("the targeted DLR loss needs at least 4 classes, got 3"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn cross_entropy_values_match_the_model_loss_and_success_is_the_margin_sign() -> Result<()> {
        let model = small_maxout()?;
        let (xs, labels) = inputs(6, 4)?;
        let goal = Goal::Untargeted { labels: &labels };
        let res = AttackLoss::CrossEntropy.value_and_input_grad(model.as_ref(), &xs, &goal)?;
        let rows = res.logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let ids = labels.to_vec1::<u32>()?;
        let ce = AttackLoss::CrossEntropy.values(&rows, &ids, false);
        for (a, b) in ce.iter().zip(res.value.to_vec1::<f32>()?) {
            assert!((a - b as f64).abs() < 1e-5, "{a} vs {b}");
        }
        let margin = AttackLoss::Margin.values(&rows, &ids, false);
        for ((row, &y), m) in rows.iter().zip(&ids).zip(margin) {
            assert_eq!(succeeded(row, y, false), m > 0.0, "{row:?} label {y}");
        }
        let short = labels.narrow(0, 0, 2)?;
        let err = AttackLoss::Margin
            .value_and_input_grad(model.as_ref(), &xs, &Goal::Untargeted { labels: &short })
            .expect_err("label count mismatch")
            .to_string();
        assert!(
            err.contains("expected one label per example (6), got 2"),
            "{err}"
        );
        Ok(())
    }
}
