//! Gradient-masking checks on evaluation records: the symptoms by which an evaluation that
//! only *looks* robust gives itself away (Athalye, Carlini & Wagner, "Obfuscated Gradients Give
//! a False Sense of Security", ICML 2018, <https://arxiv.org/abs/1802.00420>, §3.1; Carlini et
//! al., "On Evaluating Adversarial Robustness", <https://arxiv.org/abs/1902.06705>).
//!
//! [`masking_checks`] reads [`AttackRecord`]s only — no model — so a report can rerun it on
//! saved results. It compares records of one model on one set of examples; the caller supplies
//! the evaluations each check needs (a single-step and an iterative attack at the same ε, a
//! [`crate::RandomNoise`] evaluation, an evaluation at [`unbounded_eps`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AttackKind, AttackRecord, Norm};

/// The four checks of [`masking_checks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskingCheck {
    /// Accuracy does not rise with ε: the ε-balls are nested, so a working attack can only
    /// do better with a larger budget.
    MonotoneInEps,
    /// An iterative attack is at least as strong as a single-step one at the same ε and norm.
    IterativeBeatsSingleStep,
    /// An iterative attack (or ensemble) at an ε covering the whole `[0, 1]` box takes the
    /// accuracy to about 0: it may move to any image, so only a model constant on the box
    /// survives.
    LargeEpsBreaksModel,
    /// Every gradient attack is at least as strong as random noise of the same norm and ε.
    AttackBeatsNoise,
}

impl MaskingCheck {
    /// Stable identifier, as serialized: `"monotone-in-eps"`, ...
    pub fn name(&self) -> &'static str {
        match self {
            MaskingCheck::MonotoneInEps => "monotone-in-eps",
            MaskingCheck::IterativeBeatsSingleStep => "iterative-beats-single-step",
            MaskingCheck::LargeEpsBreaksModel => "large-eps-breaks-model",
            MaskingCheck::AttackBeatsNoise => "attack-beats-noise",
        }
    }
}

/// The outcome of one check on one attack (or one pair of attacks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskingFlag {
    pub check: MaskingCheck,
    /// The attack checked, or `"a vs b"` for a comparison of two.
    pub attack: String,
    pub norm: Norm,
    /// `false` means the symptom was found: the evaluation may be masked.
    pub passed: bool,
    /// What was compared, with the accuracies and the tolerance.
    pub detail: String,
}

/// Thresholds of [`masking_checks`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MaskingRules {
    /// Values per example (`channels · height · width`), which fixes [`unbounded_eps`].
    pub input_dim: usize,
    /// Accuracy a comparison may be "wrong" by before it counts, as a fraction (0.005, i.e.
    /// half a percentage point); never less than one example, `1/n`.
    pub slack: f64,
    /// The accuracy an attack at [`unbounded_eps`] must stay below (0.1).
    pub large_eps_accuracy: f64,
}

impl MaskingRules {
    /// The default thresholds for inputs of `input_dim` values.
    pub fn new(input_dim: usize) -> Self {
        Self {
            input_dim,
            slack: 0.005,
            large_eps_accuracy: 0.1,
        }
    }

    /// The tolerance for comparing accuracies over `n` examples: `max(slack, 1/n)`.
    fn tolerance(&self, n: usize) -> f64 {
        self.slack.max(1.0 / n.max(1) as f64)
    }

    /// Whether `excess` (a difference of accuracies over `n` examples) is beyond tolerance;
    /// the margin keeps a difference of exactly one example, which rounds either way, within.
    fn beyond(&self, excess: f64, n: usize) -> bool {
        excess > self.tolerance(n) + 1e-9
    }
}

/// The smallest ε whose ball around *any* point of `[0, 1]^input_dim` contains the whole box:
/// the norm of the box's diagonal, `input_dim^(1/p)` (1 for L∞, `√d` for L2, `d` for L1).
pub fn unbounded_eps(norm: Norm, input_dim: usize) -> f64 {
    let p = norm.p();
    if p.is_infinite() {
        1.0
    } else {
        (input_dim as f64).powf(1.0 / p)
    }
}

