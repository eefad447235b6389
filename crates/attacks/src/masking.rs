//! Gradient-masking checks on evaluation records: the symptoms by which an evaluation that
//! only *looks* robust gives itself away (Athalye, Carlini & Wagner, "Obfuscated Gradients Give
//! a False Sense of Security", ICML 2018, <https://arxiv.org/abs/1802.00420>, §3.1; Carlini et
//! al., "On Evaluating Adversarial Robustness", <https://arxiv.org/abs/1902.06705>).
//!
//! [`masking_checks`] reads [`AttackRecord`]s only — no model — so a report can rerun it on
//! saved results. It compares records of one model on one set of examples; the caller supplies
//! the evaluations each check needs (a single-step and an iterative attack at the same ε, a
//! [`crate::RandomNoise`] evaluation, an evaluation at [`unbounded_eps`], a score-based attack
//! such as [`crate::Square`] or an ensemble with one, like [`crate::AutoAttack`]).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AttackKind, AttackRecord, Lp, MaskingCheck, MaskingFlag};

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
    /// Classes of the model, which fixes chance level; `None` skips
    /// [`MaskingCheck::CleanAboveChance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_classes: Option<usize>,
}

impl MaskingRules {
    /// The default thresholds for inputs of `input_dim` values.
    pub fn new(input_dim: usize) -> Self {
        Self {
            input_dim,
            slack: 0.005,
            large_eps_accuracy: 0.1,
            n_classes: None,
        }
    }

