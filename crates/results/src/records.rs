//! The records, each declared once. A field's name is its column's name in every file.

use std::borrow::Borrow;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Lp;

/// How an attack searches its ball, recorded with its results so the gradient-masking checks
/// know which records to compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// One gradient step (FGSM, the fast gradient method).
    SingleStep,
    /// Several gradient steps (PGD).
    Iterative,
    /// No gradient at all: random noise of the same norm, the baseline every attack must beat.
    Random,
    /// No gradient, but the model's scores guide the search (the Square attack): immune to
    /// masked gradients, so it must not beat the gradient attacks on a sound evaluation.
    ScoreBased,
    /// The per-example worst case over several attacks.
    Ensemble,
    /// A search for each example's smallest adversarial perturbation (FMN, DDN, DeepFool),
    /// scored at each ε from its minimal examples.
    MinimumNorm,
    /// Anything else (transfer, black-box, user-defined); no check relies on it.
    #[default]
    Other,
}

impl AttackKind {
    /// As serialized: `single-step`, `iterative`, `random`, `score-based`, `ensemble`,
    /// `minimum-norm`, `other`.
    pub fn name(&self) -> &'static str {
        match self {
            AttackKind::SingleStep => "single-step",
            AttackKind::Iterative => "iterative",
            AttackKind::Random => "random",
            AttackKind::ScoreBased => "score-based",
            AttackKind::Ensemble => "ensemble",
            AttackKind::MinimumNorm => "minimum-norm",
            AttackKind::Other => "other",
        }
    }
}

/// A record and the wall time it took, in seconds. Serialized flat (the record's fields, then
/// `seconds`), as job files keep it; the results files take the record alone, so that they
/// are identical from run to run, and put the time in `timings.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed<T> {
    #[serde(flatten)]
    pub record: T,
    pub seconds: f64,
}

impl<T> Deref for Timed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.record
    }
}

impl<T> Borrow<T> for Timed<T> {
    fn borrow(&self) -> &T {
        &self.record
    }
}

impl<T> DerefMut for Timed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.record
    }
}

/// The outcome of one attack at one ε on one model and set of examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackRecord {
    /// The attack's own name (`Attack::name`, e.g. `pgd-linf`), or `ensemble(a+b)`.
    #[serde(alias = "attack")]
    pub method: String,
    /// How the attack searches; `other` when absent from a file.
    #[serde(default)]
    pub kind: AttackKind,
    /// The threat model, in which the perturbation is measured.
    pub norm: Lp,
    pub eps: f64,
    /// Number of examples.
    pub n: usize,
    /// Examples classified correctly without attack.
    pub clean_correct: usize,
    pub clean_accuracy: f64,
    /// Examples classified correctly both clean and attacked. The clean input is itself in
    /// the ε-ball, so an example counts as robust only if both are right (worst case per
    /// example); this never exceeds `clean_correct`.
    pub adversarial_correct: usize,
    pub adversarial_accuracy: f64,
    /// Wilson 95% interval of `adversarial_accuracy`.
    #[serde(alias = "adversarial_ci_low")]
    pub ci_low: f64,
    #[serde(alias = "adversarial_ci_high")]
    pub ci_high: f64,
    /// Mean and maximum of `‖x_adv − x‖` in `norm`, measured on the output.
    pub mean_perturbation: f64,
    pub max_perturbation: f64,
    /// The same in L∞, L2 and L1, whatever the attack's norm, so attacks of different norms
    /// can be compared on one scale.
    pub mean_linf: f64,
    pub max_linf: f64,
    pub mean_l2: f64,
    pub max_l2: f64,
    pub mean_l1: f64,
    pub max_l1: f64,
    /// Attacked inputs the model misclassifies.
    pub mistakes: usize,
    /// Mean softmax probability of the (wrong) predicted class over those mistakes; `None`
    /// when there are none.
    pub mean_confidence_on_mistakes: Option<f64>,
    /// For an ensemble, its members in the order they ran, each with the examples it broke
    /// (that the members before it left robust); empty for a single attack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRecord>,
    /// For an attack that picks its own targets: the examples aimed at a class other than
    /// their label, and how many of those the attacked input is classified as the target
    /// (targeted success, which robust accuracy does not measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted_n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_reached: Option<usize>,
    /// The model gave the same logits for every clean example: it ignores its input, so no
    /// attack can move it and its "robustness" means nothing (the masking checks flag it).
    /// Absent from files when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant_logits: bool,
    /// The forward and backward passes the attack spent, per example (absent from files
    /// written before they were counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<Queries>,
}

/// Model passes an attack spent, as means per example: `forward` counts every forward pass
/// (with or without a gradient after it), `backward` every backward pass to the input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queries {
    pub forward: f64,
    pub backward: f64,
}

/// One member of an ensemble in an [`AttackRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's own name.
    pub attack: String,
    pub kind: AttackKind,
    /// Correctly classified examples this member broke after the earlier members failed.
    pub broken: usize,
}

