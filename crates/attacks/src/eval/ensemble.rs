//! The per-example worst case over several attacks: [`evaluate_ensemble`] and [`Ensemble`].

use candle_core::{bail, Result, Tensor};
use gauntlet_models::Classifier;

use super::sweep::{evaluate, run_in_turn};
use super::*;
use crate::norm::check_eps;
use crate::{Attack, AttackKind, Goal, Norm};

/// The per-example worst case over `attacks` at every ε of `eps_list`: an example is robust
/// only if it is classified correctly clean and every attack failed on it (DESIGN.md
/// decision 5).
///
/// Following AutoAttack (Croce & Hein 2020, <https://arxiv.org/abs/2003.01690>), the first
/// attack runs on every example and each later one only on the examples still robust, so the
/// ensemble costs little more than its first member on a weak model. An example keeps the
/// output of the attack that broke it, or of the last attack when none did; perturbation sizes
/// and confidences are measured on that output. The record is named `"ensemble(a+b+…)"` after
/// the members' names, with [`AttackKind::Ensemble`]; [`AttackRecord::members`] counts the
/// examples each member broke. [`Ensemble`] is the same worst case as an [`Attack`] with a
/// name of its own.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
///
/// # Errors
/// As [`evaluate_attack`], and on an empty list or members with different norms (the record
/// measures one threat model).
pub fn evaluate_ensemble(
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
) -> Result<Vec<Timed<AttackRecord>>> {
    let names: Vec<String> = attacks.iter().map(|a| a.name()).collect();
    let name = format!("ensemble({})", names.join("+"));
    let (records, _, _) = evaluate(
        model,
        attacks,
        name,
        AttackKind::Ensemble,
        images,
        labels,
        eps_list,
        batch_size,
        false,
    )?;
    Ok(records)
}

/// The norm shared by `attacks`.
///
/// # Errors
/// On an empty list or members with different norms (a record measures one threat model).
pub(super) fn common_norm(attacks: &[&dyn Attack]) -> Result<Norm> {
    match attacks {
        [] => bail!("expected at least one attack, got none"),
        [first, rest @ ..] => {
            if let Some(other) = rest.iter().find(|a| a.norm() != first.norm()) {
                bail!(
                    "expected attacks sharing one norm, got {} ({}) and {} ({})",
                    first.name(),
                    first.norm(),
                    other.name(),
                    other.norm()
                )
            }
            Ok(first.norm())
        }
    }
}

/// The per-example worst case over several attacks of one norm, as an [`Attack`] of its own
/// ([`AttackKind::Ensemble`]): the first member runs on every example, each later one on the
/// examples the earlier ones did not break (misclassified when untargeted, classified as the
/// target when targeted); an example keeps the output of the member that broke it, or of the
/// last member when none did. [`crate::evaluate_attack_detailed`] runs the members one by one
/// ([`Attack::members`]) and records which one broke each example.
///
/// This is the composition of AutoAttack (Croce & Hein 2020,
/// <https://arxiv.org/abs/2003.01690>); [`crate::AutoAttack`] builds its standard members.
pub struct Ensemble {
    name: String,
    norm: Norm,
    members: Vec<Box<dyn Attack>>,
}

impl Ensemble {
    /// An ensemble called `name` running `members` in order.
    ///
    /// # Errors
    /// On an empty list or members with different norms.
    pub fn new(name: impl Into<String>, members: Vec<Box<dyn Attack>>) -> Result<Self> {
        let refs: Vec<&dyn Attack> = members.iter().map(|m| m.as_ref()).collect();
        let norm = common_norm(&refs)?;
        Ok(Self {
            name: name.into(),
            norm,
            members,
        })
    }
}

impl Attack for Ensemble {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::Ensemble
    }

    fn members(&self) -> Vec<&dyn Attack> {
        self.members.iter().map(|m| m.as_ref()).collect()
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        check_eps(eps)?;
        let ids = goal.checked_ids(xs.dim(0)?, model.n_classes())?;
        let targeted = matches!(goal, Goal::Targeted { .. });
        let res = run_in_turn(model, model, &self.members(), xs, goal, eps, |i, pred| {
            (pred == ids[i]) != targeted
        })?;
        Ok(res.adv)
    }
}
