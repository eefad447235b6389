//! [`FastGradient`]: one step of size ε along the steepest-ascent direction of any Lp norm.

use candle_core::{Result, Tensor};
use gauntlet_models::Classifier;

use crate::{Attack, AttackKind, Goal, Norm, Pgd};

/// The fast gradient method in any Lp ball: `x_adv = x + r*`, with `r*` the steepest-ascent
/// perturbation of the loss's input gradient ([`Norm::steepest`]).
///
/// **Papers**: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
/// Examples", ICLR 2015, <https://arxiv.org/abs/1412.6572> (p = ∞: FGSM, `x + ε·sign(∇ₓL)`);
/// general p by the Hölder closed form of Lyu, Huang & Liang, "A Unified Gradient
/// Regularization Family for Adversarial Examples", ICDM 2015,
/// <https://arxiv.org/abs/1511.06385> (p = 2 is the "fast gradient method", `ε·g/‖g‖₂`).
///
/// **Threat model**: white-box (needs `∇ₓL`, computed in eval mode), untargeted or targeted
/// ([`Goal`]); `‖x_adv − x‖_p ≤ ε` per example, and `x_adv ∈ [0, 1]` when clipping (clipping
/// only shrinks each coordinate's change, so the bound still holds for `x ∈ [0, 1]`).
///
/// **Parameters**:
/// - `norm`: the Lp ball (no default; [`FastGradient::fgsm`] is L∞);
/// - `clip`: clip the result to `[0, 1]` (default `true`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FastGradient {
    pub norm: Norm,
    pub clip: bool,
}

impl FastGradient {
    /// The fast gradient method in `norm`, clipping to `[0, 1]`.
    pub fn new(norm: Norm) -> Self {
        Self { norm, clip: true }
    }

    /// Goodfellow et al.'s fast gradient sign method (L∞), clipping to `[0, 1]`.
    pub fn fgsm() -> Self {
        Self::new(Norm::Linf)
    }
}

impl Attack for FastGradient {
    fn name(&self) -> String {
        format!("fast-gradient-{}", self.norm.name())
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::SingleStep
    }

