//! The records an evaluation returns: one per attack and ε, per ensemble member, per σ of
//! noise, and per example.

use serde::{Deserialize, Serialize};

use crate::{AttackKind, Norm};

/// The outcome of one attack at one ε (one row of `robustness.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackRecord {
    /// [`crate::Attack::name`], or `"ensemble(a+b)"` for [`crate::evaluate_ensemble`].
    pub attack: String,
    /// How the attack searches ([`crate::Attack::kind`]); `other` when absent from a file.
    #[serde(default)]
    pub kind: AttackKind,
    /// The attack's threat model, in which the perturbation is measured.
    pub norm: Norm,
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
    pub adversarial_ci_low: f64,
    pub adversarial_ci_high: f64,
    /// Mean and maximum of `‖x_adv − x‖` in [`AttackRecord::norm`], measured on the output.
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
    /// Wall time of crafting and scoring the attacked inputs, in seconds.
    pub seconds: f64,
    /// For an ensemble, its members in the order they ran, each with the examples it broke
    /// (that the members before it left robust); empty for a single attack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRecord>,
    /// For an attack that picks its own targets ([`crate::Attack::targets`]): the examples aimed at
    /// a class other than their label, and how many of those the attacked input is
    /// classified as the target (targeted success, which robust accuracy does not measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted_n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_reached: Option<usize>,
    /// The model gave the same logits (within [`crate::CONSTANT_LOGITS`]) for every clean example:
    /// it ignores its input, so no attack can move it and its "robustness" means nothing (the
    /// masking checks flag it). Absent from files when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant_logits: bool,
}

/// One member of an ensemble in an [`AttackRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// [`crate::Attack::name`] of the member.
    pub attack: String,
    pub kind: AttackKind,
    /// Correctly classified examples this member broke after the earlier members failed.
    pub broken: usize,
}

/// Accuracy under additive Gaussian noise of one standard deviation (one row of the noise table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRecord {
    pub sigma: f64,
    /// Whether the noisy images were clipped to `[0, 1]`.
    pub clip: bool,
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
    pub seconds: f64,
}

/// The outcome of one example under one attack at one ε (one row of a per-example CSV).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleOutcome {
    pub eps: f64,
    /// Position of the example in the evaluated images.
    pub index: usize,
    pub label: u32,
    /// Predicted class of the clean and of the attacked input.
    pub clean_pred: u32,
    pub adv_pred: u32,
    /// Classified correctly both clean and attacked (the worst case over the ε-ball, which
    /// contains the clean input).
    pub robust: bool,
    /// `‖x_adv − x‖` in the attack's own norm, then in L∞, L2 and L1.
    pub perturbation: f64,
    pub linf: f64,
    pub l2: f64,
    pub l1: f64,
    /// The attack whose output turned this correctly classified example into a mistake (for
    /// an ensemble, the member that broke it); `None` when it is robust or was misclassified
    /// clean.
    #[serde(default)]
    pub broken_by: Option<String>,
    /// The class a targeted attack aimed this example at ([`crate::Attack::targets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
}
