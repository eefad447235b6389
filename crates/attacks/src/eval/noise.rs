//! Gaussian noise swept over σ: the baseline every attack must beat.

use std::time::Instant;

use candle_core::{bail, Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::*;
use crate::wilson_interval;

/// Accuracy of `model` on `x + σ·z`, `z ~ N(0, I)`, for every σ of `sigmas`, clipped to
/// `[0, 1]` when `clip`.
///
/// The noise comes from a generator seeded with `seed`, restarted for every σ: each σ scales
/// the *same* standard-normal draw (common random numbers), so the accuracy curve over σ is
/// not made jagged by resampling, and one σ's result does not depend on the others in the list.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
pub fn gaussian_noise(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    sigmas: &[f64],
    clip: bool,
    seed: u64,
    batch_size: usize,
) -> Result<Vec<Timed<NoiseRecord>>> {
    let (n, _, label_ids) = check_inputs(images, labels, batch_size)?;
    for &sigma in sigmas {
        if !(sigma.is_finite() && sigma >= 0.0) {
            bail!("sigma must be finite and >= 0, got {sigma}")
        }
    }
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    let mut records = Vec::with_capacity(sigmas.len());
    for &sigma in sigmas {
        let timer = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut correct = 0;
        for (start, len) in batches(n, batch_size) {
            let xs = images.narrow(0, start, len)?;
            let z: Vec<f32> = (0..xs.elem_count())
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            let z = Tensor::from_vec(z, xs.shape(), &Device::Cpu)?
                .to_dtype(xs.dtype())?
                .to_device(xs.device())?;
            let mut noisy = xs.add(&z.affine(sigma, 0.0)?)?;
            if clip {
                noisy = noisy.clamp(0.0, 1.0)?;
            }
            let preds = predictions(&model.forward(&noisy, Mode::Eval)?)?;
            let ids = &label_ids[start..start + len];
            correct += preds
                .iter()
                .zip(ids)
                .filter(|((pred, _), y)| pred == *y)
                .count();
        }
        let (ci_low, ci_high) = wilson_interval(correct, n);
        let record = NoiseRecord {
            sigma,
            clip,
            seed,
            n,
            correct,
            accuracy: fraction(correct, n),
            ci_low,
            ci_high,
            error: 1.0 - fraction(correct, n),
        };
        records.push(Timed {
            record,
            seconds: timer.elapsed().as_secs_f64(),
        });
    }
    Ok(records)
}
