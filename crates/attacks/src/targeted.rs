//! [`Targeted`]: any attack turned targeted, its targets chosen by a [`TargetSelection`], so a
//! targeted attack can be evaluated (robust accuracy: still classified as the true label) like
//! any other.

use candle_core::{DType, Result, Tensor};
use gauntlet_models::Classifier;

use crate::batch::{check_output_shape, replace_rows, select_rows};
use crate::{Attack, AttackKind, Goal, Norm, TargetSelection};

/// `attack` aimed at targets from `selection`.
///
/// Given an untargeted goal (the true labels), it picks one target per example
/// ([`TargetSelection::targets`]) and runs `attack` with [`Goal::Targeted`]. Examples whose
/// target is their own label (only [`TargetSelection::Class`] gives those) are returned
/// unchanged: moving an image to its own class is no attack, so under evaluation they count
/// as robust when classified correctly. A goal that is already targeted goes to `attack` as it
/// is.
///
/// The name is the inner attack's with `-targeted-<selection>` appended
/// (`pgd-linf-targeted-least-likely`) and the norm is the inner attack's. The kind is
/// [`AttackKind::Other`]: a targeted attack is weaker than an untargeted one by design, so the
/// masking checks must not compare it with untargeted attacks as if it were one of them.
pub struct Targeted {
    pub attack: Box<dyn Attack>,
    pub selection: TargetSelection,
}

impl Targeted {
    pub fn new(attack: Box<dyn Attack>, selection: TargetSelection) -> Self {
        Self { attack, selection }
    }
}

impl Attack for Targeted {
    fn name(&self) -> String {
        format!("{}-targeted-{}", self.attack.name(), self.selection.name())
    }

    fn norm(&self) -> Norm {
        self.attack.norm()
    }

    fn kind(&self) -> AttackKind {
        AttackKind::Other
    }

    fn targets(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        labels: &Tensor,
    ) -> Result<Option<Tensor>> {
        self.selection.targets(model, xs, labels).map(Some)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        let labels = match goal {
            Goal::Targeted { .. } => return self.attack.perturb(model, xs, goal, eps),
            Goal::Untargeted { labels } => *labels,
        };
        let targets = self.selection.targets(model, xs, labels)?;
        let ids = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let target_ids = targets.to_vec1::<u32>()?;
        let rows: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i] != target_ids[i])
            .collect();
        if rows.is_empty() {
            return Ok(xs.detach());
        }
        let sub_xs = select_rows(xs, &rows)?;
        let sub_targets = select_rows(&targets, &rows)?;
        let out = self.attack.perturb(
            model,
            &sub_xs,
            &Goal::Targeted {
                targets: &sub_targets,
            },
            eps,
        )?;
        check_output_shape(&self.attack.name(), &out, &sub_xs)?;
        replace_rows(&xs.detach(), &rows, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, inputs};
    use crate::{evaluate_attack, FastGradient, Pgd};
    use gauntlet_models::Mode;

    #[test]
    fn targets_are_reached_and_own_class_examples_stay_clean() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, _) = inputs(30, 21)?;
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        let attack = Targeted::new(
            Box::new(Pgd {
                steps: 20,
                ..Pgd::new(Norm::Linf)
            }),
            TargetSelection::Class(1),
        );
        assert_eq!(attack.name(), "pgd-linf-targeted-class-1");
        assert_eq!(attack.kind(), AttackKind::Other);
        let adv = attack.perturb(
            model.as_ref(),
            &xs,
            &Goal::Untargeted { labels: &labels },
            0.5,
        )?;
        let preds = model
            .forward(&adv, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        let ids = labels.to_vec1::<u32>()?;
        let (x0, out) = (
            xs.flatten_from(1)?.to_vec2::<f32>()?,
            adv.flatten_from(1)?.to_vec2::<f32>()?,
        );
        let mut own = 0;
        for i in 0..ids.len() {
            if ids[i] == 1 {
                own += 1;
                assert_eq!(out[i], x0[i], "example {i} of the target class moved");
            } else {
                assert_eq!(
                    preds[i], 1,
                    "example {i} (label {}) missed its target",
                    ids[i]
                );
            }
        }
        assert!(own > 0 && own < ids.len(), "{own} examples of class 1");
        // Targeted at ε 0.5 is weaker than untargeted only on the class-1 examples.
        let records = evaluate_attack(model.as_ref(), &attack, &xs, &labels, &[0.5], 16)?;
        assert_eq!(records[0].adversarial_correct, own);
        // Every example aimed elsewhere reached its target, and the record says so.
        let aimed = ids.len() - own;
        assert_eq!(
            (records[0].targeted_n, records[0].target_reached),
            (Some(aimed), Some(aimed))
        );
        let bad = Targeted::new(Box::new(FastGradient::fgsm()), TargetSelection::Class(7));
        let err = bad
            .perturb(
                model.as_ref(),
                &xs,
                &Goal::Untargeted { labels: &labels },
                0.1,
            )
            .expect_err("class out of range")
            .to_string();
        assert!(
            err.contains("expected a target class below 3, got 7"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn targeted_success_is_counted_from_the_outcomes_and_absent_when_untargeted() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, labels) = inputs(40, 5)?;
        // FGSM at a small ε reaches only some targets: the count must match the outcomes.
        let attack = Targeted::new(
            Box::new(FastGradient::fgsm()),
            TargetSelection::Random { seed: 3 },
        );
        let (records, outcomes) = crate::evaluate_attack_detailed(
            model.as_ref(),
            &attack,
            &xs,
            &labels,
            &[0.05, 0.3],
            16,
        )?;
        for (k, r) in records.iter().enumerate() {
            let mine = &outcomes[k * 40..(k + 1) * 40];
            // Random targets are never the label, so every example is aimed elsewhere.
            assert!(mine.iter().all(|o| o.target.is_some_and(|t| t != o.label)));
            let reached = mine.iter().filter(|o| o.target == Some(o.adv_pred)).count();
            assert_eq!(
                (r.targeted_n, r.target_reached),
                (Some(40), Some(reached)),
                "eps {}",
                r.eps
            );
        }
        assert!(records[1].target_reached > Some(0), "{records:?}");
        let plain = evaluate_attack(
            model.as_ref(),
            &FastGradient::fgsm(),
            &xs,
            &labels,
            &[0.1],
            16,
        )?;
        assert_eq!((plain[0].targeted_n, plain[0].target_reached), (None, None));
        let json = serde_json::to_string(&plain[0]).unwrap();
        assert!(!json.contains("target"), "{json}");
        Ok(())
    }
}
