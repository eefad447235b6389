//! [`AutoAttack`]: the standard parameter-free ensemble (APGD-CE, APGD-T, Square) as an
//! [`Ensemble`], and its "rand" version for randomized models.

use serde::{Deserialize, Serialize};

use crate::{Apgd, Attack, AttackLoss, ConfigError, Ensemble, Fab, Norm, Square};

/// Which members [`AutoAttack`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoVersion {
    /// APGD-CE, APGD-T (targeted DLR over the top classes), FAB-T, Square; Square only for L∞
    /// and L2.
    #[default]
    Standard,
    /// For randomized models: APGD-CE and APGD-DLR (untargeted), each gradient averaged over
    /// `eot_draws` evaluations.
    Rand,
}

/// An evaluation as strong as AutoAttack: its members run in turn, each on the examples the
/// earlier ones left robust, and an example is robust only if all of them failed
/// ([`Ensemble`]; evaluation records which member broke each example).
///
/// **Paper**: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
/// diverse parameter-free attacks", ICML 2020, <https://arxiv.org/abs/2003.01690>, with the
/// settings of `autoattack/autoattack.py` (github.com/fra31/auto-attack):
///
/// - [`AutoVersion::Standard`]: APGD-CE (100 steps, 1 run), APGD-T (targeted DLR, 100 steps,
///   1 run for each of the 9 most likely wrong classes), FAB-T ([`Fab`] with 9 target classes,
///   100 steps each; its minimal example kept where it lies within ε), Square (5000
///   queries, `p_init` 0.8): AutoAttack's four. `fab_t = false` leaves FAB-T out (the
///   three-member ensemble of earlier versions). L1 runs the APGD members and FAB-T, other
///   `p` the APGD members only (Square exists for L∞ and L2, FAB for L1, L2, L∞;
///   AutoAttack's L1 APGD also shrinks ε on a schedule, which [`Apgd`] does not, see there).
/// - [`AutoVersion::Rand`]: APGD-CE and APGD-DLR, 1 run each, every gradient the mean of 20
///   evaluations (Expectation over Transformation), for a model whose predictions are random,
///   such as [`crate::Randomized`] (dropout kept on). On a deterministic model it gives the
///   same points as a single draw, twenty times slower.
///
/// **Parameters** (defaults of [`AutoAttack::new`]): `steps` of each APGD run (100),
/// `target_classes` of APGD-T and FAB-T (9), `n_queries` of Square (5000), `eot_draws` of the
/// rand version (20), `fab_t` (true), `seed` shared by every member (0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AutoAttack {
    pub norm: Norm,
    pub version: AutoVersion,
    pub steps: usize,
    pub target_classes: usize,
    pub n_queries: usize,
    pub eot_draws: usize,
    /// The standard version's FAB-T member (after APGD-T, before Square).
    #[serde(default = "yes")]
    pub fab_t: bool,
    pub seed: u64,
}

fn yes() -> bool {
    true
}