/// A model under one attack at one ε: a row of `robustness.csv` ([`ROBUSTNESS_COLUMNS`]) and
/// of results.json's `robustness` (all fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessRow {
    pub model: String,
    /// The attack's name in its suite or command (`method` is the attack's own).
    pub attack: String,
    #[serde(flatten)]
    pub record: AttackRecord,
    /// The model's seed.
    pub seed: u64,
    /// The attack's resolved configuration (results.json only).
    #[serde(default)]
    pub spec: Value,
    /// The budget as written where it was a fraction (`"8/255"`); `eps` holds its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_written: Option<String>,
}

impl Deref for RobustnessRow {
    type Target = AttackRecord;
    fn deref(&self) -> &AttackRecord {
        &self.record
    }
}

/// The columns of `robustness.csv`, in order: the scalar fields every row has.
pub const ROBUSTNESS_COLUMNS: &[&str] = &[
    "model",
    "attack",
    "method",
    "kind",
    "norm",
    "eps",
    "n",
    "clean_correct",
    "clean_accuracy",
    "adversarial_correct",
    "adversarial_accuracy",
    "ci_low",
    "ci_high",
    "mean_perturbation",
    "max_perturbation",
    "mean_linf",
    "max_linf",
    "mean_l2",
    "max_l2",
    "mean_l1",
    "max_l1",
    "mistakes",
    "mean_confidence_on_mistakes",
    "seed",
];

/// Accuracy under additive Gaussian noise of one standard deviation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRecord {
    pub sigma: f64,
    /// Whether the noisy images were clipped to `[0, 1]`.
    pub clip: bool,
    /// The seed of the noise.
    pub seed: u64,
    pub n: usize,
    /// Noisy examples classified correctly.
    pub correct: usize,
    pub accuracy: f64,
    /// Wilson 95% interval of `accuracy`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// `1 − accuracy`.
    pub error: f64,
}

/// A model's [`NoiseRecord`]: a row of `noise.csv` and of results.json's `noise`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRow {
    pub model: String,
    #[serde(flatten)]
    pub record: NoiseRecord,
}

impl Deref for NoiseRow {
    type Target = NoiseRecord;
    fn deref(&self) -> &NoiseRecord {
        &self.record
    }
}

/// The columns of `noise.csv`, in order.
pub const NOISE_COLUMNS: &[&str] = &[
    "model", "sigma", "clip", "seed", "n", "correct", "accuracy", "ci_low", "ci_high", "error",
];

/// The outcome of examples crafted against `source` and classified by `target`: a row of
/// `transfer.csv` and of results.json's `transfer`. With `source == target` it is the
/// white-box result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub source: String,
    pub target: String,
    /// The attack used against the source (its own name or the suite's name for it).
    pub attack: String,
    pub norm: Lp,
    pub eps: f64,
    /// Number of examples.
    pub n: usize,
    /// Examples the target classifies correctly without attack.
    pub clean_correct: usize,
    /// Examples the target classifies correctly both clean and on the transferred input (the
    /// clean input is in the ε-ball too, so this is the per-example worst case, as in
    /// [`AttackRecord::adversarial_correct`]).
    pub adversarial_correct: usize,
    pub accuracy: f64,
    /// `1 − accuracy`.
    pub error: f64,
    /// Wilson 95% interval of `accuracy` (that of `error` is `1 − high, 1 − low`).
    pub ci_low: f64,
    pub ci_high: f64,
    /// Transferred inputs the target misclassifies.
    pub target_mistakes: usize,
    /// Mean softmax probability of the target's (wrong) predicted class over its mistakes;
    /// `None` when there are none.
    pub mean_confidence_on_mistakes: Option<f64>,
    /// Transferred inputs the *source* misclassifies (its white-box mistakes).
    pub source_mistakes: usize,
    /// Of the source's mistakes, the share on which the target predicts the same wrong class;
    /// `None` when the source made no mistake.
    pub agreement: Option<f64>,
    /// The same share among the source's mistakes that the target also gets wrong; `None` when
    /// there are none.
    pub agreement_when_both_wrong: Option<f64>,
}

/// The columns of `transfer.csv`, in order: every field.
pub const TRANSFER_COLUMNS: &[&str] = &[
    "source",
    "target",
    "attack",
    "norm",
    "eps",
    "n",
    "clean_correct",
    "adversarial_correct",
    "accuracy",
    "error",
    "ci_low",
    "ci_high",
    "target_mistakes",
    "mean_confidence_on_mistakes",
    "source_mistakes",
    "agreement",
    "agreement_when_both_wrong",
];