/// Runs the four gradient-masking checks on `records` (one model, one set of examples) and
/// returns one flag per attack or pair of attacks checked. A check without the records it
/// needs returns no flag, so an empty list means "nothing to compare", not "all clear".
///
/// Records are grouped by attack name and norm. Accuracies are
/// [`AttackRecord::adversarial_accuracy`], and "higher" means higher by more than the tolerance
/// `max(rules.slack, 1/n)`: half a percentage point, but never less than one example, since on
/// the same examples a deterministic attack differs by whole examples and a random start can
/// flip one.
///
/// - [`MaskingCheck::MonotoneInEps`], every attack but random noise: fails when the accuracy at
///   some ε is higher than at a smaller ε.
/// - [`MaskingCheck::IterativeBeatsSingleStep`], every pair of an [`AttackKind::Iterative`] and
///   an [`AttackKind::SingleStep`] attack of the same norm and `n`: fails when the iterative
///   accuracy is higher at some shared ε.
/// - [`MaskingCheck::LargeEpsBreaksModel`], iterative attacks and ensembles with a record at
///   `ε ≥ unbounded_eps(norm, rules.input_dim)`: fails when such a record's accuracy is
///   `rules.large_eps_accuracy` (10%) or more. Single steps are exempt: at that ε one step just
///   jumps to a corner of the box, which proves nothing.
/// - [`MaskingCheck::AttackBeatsNoise`], every pair of an [`AttackKind::Random`] record group
///   and another attack of the same norm and `n`: fails when the attack's accuracy is higher
///   than the noise's at some shared ε.
pub fn masking_checks(records: &[AttackRecord], rules: &MaskingRules) -> Vec<MaskingFlag> {
    // Grouped by (attack, norm) in first-seen order, each group sorted by ε.
    let mut order: Vec<(String, String)> = vec![];
    let mut groups: BTreeMap<(String, String), Vec<&AttackRecord>> = BTreeMap::new();
    for r in records {
        let key = (r.attack.clone(), r.norm.name());
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                vec![]
            })
            .push(r);
    }
    let groups: Vec<Vec<&AttackRecord>> = order
        .iter()
        .map(|key| {
            let mut g = groups[key].clone();
            g.sort_by(|a, b| a.eps.total_cmp(&b.eps));
            g
        })
        .collect();

    let mut flags = vec![];
    for g in &groups {
        if g[0].kind != AttackKind::Random {
            flags.push(monotone(g, rules));
        }
    }
    for iterative in groups.iter().filter(|g| g[0].kind == AttackKind::Iterative) {
        for single in groups
            .iter()
            .filter(|g| g[0].kind == AttackKind::SingleStep)
        {
            if let Some(flag) = compare(
                MaskingCheck::IterativeBeatsSingleStep,
                iterative,
                single,
                rules,
            ) {
                flags.push(flag);
            }
        }
    }
    for g in &groups {
        if matches!(g[0].kind, AttackKind::Iterative | AttackKind::Ensemble) {
            if let Some(flag) = large_eps(g, rules) {
                flags.push(flag);
            }
        }
    }
    for noise in groups.iter().filter(|g| g[0].kind == AttackKind::Random) {
        for attack in groups.iter().filter(|g| g[0].kind != AttackKind::Random) {
            if let Some(flag) = compare(MaskingCheck::AttackBeatsNoise, attack, noise, rules) {
                flags.push(flag);
            }
        }
    }
    flags
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Accuracy non-increasing in ε within the tolerance, for one group sorted by ε.
fn monotone(group: &[&AttackRecord], rules: &MaskingRules) -> MaskingFlag {
    let first = group[0];
    // The worst rise: the largest amount by which some record beats an earlier (smaller-ε) one.
    let mut worst: Option<(f64, &AttackRecord, &AttackRecord)> = None;
    let mut lowest = first;
    for &r in &group[1..] {
        let rise = r.adversarial_accuracy - lowest.adversarial_accuracy;
        if rules.beyond(rise, r.n.min(lowest.n)) && worst.is_none_or(|(w, _, _)| rise > w) {
            worst = Some((rise, lowest, r));
        }
        if r.adversarial_accuracy < lowest.adversarial_accuracy {
            lowest = r;
        }
    }
    let tolerance = rules.tolerance(first.n);
    let detail = match worst {
        Some((_, low, high)) => format!(
            "accuracy rises from {} at eps {} to {} at eps {} (tolerance {})",
            percent(low.adversarial_accuracy),
            low.eps,
            percent(high.adversarial_accuracy),
            high.eps,
            percent(tolerance)
        ),
        None => format!(
            "accuracy non-increasing over {} eps values (tolerance {})",
            group.len(),
            percent(tolerance)
        ),
    };
    MaskingFlag {
        check: MaskingCheck::MonotoneInEps,
        attack: first.attack.clone(),
        norm: first.norm,
        passed: worst.is_none(),
        detail,
    }
}