impl AutoAttack {
    /// The standard version in `norm`, with the defaults listed on [`AutoAttack`].
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            version: AutoVersion::Standard,
            steps: 100,
            target_classes: 9,
            n_queries: 5000,
            eot_draws: 20,
            fab_t: true,
            seed: 0,
        }
    }

    /// `"auto-linf"`, or `"auto-rand-linf"` for the rand version.
    pub fn name(&self) -> String {
        match self.version {
            AutoVersion::Standard => format!("auto-{}", self.norm.name()),
            AutoVersion::Rand => format!("auto-rand-{}", self.norm.name()),
        }
    }

    /// The members, in the order they run.
    pub fn members(&self) -> Vec<Box<dyn Attack>> {
        let apgd = Apgd {
            steps: self.steps,
            seed: self.seed,
            ..Apgd::new(self.norm)
        };
        match self.version {
            AutoVersion::Standard => {
                let mut members: Vec<Box<dyn Attack>> = vec![
                    Box::new(apgd),
                    Box::new(Apgd {
                        target_classes: Some(self.target_classes),
                        loss: AttackLoss::Dlr,
                        ..apgd
                    }),
                ];
                if self.fab_t && matches!(self.norm, Norm::Linf | Norm::L2 | Norm::L1) {
                    members.push(Box::new(Fab {
                        steps: self.steps,
                        target_classes: Some(self.target_classes),
                        ..Fab::new(self.norm)
                    }));
                }
                if matches!(self.norm, Norm::Linf | Norm::L2) {
                    members.push(Box::new(Square {
                        n_queries: self.n_queries,
                        seed: self.seed,
                        ..Square::new(self.norm)
                    }));
                }
                members
            }
            AutoVersion::Rand => {
                let eot = Apgd {
                    eot_draws: self.eot_draws,
                    ..apgd
                };
                vec![
                    Box::new(eot),
                    Box::new(Apgd {
                        loss: AttackLoss::Dlr,
                        ..eot
                    }),
                ]
            }
        }
    }

    /// The settings' preconditions, by key ([`crate::AttackConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        ConfigError::at_least_one("steps", self.steps)?;
        ConfigError::at_least_one("target-classes", self.target_classes)?;
        ConfigError::at_least_one("n-queries", self.n_queries)?;
        ConfigError::at_least_one("eot-draws", self.eot_draws)
    }

    /// The ensemble to run, named [`AutoAttack::name`].
    pub fn ensemble(&self) -> Ensemble {
        Ensemble::new(self.name(), self.members())
            .expect("AutoAttack's members are never empty and share its norm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, inputs, wide_maxout};
    use crate::{evaluate_attack, evaluate_attack_detailed, AttackKind, Pgd};
    use candle_core::Result;
    use gauntlet_models::Mode;

    #[test]
    fn members_follow_the_version_and_the_norm() {
        let names =
            |auto: AutoAttack| -> Vec<String> { auto.members().iter().map(|m| m.name()).collect() };
        assert_eq!(
            names(AutoAttack::new(Norm::Linf)),
            [
                "apgd-ce-linf",
                "apgd-t-dlr-linf",
                "fab-t-linf",
                "square-linf"
            ]
        );
        let three = AutoAttack {
            fab_t: false,
            ..AutoAttack::new(Norm::Linf)
        };
        assert_eq!(
            names(three),
            ["apgd-ce-linf", "apgd-t-dlr-linf", "square-linf"]
        );
        assert_eq!(
            names(AutoAttack::new(Norm::L1)),
            ["apgd-ce-l1", "apgd-t-dlr-l1", "fab-t-l1"]
        );
        assert_eq!(
            names(AutoAttack::new(Norm::Lp(3.0))),
            ["apgd-ce-l3", "apgd-t-dlr-l3"]
        );
        let rand = AutoAttack {
            version: AutoVersion::Rand,
            ..AutoAttack::new(Norm::L2)
        };
        assert_eq!(names(rand), ["apgd-ce-l2", "apgd-dlr-l2"]);
        assert_eq!(rand.name(), "auto-rand-l2");
        let e = AutoAttack::new(Norm::Linf).ensemble();
        assert_eq!(
            (e.name(), e.kind(), e.norm()),
            ("auto-linf".to_string(), AttackKind::Ensemble, Norm::Linf)
        );
    }

    #[test]
    fn auto_is_the_worst_case_and_names_who_broke_each_example() -> Result<()> {
        let model = wide_maxout()?;
        let (xs, _) = inputs(40, 41)?;
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        let auto = AutoAttack {
            steps: 20,
            target_classes: 3,
            n_queries: 100,
            ..AutoAttack::new(Norm::Linf)
        }
        .ensemble();
        let eps = [0.02, 0.05];
        let (records, outcomes) =
            evaluate_attack_detailed(model.as_ref(), &auto, &xs, &labels, &eps, 16)?;
        let pgd = Pgd {
            steps: 20,
            ..Pgd::new(Norm::Linf)
        };
        let pgd_records = evaluate_attack(model.as_ref(), &pgd, &xs, &labels, &eps, 16)?;
        for (r, p) in records.iter().zip(&pgd_records) {
            assert_eq!(
                (r.method.as_str(), r.kind),
                ("auto-linf", AttackKind::Ensemble)
            );
            assert!(
                r.adversarial_correct <= p.adversarial_correct,
                "eps {}: auto {} vs pgd {}",
                r.eps,
                r.adversarial_correct,
                p.adversarial_correct
            );
            let names: Vec<&str> = r.members.iter().map(|m| m.attack.as_str()).collect();
            assert_eq!(
                names,
                [
                    "apgd-ce-linf",
                    "apgd-t-dlr-linf",
                    "fab-t-linf",
                    "square-linf"
                ]
            );
            let broken: usize = r.members.iter().map(|m| m.broken).sum();
            assert_eq!(broken, r.clean_correct - r.adversarial_correct);
            assert!(r.max_perturbation <= r.eps * (1.0 + 1e-5));
        }
        assert!(records[1].adversarial_correct < records[0].adversarial_correct);
        assert!(records[1].adversarial_correct < 40, "{:?}", records[1]);
        for o in &outcomes {
            let broken = o.clean_pred == o.label && !o.robust;
            assert_eq!(broken, o.broken_by.is_some(), "{o:?}");
        }
        Ok(())
    }

    #[test]
    fn targeted_dlr_needs_four_classes() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, _) = inputs(4, 1)?;
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        // At ε = 0 APGD-CE breaks nothing, so APGD-T runs and refuses.
        let err = evaluate_attack(
            model.as_ref(),
            &AutoAttack::new(Norm::Linf).ensemble(),
            &xs,
            &labels,
            &[0.0],
            4,
        )
        .expect_err("3 classes")
        .to_string();
        assert!(
            err.contains("the targeted DLR loss needs at least 4 classes, got 3"),
            "{err}"
        );
        Ok(())
    }
}
