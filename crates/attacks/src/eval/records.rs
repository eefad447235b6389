//! The per-example record (the others are the `gauntlet-results` crate's).

use serde::{Deserialize, Serialize};

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