    /// The same rules for a model of `n_classes` classes (chance level `1 / n_classes`).
    pub fn with_classes(self, n_classes: usize) -> Self {
        Self {
            n_classes: Some(n_classes),
            ..self
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
pub fn unbounded_eps(norm: impl Into<Lp>, input_dim: usize) -> f64 {
    let p = norm.into().p;
    if p.is_infinite() {
        1.0
    } else {
        (input_dim as f64).powf(1.0 / p)
    }
}

/// Runs the gradient-masking checks on `records` (one model, one set of examples) and
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
/// - [`MaskingCheck::GradientBeatsScoreBased`], every pair of an [`AttackKind::ScoreBased`]
///   record group and a single-step or iterative attack of the same norm and `n`: fails when
///   the gradient attack's accuracy is higher than the score-based one's at some shared ε.
///   And every ensemble whose records list score-based members ([`AttackRecord::members`]),
///   with at least one gradient member before them: fails when at some ε the score-based
///   members broke more than the tolerance of the examples.
/// - [`MaskingCheck::CleanAboveChance`], once, on the first record, when `rules.n_classes` is
///   set: fails when its clean accuracy is not above `1/k + 3·√(p(1−p)/n)`, `p = 1/k`.
/// - [`MaskingCheck::LogitsVaryWithInput`], once, only as a failure: when some record saw
///   the same logits for every clean example ([`AttackRecord::constant_logits`]).
pub fn masking_checks<R: Borrow<AttackRecord>>(
    records: &[R],
    rules: &MaskingRules,
) -> Vec<MaskingFlag> {
    // Grouped by (attack, norm) in first-seen order, each group sorted by ε.
    let mut order: Vec<(String, String)> = vec![];
    let mut groups: BTreeMap<(String, String), Vec<&AttackRecord>> = BTreeMap::new();
    let records: Vec<&AttackRecord> = records.iter().map(Borrow::borrow).collect();
    for &r in &records {
        let key = (r.method.clone(), r.norm.slug());
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
    // One model on one set of examples: the clean predictions are the same in every record.
    if let Some(first) = records.first() {
        flags.extend(above_chance(first, rules));
        if let Some(r) = records.iter().find(|r| r.constant_logits) {
            flags.push(MaskingFlag {
                check: MaskingCheck::LogitsVaryWithInput,
                attack: r.method.clone(),
                norm: r.norm,
                passed: false,
                detail: format!(
                    "the model gave the same logits for all {} clean examples: it ignores its input",
                    r.n
                ),
            });
        }
    }
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
    let gradient = |g: &&Vec<&AttackRecord>| {
        matches!(g[0].kind, AttackKind::SingleStep | AttackKind::Iterative)
    };
    for score in groups
        .iter()
        .filter(|g| g[0].kind == AttackKind::ScoreBased)
    {
        for attack in groups.iter().filter(gradient) {
            if let Some(flag) = compare(MaskingCheck::GradientBeatsScoreBased, attack, score, rules)
            {
                flags.push(flag);
            }
        }
    }
    for g in groups.iter().filter(|g| g[0].kind == AttackKind::Ensemble) {
        if let Some(flag) = score_based_members(g, rules) {
            flags.push(flag);
        }
    }
    let fixed = |g: &&Vec<&AttackRecord>| {
        matches!(
            g[0].kind,
            AttackKind::SingleStep | AttackKind::Iterative | AttackKind::Ensemble
        )
    };
    for curve in groups
        .iter()
        .filter(|g| g[0].kind == AttackKind::MinimumNorm)
    {
        for attack in groups.iter().filter(fixed) {
            if let Some(flag) = curve_below(curve, attack) {
                flags.push(flag);
            }
        }
    }
    flags
}

/// A minimum-norm attack's records (its curve read at its ε) against a fixed-ε attack's at the
/// same ε: the curve may not be above the fixed attack's Wilson interval. `None` without a
/// shared ε, or for another norm or set of examples.
fn curve_below(curve: &[&AttackRecord], fixed: &[&AttackRecord]) -> Option<MaskingFlag> {
    let (c0, f0) = (curve[0], fixed[0]);
    if c0.norm != f0.norm || c0.n != f0.n {
        return None;
    }
    let mut shared = 0;
    let mut worst: Option<(f64, &AttackRecord, &AttackRecord)> = None;
    for &c in curve {
        let Some(&f) = fixed.iter().find(|f| same_eps(f.eps, c.eps)) else {
            continue;
        };
        shared += 1;
        let excess = c.adversarial_accuracy - f.ci_high;
        if excess > 0.0 && worst.is_none_or(|(e, _, _)| excess > e) {
            worst = Some((excess, c, f));
        }
    }
    if shared == 0 {
        return None;
    }
    let detail = match worst {
        Some((_, c, f)) => format!(
            "at eps {} the curve of {} leaves {} accurate, above {}'s {} and its interval's top {}",
            c.eps,
            c.method,
            percent(c.adversarial_accuracy),
            f.method,
            percent(f.adversarial_accuracy),
            percent(f.ci_high)
        ),
        None => format!(
            "the curve of {} is within or below {}'s interval at {shared} shared eps values",
            c0.method, f0.method
        ),
    };
    Some(MaskingFlag {
        check: MaskingCheck::CurveBelowFixedEps,
        attack: format!("{} vs {}", c0.method, f0.method),
        norm: c0.norm,
        passed: worst.is_none(),
        detail,
    })
}

/// Within an ensemble, the score-based members must break no more than the tolerance of the
/// examples the gradient members before them missed. `None` without a score-based member
/// after a gradient one.
fn score_based_members(group: &[&AttackRecord], rules: &MaskingRules) -> Option<MaskingFlag> {
    let first = group[0];
    let is_gradient = |k: AttackKind| matches!(k, AttackKind::SingleStep | AttackKind::Iterative);
    let applies = |r: &AttackRecord| {
        let gradient_at = r.members.iter().position(|m| is_gradient(m.kind));
        let score_at = r
            .members
            .iter()
            .rposition(|m| m.kind == AttackKind::ScoreBased);
        matches!((gradient_at, score_at), (Some(g), Some(s)) if g < s)
    };
    if !group.iter().any(|r| applies(r)) {
        return None;
    }
    let tolerance = rules.tolerance(first.n);
    // The worst ε: the largest share broken by score-based members alone.
    let mut worst: Option<(f64, &AttackRecord, usize)> = None;
    for &r in group.iter().filter(|r| applies(r)) {
        let broken: usize = r
            .members
            .iter()
            .filter(|m| m.kind == AttackKind::ScoreBased)
            .map(|m| m.broken)
            .sum();
        let share = broken as f64 / r.n.max(1) as f64;
        if worst.is_none_or(|(w, _, _)| share > w) {
            worst = Some((share, r, broken));
        }
    }
    let (share, r, broken) = worst?;
    let members: Vec<&str> = r
        .members
        .iter()
        .filter(|m| m.kind == AttackKind::ScoreBased)
        .map(|m| m.attack.as_str())
        .collect();
    Some(MaskingFlag {
        check: MaskingCheck::GradientBeatsScoreBased,
        attack: format!("{} ({})", first.method, members.join("+")),
        norm: first.norm,
        passed: !rules.beyond(share, r.n),
        detail: format!(
            "at eps {} the score-based members broke {broken} of {} examples ({}) that the gradient members missed (tolerance {})",
            r.eps,
            r.n,
            percent(share),
            percent(tolerance)
        ),
    })
}

/// Clean accuracy above chance by three binomial standard deviations; `None` without
/// `rules.n_classes` or examples.
fn above_chance(r: &AttackRecord, rules: &MaskingRules) -> Option<MaskingFlag> {
    let k = rules.n_classes.filter(|&k| k >= 2)?;
    if r.n == 0 {
        return None;
    }
    let chance = 1.0 / k as f64;
    let bound = chance + 3.0 * (chance * (1.0 - chance) / r.n as f64).sqrt();
    Some(MaskingFlag {
        check: MaskingCheck::CleanAboveChance,
        attack: r.method.clone(),
        norm: r.norm,
        passed: r.clean_accuracy > bound,
        detail: format!(
            "clean accuracy {} on {} examples; chance is {} for {k} classes (expected above {})",
            percent(r.clean_accuracy),
            r.n,
            percent(chance),
            percent(bound)
        ),
    })
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
        attack: first.method.clone(),
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
            s.method,
            percent(s.adversarial_accuracy),
            w.method,
            percent(w.adversarial_accuracy),
            percent(tolerance)
        ),
        None => format!(
            "{} at most as accurate as {} at {shared} shared eps values (tolerance {})",
            s0.method,
            w0.method,
            percent(tolerance)
        ),
    };
    Some(MaskingFlag {
        check,
        attack: format!("{} vs {}", s0.method, w0.method),
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
        attack: first.method.clone(),
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
    use crate::Norm;
    use crate::{evaluate_attack, wilson_interval, FastGradient, Pgd, RandomNoise};
    use candle_core::{Result, Tensor};
    use gauntlet_models::{Classifier, Mode};

    fn record(attack: &str, kind: AttackKind, eps: f64, n: usize, correct: usize) -> AttackRecord {
        let (lo, hi) = wilson_interval(correct, n);
        AttackRecord {
            method: attack.to_string(),
            kind,
            norm: Lp::LINF,
            eps,
            n,
            clean_correct: n,
            clean_accuracy: 1.0,
            adversarial_correct: correct,
            adversarial_accuracy: correct as f64 / n as f64,
            ci_low: lo,
            ci_high: hi,
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
            members: vec![],
            targeted_n: None,
            target_reached: None,
            constant_logits: false,
            queries: None,
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
    fn a_curve_above_a_fixed_eps_attack_is_flagged() {
        let rules = MaskingRules::new(784);
        let pgd = [
            record("pgd-linf", AttackKind::Iterative, 0.1, 1000, 700),
            record("pgd-linf", AttackKind::Iterative, 0.2, 1000, 300),
        ];
        let curve = |at_02: usize| {
            [
                record("fmn-linf", AttackKind::MinimumNorm, 0.1, 1000, 705),
                record("fmn-linf", AttackKind::MinimumNorm, 0.2, 1000, at_02),
            ]
        };
        let check = |records: Vec<AttackRecord>| {
            masking_checks(&records, &rules)
                .into_iter()
                .find(|f| f.check == MaskingCheck::CurveBelowFixedEps)
                .unwrap()
        };
        // Within PGD's interval at 0.1 (70% ± 2.8 points) and below it at 0.2.
        let ok = check([pgd.to_vec(), curve(290).to_vec()].concat());
        assert!(ok.passed, "{}", ok.detail);
        // 40% at 0.2 is far above PGD's 30% and its interval.
        let bad = check([pgd.to_vec(), curve(400).to_vec()].concat());
        assert!(!bad.passed);
        assert!(bad.detail.contains("at eps 0.2"), "{}", bad.detail);
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
                norm: Lp { p: 2.0 },
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
    ) -> Result<Vec<crate::Timed<AttackRecord>>> {
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
    fn score_based_attacks_beating_gradients_are_flagged_in_pairs_and_in_ensembles() {
        use crate::MemberRecord;
        use AttackKind::*;
        let rules = MaskingRules::new(16);
        let mut records = vec![
            record("pgd", Iterative, 0.1, 1000, 500),
            record("pgd", Iterative, 0.2, 1000, 200),
            record("square", ScoreBased, 0.1, 1000, 504), // within 0.5 pp
            record("square", ScoreBased, 0.2, 1000, 150), // 5 pp below pgd
        ];
        let member = |attack: &str, kind, broken| MemberRecord {
            attack: attack.to_string(),
            kind,
            broken,
        };
        for (eps, square_broke) in [(0.1, 3), (0.2, 40)] {
            records.push(AttackRecord {
                members: vec![
                    member("apgd-ce", Iterative, 400),
                    member("square", ScoreBased, square_broke),
                ],
                ..record("auto", Ensemble, eps, 1000, 600 - square_broke)
            });
        }
        let flags = masking_checks(&records, &rules);
        assert_eq!(
            failed(&flags),
            [
                (MaskingCheck::GradientBeatsScoreBased, "pgd vs square"),
                (MaskingCheck::GradientBeatsScoreBased, "auto (square)"),
            ],
            "{flags:#?}"
        );
        let auto = flags
            .iter()
            .find(|f| f.attack == "auto (square)")
            .expect("ensemble flag");
        assert_eq!(
            auto.detail,
            "at eps 0.2 the score-based members broke 40 of 1000 examples (4.00%) that the gradient members missed (tolerance 0.50%)"
        );
        // Three examples (0.3 pp) are within tolerance; an ensemble without a gradient member
        // before its score-based one is not checked.
        records.truncate(5);
        records.push(AttackRecord {
            members: vec![
                member("square", ScoreBased, 40),
                member("pgd", Iterative, 0),
            ],
            ..record("odd", Ensemble, 0.2, 1000, 560)
        });
        let flags = masking_checks(&records, &rules);
        assert!(
            failed(&flags).iter().all(|(_, a)| *a == "pgd vs square"),
            "{flags:#?}"
        );
        assert!(!flags.iter().any(|f| f.attack.starts_with("odd (")));
    }

    #[test]
    fn on_masked_models_gradients_fail_square_and_dlr_succeed_and_the_checks_fire() -> Result<()> {
        use crate::testing::{wide_maxout, Quantized};
        use crate::{evaluate_attack, Apgd, AttackLoss, AutoAttack, Square, Timed};
        let rules = MaskingRules::new(16);
        let robust = |records: &[Timed<AttackRecord>]| records[0].adversarial_correct;
        // Saturated logits: the cross-entropy gradient is exactly zero, DLR is scale-free.
        let saturated = Saturated::new(wide_maxout()?, 1e4);
        let (xs, _) = crate::testing::inputs(60, 61)?;
        let labels = saturated.forward(&xs, Mode::Eval)?.argmax(1)?;
        let eps = [0.05];
        let apgd_ce = Apgd {
            steps: 20,
            ..Apgd::new(Norm::Linf)
        };
        let apgd_dlr = Apgd {
            loss: AttackLoss::Dlr,
            ..apgd_ce
        };
        let square = Square {
            n_queries: 300,
            ..Square::new(Norm::Linf)
        };
        let ce = evaluate_attack(&saturated, &apgd_ce, &xs, &labels, &eps, 60)?;
        let dlr = evaluate_attack(&saturated, &apgd_dlr, &xs, &labels, &eps, 60)?;
        let sq = evaluate_attack(&saturated, &square, &xs, &labels, &eps, 60)?;
        // Only APGD-CE's random start breaks anything (9 of 60 with this seed).
        assert!(robust(&ce) >= 45, "APGD-CE: {}/60 robust", robust(&ce));
        assert!(robust(&dlr) <= 30, "APGD-DLR: {}/60 robust", robust(&dlr));
        assert!(robust(&sq) <= 40, "Square: {}/60 robust", robust(&sq));
        let mut records = ce.clone();
        records.extend(sq);
        let fired = masking_checks(&records, &rules);
        assert!(
            failed(&fired).contains(&(
                MaskingCheck::GradientBeatsScoreBased,
                "apgd-ce-linf vs square-linf"
            )),
            "{fired:#?}"
        );

        // A step function: no gradient at all, for any loss; only Square gets through, and
        // inside the AutoAttack ensemble it is Square that breaks the examples.
        let step = Quantized::new(wide_maxout()?, 10.0);
        let labels = step.forward(&xs, Mode::Eval)?.argmax(1)?;
        let auto = AutoAttack {
            steps: 10,
            target_classes: 2,
            n_queries: 300,
            ..AutoAttack::new(Norm::Linf)
        }
        .ensemble();
        let records = evaluate_attack(&step, &auto, &xs, &labels, &[0.15], 60)?;
        let broken: Vec<usize> = records[0].members.iter().map(|m| m.broken).collect();
        let square = broken[records[0].members.len() - 1];
        assert!(
            square > broken.iter().sum::<usize>() - square,
            "apgd-ce, apgd-t, fab-t, square broke {broken:?}"
        );
        let flags = masking_checks(&records, &rules);
        assert!(
            failed(&flags).contains(&(
                MaskingCheck::GradientBeatsScoreBased,
                "auto-linf (square-linf)"
            )),
            "{flags:#?}"
        );
        Ok(())
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

    #[test]
    fn a_model_at_chance_or_with_constant_logits_is_flagged() {
        use AttackKind::*;
        let rules = MaskingRules::new(4).with_classes(10);
        // 85 of 1000 right (a NaN model arg-maxing to class 0 on MNIST): at chance.
        let chance = |r: AttackRecord| AttackRecord {
            clean_correct: 85,
            clean_accuracy: 0.085,
            ..r
        };
        let records = vec![
            chance(record("fgsm", SingleStep, 0.1, 1000, 85)),
            chance(record("fgsm", SingleStep, 0.2, 1000, 85)),
        ];
        let flags = masking_checks(&records, &rules);
        let flag = flags
            .iter()
            .find(|f| f.check == MaskingCheck::CleanAboveChance)
            .expect("chance flag");
        assert!(!flag.passed, "{flag:#?}");
        assert_eq!(
            flag.detail,
            "clean accuracy 8.50% on 1000 examples; chance is 10.00% for 10 classes (expected above 12.85%)"
        );
        assert_eq!(
            serde_json::to_value(flag).unwrap()["check"],
            "clean-above-chance"
        );
        // A trained model passes; without the class count the check is not run.
        let trained = vec![record("fgsm", SingleStep, 0.1, 1000, 500)];
        assert!(masking_checks(&trained, &rules).iter().all(|f| f.passed));
        assert!(masking_checks(&trained, &MaskingRules::new(4))
            .iter()
            .all(|f| f.check != MaskingCheck::CleanAboveChance));
        // Constant logits fail their own check, whatever the accuracy.
        let constant = vec![AttackRecord {
            constant_logits: true,
            queries: None,
            ..record("fgsm", SingleStep, 0.1, 1000, 1000)
        }];
        let flags = masking_checks(&constant, &rules);
        let flag = flags
            .iter()
            .find(|f| f.check == MaskingCheck::LogitsVaryWithInput)
            .expect("constant flag");
        assert!(
            !flag.passed && flag.detail.contains("same logits for all 1000"),
            "{flag:#?}"
        );
        assert!(!masking_checks(&trained, &rules)
            .iter()
            .any(|f| f.check == MaskingCheck::LogitsVaryWithInput));
    }
}