/// The gradient-masking checks (`gauntlet_attacks::masking_checks` runs them).
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
    /// A score-based attack ([`AttackKind::ScoreBased`], e.g. Square) does not beat the
    /// gradient attacks at the same norm and ε, and within an ensemble it breaks (almost) no
    /// example the gradient members missed: a gradient-free search that finds what gradients
    /// cannot is the signature of masked gradients (Croce & Hein 2020, §5).
    GradientBeatsScoreBased,
    /// Clean accuracy is above chance (`1 / n_classes` plus three binomial standard
    /// deviations): robustness of a model that has learnt nothing is no evidence of anything.
    CleanAboveChance,
    /// The logits depend on the input ([`AttackRecord::constant_logits`]): a constant model is
    /// "robust" at every ε because nothing can move it.
    LogitsVaryWithInput,
    /// A minimum-norm attack's security curve, read at a fixed-ε attack's budget, is not
    /// above that attack's robust accuracy by more than the latter's Wilson interval: a curve
    /// above it overstates robustness at every ε near there.
    CurveBelowFixedEps,
}

impl MaskingCheck {
    /// Stable identifier, as serialized: `"monotone-in-eps"`, ...
    pub fn name(&self) -> &'static str {
        match self {
            MaskingCheck::MonotoneInEps => "monotone-in-eps",
            MaskingCheck::IterativeBeatsSingleStep => "iterative-beats-single-step",
            MaskingCheck::LargeEpsBreaksModel => "large-eps-breaks-model",
            MaskingCheck::AttackBeatsNoise => "attack-beats-noise",
            MaskingCheck::GradientBeatsScoreBased => "gradient-beats-score-based",
            MaskingCheck::CleanAboveChance => "clean-above-chance",
            MaskingCheck::LogitsVaryWithInput => "logits-vary-with-input",
            MaskingCheck::CurveBelowFixedEps => "curve-below-fixed-eps",
        }
    }
}

/// The outcome of one check on one attack (or one pair of attacks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskingFlag {
    pub check: MaskingCheck,
    /// The attack checked, or `"a vs b"` for a comparison of two.
    pub attack: String,
    pub norm: Lp,
    /// `false` means the symptom was found: the evaluation may be masked.
    pub passed: bool,
    /// What was compared, with the accuracies and the tolerance.
    pub detail: String,
}

/// A model's [`MaskingFlag`] in results.json's `masking`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskingEntry {
    pub model: String,
    #[serde(flatten)]
    pub flag: MaskingFlag,
}

impl Deref for MaskingEntry {
    type Target = MaskingFlag;
    fn deref(&self) -> &MaskingFlag {
        &self.flag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AttackRecord {
        AttackRecord {
            method: "pgd-linf".into(),
            kind: AttackKind::Iterative,
            norm: Lp::LINF,
            eps: 0.1,
            n: 10,
            clean_correct: 9,
            clean_accuracy: 0.9,
            adversarial_correct: 4,
            adversarial_accuracy: 0.4,
            ci_low: 0.168,
            ci_high: 0.687,
            mean_perturbation: 0.1,
            max_perturbation: 0.1,
            mean_linf: 0.1,
            max_linf: 0.1,
            mean_l2: 2.0,
            max_l2: 2.5,
            mean_l1: 30.0,
            max_l1: 40.0,
            mistakes: 6,
            mean_confidence_on_mistakes: Some(0.7),
            members: vec![],
            targeted_n: Some(9),
            target_reached: Some(3),
            constant_logits: false,
            queries: None,
        }
    }

    #[test]
    fn a_row_round_trips_through_json_flat_with_its_record() {
        let row = RobustnessRow {
            model: "m".into(),
            attack: "pgd".into(),
            record: record(),
            seed: 3,
            spec: serde_json::json!({"kind": "pgd"}),
            eps_written: Some("1/10".into()),
        };
        let value = serde_json::to_value(&row).unwrap();
        assert_eq!(value["attack"], "pgd");
        assert_eq!(value["method"], "pgd-linf");
        assert_eq!(value["norm"], "inf");
        assert_eq!(value["targeted_n"], 9);
        assert!(value.get("constant_logits").is_none());
        assert_eq!(serde_json::from_value::<RobustnessRow>(value).unwrap(), row);
    }

    #[test]
    fn a_timed_record_is_flat_and_older_field_names_still_read() {
        let timed = Timed {
            record: record(),
            seconds: 1.5,
        };
        let mut value = serde_json::to_value(&timed).unwrap();
        assert_eq!(value["seconds"], 1.5);
        assert_eq!(value["ci_low"], 0.168);
        assert_eq!(
            serde_json::from_value::<Timed<AttackRecord>>(value.clone()).unwrap(),
            timed
        );
        // Job files of earlier versions named these `attack` and `adversarial_ci_*`.
        let object = value.as_object_mut().unwrap();
        for (old, new) in [
            ("attack", "method"),
            ("adversarial_ci_low", "ci_low"),
            ("adversarial_ci_high", "ci_high"),
        ] {
            let v = object.remove(new).unwrap();
            object.insert(old.into(), v);
        }
        assert_eq!(
            serde_json::from_value::<Timed<AttackRecord>>(value).unwrap(),
            timed
        );
    }

    #[test]
    fn kind_names_are_the_serialized_ones() {
        for kind in [
            AttackKind::SingleStep,
            AttackKind::Iterative,
            AttackKind::Random,
            AttackKind::ScoreBased,
            AttackKind::Ensemble,
            AttackKind::Other,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
