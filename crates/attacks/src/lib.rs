//! Lp threat models and attacks.
//!
//! The centre is [`Norm`] (`L1`, `L2`, `Linf`, `Lp(p)`): one type whose four per-example
//! operations — [`Norm::norm`], the steepest-ascent perturbation [`Norm::steepest`] (the
//! closed form `r* = argmax_{‖r‖_p ≤ ε} gᵀr`), [`Norm::project`] and [`Norm::random`] — are all
//! the per-norm code there is. Attacks implement [`Attack`] and are generic over the norm at
//! run time: [`FastGradient`] is FGSM for `Norm::Linf` and the fast gradient method for any
//! other p; [`Pgd`] is the one iterative loop (steepest step, projection, clipping; random
//! starts, restarts keeping the per-example worst case, early stopping), ascending an
//! [`AttackLoss`] — cross-entropy, whose input gradient comes from the model's own
//! [`gauntlet_models::Classifier::loss_and_input_grad`], or Carlini & Wagner's margin, by
//! autograd. [`RandomNoise`] is the gradient-free baseline. Targeted goals ([`Goal`]) get their
//! targets from [`TargetSelection`].
//!
//! [`evaluate_attack`] sweeps an attack over ε ([`evaluate_attack_detailed`] adds per-example
//! outcomes, [`evaluate_ensemble`] takes the per-example worst case over several attacks) and
//! [`gaussian_noise`] sweeps noise over σ, returning serializable records with `n`, Wilson
//! intervals ([`wilson_interval`]) and the perturbation measured on the attack's output.
//! [`masking_checks`] reads those records for the symptoms of gradient masking.
//! [`perturbation_views`] and [`logit_sweep`] give the numbers behind the report's pictures of
//! r* and of the logits along an attack direction.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor};
//! use gauntlet_attacks::Norm;
//! // A gradient of a very confident model: tiny, but r* does not depend on its scale.
//! let grad = Tensor::new(&[[3e-15f32, -4e-15]], &Device::Cpu)?;
//! let r = Norm::L2.steepest(&grad, 0.5)?.to_vec2::<f32>()?;
//! assert!((r[0][0] - 0.3).abs() < 1e-6 && (r[0][1] + 0.4).abs() < 1e-6);
//! let fgsm = Norm::Linf.steepest(&grad, 0.1)?.to_vec2::<f32>()?;
//! assert_eq!(fgsm, [[0.1, -0.1]]);
//! # Ok(()) }
//! ```

mod apgd;
mod attack;
mod auto;
mod batch;
mod budget;
mod config;
mod eval;
mod fast_gradient;
mod limited;
mod loss;
mod masking;
mod min_norm;
mod noise;
mod norm;
mod pgd;
mod randomized;
mod square;
mod targeted;
#[cfg(test)]
mod testing;
mod transfer;
mod visuals;

pub use apgd::Apgd;
pub use attack::{Attack, Goal, TargetSelection};
pub use auto::{AutoAttack, AutoVersion};
pub use budget::{parse_budget, Budget};
pub use config::{
    check_budgets, AttackConfig, AttackOptions, ConfigError, Method, Target, OPTION_KEYS,
};
pub use eval::{
    check_logits, evaluate_attack, evaluate_attack_detailed, evaluate_attack_keeping,
    evaluate_ensemble, evaluate_min_norm, gaussian_noise, Ensemble, ExampleOutcome,
    MinNormEvaluated, CONSTANT_LOGITS, MAX_LOGIT,
};
pub use fast_gradient::FastGradient;
/// The record types, declared once for every writer and reader (the `gauntlet-results` crate).
pub use gauntlet_results::{
    wilson_interval, AttackKind, AttackRecord, CurvePoint, Lp, MaskingCheck, MaskingFlag,
    MemberRecord, MinNormExample, NoiseRecord, Queries, SecurityCurve, Timed, TransferRecord,
};
pub use limited::Limited;
pub use loss::{AttackLoss, Objective};
pub use masking::{masking_checks, unbounded_eps, MaskingRules};
pub use min_norm::{project_onto_hyperplane, CarliniWagner, Ddn, DeepFool, Fab, Fmn, MinNorm};
pub use noise::RandomNoise;
pub use norm::Norm;
pub use pgd::{fast_gradient_step, Pgd, StepSize};
pub use randomized::Randomized;
pub use square::Square;
pub use targeted::Targeted;
pub use transfer::{craft, predict, score_transfer, transfer_matrix, EnsembleModel};
pub use visuals::{
    first_correct_per_class, logit_sweep, perturbation_views, ImageView, PerturbationView,
};