/// `stronger` must not be more accurate than `weaker` at any shared ε. `None` when the groups
/// differ in norm or `n`, or share no ε.
fn compare(
    check: MaskingCheck,
    stronger: &[&AttackRecord],
    weaker: &[&AttackRecord],
    rules: &MaskingRules,
) -> Option<MaskingFlag> {
    let (s0, w0) = (stronger[0], weaker[0]);
    if s0.norm != w0.norm || s0.n != w0.n {
        return None;
    }
    let tolerance = rules.tolerance(s0.n);
    let mut shared = 0;
    let mut worst: Option<(f64, &AttackRecord, &AttackRecord)> = None;
    for &s in stronger {
        let Some(&w) = weaker.iter().find(|w| same_eps(w.eps, s.eps)) else {
            continue;
        };
        shared += 1;
        let excess = s.adversarial_accuracy - w.adversarial_accuracy;
        if rules.beyond(excess, s0.n) && worst.is_none_or(|(e, _, _)| excess > e) {
            worst = Some((excess, s, w));
        }
    }
    if shared == 0 {
        return None;
    }
    let detail = match worst {
        Some((_, s, w)) => format!(
            "at eps {} {} leaves {} accurate, {} only {} (tolerance {})",
            s.eps,
            s.attack,
            percent(s.adversarial_accuracy),
            w.attack,
            percent(w.adversarial_accuracy),
            percent(tolerance)
        ),
        None => format!(
            "{} at most as accurate as {} at {shared} shared eps values (tolerance {})",
            s0.attack,
            w0.attack,
            percent(tolerance)
        ),
    };
    Some(MaskingFlag {
        check,
        attack: format!("{} vs {}", s0.attack, w0.attack),
        norm: s0.norm,
        passed: worst.is_none(),
        detail,
    })
}

/// Accuracy below the threshold at every ε covering the box; `None` without such a record.
fn large_eps(group: &[&AttackRecord], rules: &MaskingRules) -> Option<MaskingFlag> {
    let first = group[0];
    let unbounded = unbounded_eps(first.norm, rules.input_dim);
    // The caller passes `unbounded_eps` itself, which may have been rounded through a file.
    let large: Vec<&AttackRecord> = group
        .iter()
        .copied()
        .filter(|r| r.eps >= unbounded * (1.0 - 1e-9))
        .collect();
    let worst = large
        .iter()
        .copied()
        .max_by(|a, b| a.adversarial_accuracy.total_cmp(&b.adversarial_accuracy))?;
    let passed = worst.adversarial_accuracy < rules.large_eps_accuracy;
    Some(MaskingFlag {
        check: MaskingCheck::LargeEpsBreaksModel,
        attack: first.attack.clone(),
        norm: first.norm,
        passed,
        detail: format!(
            "accuracy {} at eps {} (the whole box is within eps {unbounded}; expected below {})",
            percent(worst.adversarial_accuracy),
            worst.eps,
            percent(rules.large_eps_accuracy)
        ),
    })
}