    /// PGD with one step of length ε from the clean input ([`Pgd::fast_gradient`]), as
    /// foolbox builds it: one forward and one backward pass.
    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        let pgd = Pgd {
            clip: self.clip,
            ..Pgd::fast_gradient(self.norm)
        };
        pgd.perturb(model, xs, goal, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{small_maxout, LinearModel};
    use candle_core::{Device, D};
    use gauntlet_models::Mode;

    fn probs(model: &dyn Classifier, xs: &Tensor) -> Vec<Vec<f32>> {
        let logits = model.forward(xs, Mode::Eval).unwrap();
        let exp = logits
            .broadcast_sub(&logits.max_keepdim(D::Minus1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    }

    /// The closed form r* for direction `d`, computed independently in f64 (paper.md §1.3).
    fn closed_form(d: &[f64], p: f64, eps: f64) -> Vec<f64> {
        // f64::signum(0.0) is 1; the closed form needs sign(0) = 0.
        let sign = |x: f64| if x == 0.0 { 0.0 } else { x.signum() };
        let max = d.iter().fold(0f64, |m, x| m.max(x.abs()));
        if p.is_infinite() {
            return d.iter().map(|&x| eps * sign(x)).collect();
        }
        if p == 1.0 {
            return d
                .iter()
                .map(|&x| if x.abs() == max { eps * sign(x) } else { 0.0 })
                .collect();
        }
        let q = p / (p - 1.0);
        let len = d
            .iter()
            .map(|x| x.abs().powf(q))
            .sum::<f64>()
            .powf((q - 1.0) / q);
        d.iter()
            .map(|&x| eps * sign(x) * x.abs().powf(q - 1.0) / len)
            .collect()
    }

    #[test]
    fn linear_model_gets_its_closed_form() -> Result<()> {
        // logits = W x with W = [[1, −2, 0.5], [−1, 1, 0.5]]. For label 0 the input gradient
        // of the cross-entropy is p₁·(W₁ − W₀) = p₁·(−2, 3, 0), so r* is the closed form of
        // d = (−2, 3, 0) whatever p₁ is; the targeted attack towards class 1 moves the same way.
        let model = LinearModel::new(&[[1.0, -2.0, 0.5], [-1.0, 1.0, 0.5]])?;
        let xs = Tensor::new(&[0.5f32, 0.5, 0.5], &Device::Cpu)?.reshape((1, 1, 1, 3))?;
        let labels = Tensor::new(&[0u32], &Device::Cpu)?;
        let targets = Tensor::new(&[1u32], &Device::Cpu)?;
        for p in [1.0, 1.5, 2.0, 3.0, f64::INFINITY] {
            let attack = FastGradient::new(Norm::new(p)?);
            let want: Vec<f64> = closed_form(&[-2.0, 3.0, 0.0], p, 0.1)
                .iter()
                .map(|r| 0.5 + r)
                .collect();
            for goal in [
                Goal::Untargeted { labels: &labels },
                Goal::Targeted { targets: &targets },
            ] {
                let adv = attack.perturb(&model, &xs, &goal, 0.1)?;
                assert_eq!(adv.dims(), xs.dims());
                let got = adv.flatten_all()?.to_vec1::<f32>()?;
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-6,
                        "p {p} {goal:?}: got {got:?}, want {want:?}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn clipping_keeps_pixels_in_the_unit_box_and_eps_zero_is_identity() -> Result<()> {
        let model = LinearModel::new(&[[1.0, -2.0, 0.5], [-1.0, 1.0, 0.5]])?;
        // FGSM moves by 0.1 · (−1, 1, 0) from (0, 1, 0.5).
        let xs = Tensor::new(&[[0f32, 1.0, 0.5]], &Device::Cpu)?;
        let labels = Tensor::new(&[0u32], &Device::Cpu)?;
        let goal = Goal::Untargeted { labels: &labels };
        let clipped = FastGradient::fgsm().perturb(&model, &xs, &goal, 0.1)?;
        assert_eq!(clipped.to_vec2::<f32>()?, [[0.0, 1.0, 0.5]]);
        let free = FastGradient {
            clip: false,
            ..FastGradient::fgsm()
        }
        .perturb(&model, &xs, &goal, 0.1)?;
        assert_eq!(free.to_vec2::<f32>()?, [[-0.1, 1.1, 0.5]]);
        let same = FastGradient::new(Norm::L2).perturb(&model, &xs, &goal, 0.0)?;
        assert_eq!(same.to_vec2::<f32>()?, xs.to_vec2::<f32>()?);
        let bad = Tensor::new(&[0u32, 1], &Device::Cpu)?;
        let err =
            FastGradient::fgsm().perturb(&model, &xs, &Goal::Untargeted { labels: &bad }, 0.1);
        assert!(err
            .expect_err("label count mismatch")
            .to_string()
            .contains("expected one label per example"));
        Ok(())
    }

    #[test]
    fn loss_rises_by_eps_times_dual_norm_to_first_order() -> Result<()> {
        // L(x + r*) − L(x) = ε‖g‖_q + O(ε²): with ε = 1e-3 the ratio is within 1% (measured: 0.1%).
        let model = small_maxout()?;
        let (xs, labels) = crate::testing::inputs(4, 1)?;
        let clean = model.loss_and_input_grad(&xs, &labels, Mode::Eval)?;
        let eps = 1e-3;
        for p in [1.0, 1.5, 2.0, 3.0, f64::INFINITY] {
            let norm = Norm::new(p)?;
            let attack = FastGradient { norm, clip: false };
            let adv = attack.perturb(
                model.as_ref(),
                &xs,
                &Goal::Untargeted { labels: &labels },
                eps,
            )?;
            let after = model
                .loss_and_input_grad(&adv, &labels, Mode::Eval)?
                .loss
                .to_vec1::<f32>()?;
            let before = clean.loss.to_vec1::<f32>()?;
            let predicted = norm
                .dual()
                .norm(&clean.grad)?
                .affine(eps, 0.0)?
                .to_vec1::<f32>()?;
            for i in 0..before.len() {
                let rise = (after[i] - before[i]) as f64;
                let ratio = rise / predicted[i] as f64;
                assert!(
                    (ratio - 1.0).abs() < 0.01,
                    "p {p} example {i}: rise {rise}, predicted {}",
                    predicted[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn targeted_fgsm_raises_the_target_probability() -> Result<()> {
        let model = small_maxout()?;
        let (xs, labels) = crate::testing::inputs(6, 2)?;
        // Each example is pushed towards the next class.
        let target_ids: Vec<u32> = labels
            .to_vec1::<u32>()?
            .iter()
            .map(|l| (l + 1) % 3)
            .collect();
        let targets = Tensor::new(target_ids.as_slice(), &Device::Cpu)?;
        let before = probs(model.as_ref(), &xs);
        for norm in [Norm::Linf, Norm::L2, Norm::L1] {
            let adv = FastGradient::new(norm).perturb(
                model.as_ref(),
                &xs,
                &Goal::Targeted { targets: &targets },
                0.05,
            )?;
            let after = probs(model.as_ref(), &adv);
            for (i, &t) in target_ids.iter().enumerate() {
                let (b, a) = (before[i][t as usize], after[i][t as usize]);
                assert!(a > b, "{norm}: example {i} target {t}: {b} -> {a}");
            }
        }
        assert_eq!(FastGradient::fgsm().name(), "fast-gradient-linf");
        assert_eq!(FastGradient::new(Norm::Lp(1.5)).norm(), Norm::Lp(1.5));
        Ok(())
    }
}
