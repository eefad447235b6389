//! [`Randomized`]: a model evaluated in its randomized mode (dropout kept on at test time), the
//! kind of defence AutoAttack's "rand" version ([`crate::AutoVersion::Rand`]) is for.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{Classifier, Frozen, Mode, ModelSpec, Params};

/// `inner` with its training-mode randomness at every evaluation: each forward pass in
/// [`Mode::Eval`] runs `inner` in [`Mode::Train`] with a fresh seed, the `k`-th call using
/// stream `k` of `seed`. For gauntlet's models the two modes differ only by dropout, so this is
/// Monte-Carlo dropout: a randomized classifier whose every prediction is a new draw, which
/// attacks must meet with Expectation over Transformation (Athalye, Carlini & Wagner 2018,
/// <https://arxiv.org/abs/1802.00420>; [`crate::Apgd::eot_draws`]).
///
/// The draws follow the order of the calls, so a run is reproducible given the seed and the
/// same sequence of calls (one evaluation on one thread). A model without dropout stays
/// deterministic. Forward passes asked for in [`Mode::Train`] pass through unchanged.
pub struct Randomized {
    inner: Box<dyn Classifier>,
    seed: u64,
    calls: AtomicU64,
}

impl Randomized {
    pub fn new(inner: Box<dyn Classifier>, seed: u64) -> Self {
        Self {
            inner,
            seed,
            calls: AtomicU64::new(0),
        }
    }
}

impl Classifier for Randomized {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let mode = match mode {
            Mode::Eval => Mode::Train {
                seed: derive_seed(self.seed, self.calls.fetch_add(1, Ordering::Relaxed)),
            },
            train => train,
        };
        self.inner.forward(xs, mode)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }

    fn freeze(&self) -> Result<Frozen<'_>> {
        self.inner.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::inputs;
    use candle_core::Device;
    use gauntlet_models::{build, Arch, Dropout, MlpSpec};

    #[test]
    fn every_evaluation_is_a_new_reproducible_draw() -> Result<()> {
        let arch = Arch::Mlp(MlpSpec {
            hidden: vec![16],
            input_dropout: Dropout::inverted(0.5),
            ..MlpSpec::default()
        });
        let spec = ModelSpec::new(arch, [1, 4, 4], 3);
        let (xs, _) = inputs(4, 1)?;
        let logits = |model: &dyn Classifier| -> Result<Vec<Vec<f32>>> {
            model.forward(&xs, Mode::Eval)?.to_vec2::<f32>()
        };
        let a = Randomized::new(build(&spec, 1, &Device::Cpu)?, 7);
        let (first, second) = (logits(&a)?, logits(&a)?);
        assert_ne!(first, second, "two evaluations, one dropout mask");
        let b = Randomized::new(build(&spec, 1, &Device::Cpu)?, 7);
        assert_eq!(logits(&b)?, first, "same seed, same first draw");
        // Without dropout the wrapper changes nothing.
        let plain = ModelSpec::new(
            Arch::Mlp(MlpSpec {
                hidden: vec![16],
                ..MlpSpec::default()
            }),
            [1, 4, 4],
            3,
        );
        let det = build(&plain, 1, &Device::Cpu)?;
        let want = logits(det.as_ref())?;
        let wrapped = Randomized::new(build(&plain, 1, &Device::Cpu)?, 7);
        assert_eq!(logits(&wrapped)?, want);
        Ok(())
    }
}