fn same_eps(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, Saturated};
    use crate::{evaluate_attack, wilson_interval, FastGradient, Pgd, RandomNoise};
    use candle_core::{Result, Tensor};
    use gauntlet_models::{Classifier, Mode};

    fn record(attack: &str, kind: AttackKind, eps: f64, n: usize, correct: usize) -> AttackRecord {
        let (lo, hi) = wilson_interval(correct, n);
        AttackRecord {
            attack: attack.to_string(),
            kind,
            norm: Norm::Linf,
            eps,
            n,
            clean_correct: n,
            clean_accuracy: 1.0,
            adversarial_correct: correct,
            adversarial_accuracy: correct as f64 / n as f64,
            adversarial_ci_low: lo,
            adversarial_ci_high: hi,
            mean_perturbation: eps,
            max_perturbation: eps,
            mean_linf: eps,
            max_linf: eps,
            mean_l2: eps,
            max_l2: eps,
            mean_l1: eps,
            max_l1: eps,
            mistakes: n - correct,
            mean_confidence_on_mistakes: None,
            seconds: 0.0,
        }
    }

    fn failed(flags: &[MaskingFlag]) -> Vec<(MaskingCheck, &str)> {
        flags
            .iter()
            .filter(|f| !f.passed)
            .map(|f| (f.check, f.attack.as_str()))
            .collect()
    }

    #[test]
    fn unbounded_eps_is_the_norm_of_the_box_diagonal() -> Result<()> {
        assert_eq!(unbounded_eps(Norm::Linf, 784), 1.0);
        assert_eq!(unbounded_eps(Norm::L2, 784), 28.0);
        assert_eq!(unbounded_eps(Norm::L1, 784), 784.0);
        let diagonal = Tensor::ones(
            (1, 1, 4, 4),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        for p in [1.0, 1.5, 2.0, 3.0, f64::INFINITY] {
            let norm = Norm::new(p)?;
            let measured = norm.norm(&diagonal)?.to_vec1::<f32>()?[0] as f64;
            assert!((measured - unbounded_eps(norm, 16)).abs() < 1e-5, "p {p}");
        }
        Ok(())
    }

    #[test]
    fn each_check_fires_on_hand_made_records_beyond_its_tolerance() {
        use AttackKind::*;
        let rules = MaskingRules::new(16);
        // n = 1000: the tolerance is 0.5 pp = 5 examples.
        let healthy = vec![
            record("fgsm", SingleStep, 0.1, 1000, 600),
            record("fgsm", SingleStep, 0.2, 1000, 300),
            record("fgsm", SingleStep, 0.3, 1000, 304), // +0.4 pp: within tolerance
            record("pgd", Iterative, 0.1, 1000, 500),
            record("pgd", Iterative, 0.2, 1000, 200),
            record("pgd", Iterative, 0.3, 1000, 100),
            record("pgd", Iterative, 1.0, 1000, 99),
            record("noise", Random, 0.1, 1000, 950),
            record("noise", Random, 0.2, 1000, 990), // noise is exempt from monotonicity
            record("noise", Random, 0.3, 1000, 700),
        ];
        let flags = masking_checks(&healthy, &rules);
        assert_eq!(failed(&flags), vec![], "{flags:#?}");
        let checks: Vec<MaskingCheck> = flags.iter().map(|f| f.check).collect();
        assert_eq!(
            checks,
            [
                MaskingCheck::MonotoneInEps,
                MaskingCheck::MonotoneInEps,
                MaskingCheck::IterativeBeatsSingleStep,
                MaskingCheck::LargeEpsBreaksModel,
                MaskingCheck::AttackBeatsNoise,
                MaskingCheck::AttackBeatsNoise,
            ]
        );

        let masked = vec![
            record("fgsm", SingleStep, 0.1, 1000, 600),
            record("fgsm", SingleStep, 0.2, 1000, 606), // +0.6 pp
            record("pgd", Iterative, 0.1, 1000, 650),   // worse than fgsm
            record("pgd", Iterative, 0.2, 1000, 600),
            record("pgd", Iterative, 1.0, 1000, 100), // 10%: not below
            record("noise", Random, 0.2, 1000, 590),  // beats both attacks
        ];
        let flags = masking_checks(&masked, &rules);
        assert_eq!(
            failed(&flags),
            [
                (MaskingCheck::MonotoneInEps, "fgsm"),
                (MaskingCheck::IterativeBeatsSingleStep, "pgd vs fgsm"),
                (MaskingCheck::LargeEpsBreaksModel, "pgd"),
                (MaskingCheck::AttackBeatsNoise, "fgsm vs noise"),
                (MaskingCheck::AttackBeatsNoise, "pgd vs noise"),
            ],
            "{flags:#?}"
        );
        let fgsm = &flags[0];
        assert_eq!(
            fgsm.detail,
            "accuracy rises from 60.00% at eps 0.1 to 60.60% at eps 0.2 (tolerance 0.50%)"
        );
        // With n = 20 the tolerance is one example (5 pp): a one-example rise is allowed.
        let small = vec![
            record("fgsm", SingleStep, 0.1, 20, 10),
            record("fgsm", SingleStep, 0.2, 20, 11),
        ];
        assert_eq!(failed(&masking_checks(&small, &rules)), vec![]);
        // Different example sets (n) and norms are never compared; nothing to compare, no flag.
        let apart = vec![
            record("pgd", Iterative, 0.1, 100, 90),
            record("fgsm", SingleStep, 0.1, 200, 10),
            AttackRecord {
                norm: Norm::L2,
                ..record("noise", Random, 0.1, 100, 10)
            },
        ];
        let flags = masking_checks(&apart, &rules);
        assert!(
            flags.iter().all(|f| f.check == MaskingCheck::MonotoneInEps),
            "{flags:#?}"
        );
        let text = serde_json::to_string(&flags[0]).unwrap();
        assert!(text.contains("\"check\":\"monotone-in-eps\""), "{text}");
    }

    /// Records of FGSM, PGD (with a large-ε run) and random noise, all L∞.
    fn evaluate_all(
        model: &dyn Classifier,
        xs: &Tensor,
        labels: &Tensor,
    ) -> Result<Vec<AttackRecord>> {
        let eps = [0.05, 0.1, 0.2];
        let pgd = Pgd {
            steps: 10,
            random_start: false,
            ..Pgd::new(Norm::Linf)
        };
        let mut records = evaluate_attack(model, &FastGradient::fgsm(), xs, labels, &eps, 50)?;
        let mut with_large = eps.to_vec();
        with_large.push(unbounded_eps(Norm::Linf, 16));
        records.extend(evaluate_attack(model, &pgd, xs, labels, &with_large, 50)?);
        records.extend(evaluate_attack(
            model,
            &RandomNoise::new(Norm::Linf),
            xs,
            labels,
            &eps,
            50,
        )?);
        Ok(records)
    }

    #[test]
    fn checks_pass_on_a_small_model_and_fire_on_a_saturated_one() -> Result<()> {
        let model = balanced_maxout()?;
        let (xs, _) = crate::testing::inputs(100, 8)?;
        // Labels are the clean predictions, so every example starts correct.
        let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
        let rules = MaskingRules::new(16);
        let flags = masking_checks(&evaluate_all(model.as_ref(), &xs, &labels)?, &rules);
        assert_eq!(flags.len(), 2 + 1 + 1 + 2, "{flags:#?}");
        assert_eq!(failed(&flags), vec![], "{flags:#?}");

        // The same decisions behind a saturated softmax: gradients vanish, the attacks stall,
        // and noise and the large ε give it away.
        let masked = Saturated::new(balanced_maxout()?, 1e4);
        let flags = masking_checks(&evaluate_all(&masked, &xs, &labels)?, &rules);
        let fired = failed(&flags);
        assert!(
            fired.contains(&(MaskingCheck::LargeEpsBreaksModel, "pgd-linf")),
            "{flags:#?}"
        );
        assert!(
            fired.contains(&(
                MaskingCheck::AttackBeatsNoise,
                "pgd-linf vs random-noise-linf"
            )) && fired.contains(&(
                MaskingCheck::AttackBeatsNoise,
                "fast-gradient-linf vs random-noise-linf"
            )),
            "{flags:#?}"
        );
        Ok(())
    }
}
