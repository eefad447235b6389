//! [`RandomNoise`]: random perturbations of a given Lp size, the gradient-free baseline that
//! every gradient attack must beat (a gradient attack weaker than noise is masked).

use candle_core::{DType, Result, Tensor};
use gauntlet_models::Classifier;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::norm::check_eps;
use crate::{Attack, AttackKind, Goal, Norm};

/// Random noise in an Lp ball: `x + δ` with `δ` uniform in the ε-ball ([`Norm::random`]),
/// rescaled to the sphere `‖δ‖_p = ε` when `on_sphere`, then clipped to `[0, 1]`.
///
/// **Reference**: the sanity checks of Carlini et al., "On Evaluating Adversarial
/// Robustness", 2019, <https://arxiv.org/abs/1902.06705>: a gradient attack must beat random
/// noise of the same size.
///
/// **Threat model**: none — the noise ignores the model and the goal; `‖x_adv − x‖_p ≤ ε` per
/// example (up to rounding when rescaled to the sphere), and `x_adv ∈ [0, 1]` when clipping.
///
/// **Parameters** (defaults of [`RandomNoise::new`]):
/// - `norm`: the Lp ball (no default);
/// - `on_sphere`: use the full budget on every example (`true`): noise is weakest in the
///   interior, so the sphere is the fairer baseline;
/// - `clip`: clip to `[0, 1]` (`true`);
/// - `seed`: each call draws from a `ChaCha8Rng` seeded with it (0); since the direction does
///   not depend on ε, a sweep over ε scales one draw per batch (common random numbers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RandomNoise {
    pub norm: Norm,
    pub on_sphere: bool,
    pub clip: bool,
    pub seed: u64,
}

impl RandomNoise {
    /// Noise on the ε-sphere of `norm`, clipped, seed 0.
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            on_sphere: true,
            clip: true,
            seed: 0,
        }
    }
}

impl Attack for RandomNoise {
    fn name(&self) -> String {
        format!("random-noise-{}", self.norm.name())
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::Random
    }

    fn perturb(
        &self,
        _model: &dyn Classifier,
        xs: &Tensor,
        _goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        check_eps(eps)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut delta = self.norm.random(xs, eps, &mut rng)?;
        if self.on_sphere && eps > 0.0 {
            // A uniform point of the ball is almost surely non-zero; a zero row stays zero.
            let factors: Vec<f64> = self
                .norm
                .norm(&delta)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .map(|&len| if len > 0.0 { eps / len } else { 0.0 })
                .collect();
            let batch = factors.len();
            let factors = Tensor::from_vec(factors, batch, xs.device())?.to_dtype(xs.dtype())?;
            delta = delta
                .flatten_from(1)?
                .broadcast_mul(&factors.unsqueeze(1)?)?
                .reshape(xs.shape())?;
        }
        let adv = xs.detach().add(&delta)?;
        if self.clip {
            adv.clamp(0.0, 1.0)
        } else {
            Ok(adv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{inputs, small_maxout};

    #[test]
    fn noise_sits_on_the_sphere_and_follows_the_seed() -> Result<()> {
        let model = small_maxout()?;
        let (xs, labels) = inputs(20, 1)?;
        let goal = Goal::Untargeted { labels: &labels };
        for p in [1.0, 1.5, 2.0, 3.0, f64::INFINITY] {
            let noise = RandomNoise {
                clip: false,
                ..RandomNoise::new(Norm::new(p)?)
            };
            let adv = noise.perturb(model.as_ref(), &xs, &goal, 0.1)?;
            let sizes = noise.norm.norm(&adv.sub(&xs)?)?.to_vec1::<f32>()?;
            assert!(
                sizes.iter().all(|s| (s - 0.1).abs() < 1e-6),
                "p {p}: {sizes:?}"
            );
            let again = noise.perturb(model.as_ref(), &xs, &goal, 0.1)?;
            assert_eq!(
                adv.flatten_all()?.to_vec1::<f32>()?,
                again.flatten_all()?.to_vec1::<f32>()?
            );
            let other =
                RandomNoise { seed: 1, ..noise }.perturb(model.as_ref(), &xs, &goal, 0.1)?;
            assert_ne!(
                adv.flatten_all()?.to_vec1::<f32>()?,
                other.flatten_all()?.to_vec1::<f32>()?
            );
            // Inside the ball, not on its sphere, when asked.
            let ball = RandomNoise {
                on_sphere: false,
                ..noise
            }
            .perturb(model.as_ref(), &xs, &goal, 0.1)?;
            let sizes = noise.norm.norm(&ball.sub(&xs)?)?.to_vec1::<f32>()?;
            assert!(sizes.iter().all(|&s| s <= 0.1 + 1e-6) && sizes.iter().any(|&s| s < 0.099));
        }
        assert_eq!(RandomNoise::new(Norm::L2).name(), "random-noise-l2");
        assert_eq!(RandomNoise::new(Norm::L2).kind(), AttackKind::Random);
        Ok(())
    }
}
