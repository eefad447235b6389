//! Differentiable building blocks shared by the models, written from Candle primitives that
//! have correct gradients (see docs/candle-traps.md: no `max_pool2d`, no `softmax_last_dim`).

use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::kernels::{self, Gradients};

/// `xs @ weightᵀ + bias`, with `weight` stored `[out, in]` as PyTorch stores it; every
/// gradient available ([`kernels::linear`] chooses which).
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    kernels::linear(xs, weight, bias, Gradients::All)
}

/// Maxout over contiguous groups of `pieces` features: unit `i` is the max of features
/// `i * pieces .. (i + 1) * pieces` (pylearn2's layout).
///
/// # Shapes
/// - `zs`: `(batch, units * pieces)`; returns `(batch, units)`
pub fn maxout(zs: &Tensor, pieces: usize) -> Result<Tensor> {
    let (batch, features) = zs.dims2()?;
    kernels::max_pieces(zs, pieces, 1, &[batch, features / pieces.max(1)])
}

/// Dropout as pylearn2 defines it: keep each input with probability `include`, multiply kept
/// inputs by `scale` (pylearn2 uses 1 for the input layer of its Maxout recipes, 1/include
/// elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    pub include: f64,
    pub scale: f64,
}

impl Dropout {
    /// No dropout.
    pub const NONE: Dropout = Dropout {
        include: 1.0,
        scale: 1.0,
    };

    /// Inverted dropout keeping `include` of the inputs.
    pub fn inverted(include: f64) -> Self {
        Self {
            include,
            scale: 1.0 / include,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.include >= 1.0 && self.scale == 1.0
    }

    /// Applies the mask drawn from `seed` (same seed, same mask).
    pub fn apply(&self, xs: &Tensor, seed: u64) -> Result<Tensor> {
        if self.is_identity() {
            return Ok(xs.clone());
        }
        // Drawn over the compute threads: the input layer's mask was a serial share of the
        // training step.
        let mut mask = vec![0f32; xs.elem_count()];
        kernels::par_fill(&mut mask, |start, chunk| self.fill_mask(seed, start, chunk));
        let mask = Tensor::from_vec(mask, xs.shape(), &Device::Cpu)?.to_device(xs.device())?;
        xs.mul(&mask)
    }

    /// The mask values `start..start + mask.len()` of the mask drawn from `seed`.
    ///
    /// Each draw takes the next two 32-bit words of the ChaCha stream, so seeking to word
    /// `2 · start` gives a chunk the draws a single pass would make there: the mask does not
    /// depend on how it is split over the threads.
    fn fill_mask(&self, seed: u64, start: usize, mask: &mut [f32]) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_word_pos(2 * start as u128);
        // `random::<f64>()` is `(u >> 11) · 2⁻⁵³` of the draw `u`, so `random::<f64>() <
        // include` is the integer test `u >> 11 < ⌈include · 2⁵³⌉` (the scaling is exact): the
        // same mask, from draws taken a block at a time.
        let keep_below = (self.include * (1u64 << 53) as f64).ceil() as u64;
        let scale = self.scale as f32;
        let mut draws = [0u64; 256];
        for chunk in mask.chunks_mut(draws.len()) {
            let draws = &mut draws[..chunk.len()];
            rng.fill(draws);
            for (m, &u) in chunk.iter_mut().zip(draws.iter()) {
                *m = if u >> 11 < keep_below { scale } else { 0.0 };
            }
        }
    }
}

/// Mixes a step seed with a layer index into an independent seed (SplitMix64 finaliser).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Clips the L2 norm of every output unit's weights to at most `max_norm`, leaving shorter
/// ones untouched: pylearn2's `max_col_norm` / `max_kernel_norm`.
///
/// The first dimension indexes output units (`[out, in]` or `[out, in, kh, kw]`).
pub fn apply_max_norm(weight: &Var, max_norm: f64) -> Result<()> {
    if crate::kernels::max_norm_rows(weight.as_tensor(), max_norm)? {
        return Ok(());
    }
    let w = weight.as_detached_tensor();
    let rows = w.dim(0)?;
    let flat = w.reshape((rows, ()))?;
    let norms = flat.sqr()?.sum_keepdim(1)?.sqrt()?;
    let scale = (norms.clamp(0.0, max_norm)? / norms.maximum(1e-7)?)?;
    weight.set(&flat.broadcast_mul(&scale)?.reshape(w.shape())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_norm_clips_long_rows_and_leaves_short_ones() -> Result<()> {
        // Row norms 5 (clipped to 2) and 1 (kept).
        let w = Var::from_tensor(&Tensor::new(&[[3f32, 4.0], [0.6, 0.8]], &Device::Cpu)?)?;
        apply_max_norm(&w, 2.0)?;
        let got = w.as_tensor().to_vec2::<f32>()?;
        let expected = [[1.2f32, 1.6], [0.6, 0.8]];
        for (g, e) in got.iter().flatten().zip(expected.iter().flatten()) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        Ok(())
    }

    #[test]
    fn dropout_masks_follow_the_seed_and_the_rates() -> Result<()> {
        let xs = Tensor::ones((100, 100), candle_core::DType::F32, &Device::Cpu)?;
        let d = Dropout {
            include: 0.8,
            scale: 1.0,
        };
        let a = d.apply(&xs, 3)?;
        assert_eq!(a.to_vec2::<f32>()?, d.apply(&xs, 3)?.to_vec2::<f32>()?);
        assert_ne!(a.to_vec2::<f32>()?, d.apply(&xs, 4)?.to_vec2::<f32>()?);
        let kept = a.sum_all()?.to_scalar::<f32>()? / 10_000.0;
        assert!((kept - 0.8).abs() < 0.02, "kept {kept}");
        let inv = Dropout::inverted(0.5)
            .apply(&xs, 5)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!((inv - 1.0).abs() < 0.05, "mean {inv}");
        Ok(())
    }

    #[test]
    fn dropout_mask_drawn_in_chunks_is_the_one_pass_mask() -> Result<()> {
        let n = 5 * kernels::MAP_CHUNK + 77;
        // Each rate's mask is the f64 draws' (the 0.8 input layer, an odd rate, the edges).
        for include in [0.8, 0.37, 0.0, 1.0] {
            let d = Dropout {
                include,
                scale: 3.0,
            };
            let mut mask = vec![0f32; n];
            d.fill_mask(5, 0, &mut mask);
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let draws: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random::<f64>() < include {
                        3.0
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(mask, draws, "include {include}");
        }
        let d = Dropout::inverted(0.5);
        let mut whole = vec![0f32; n];
        d.fill_mask(9, 0, &mut whole);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let draws: Vec<f32> = (0..n)
            .map(|_| if rng.random::<f64>() < 0.5 { 2.0 } else { 0.0 })
            .collect();
        assert_eq!(whole, draws);
        // Uneven pieces, odd starts included.
        let mut pieces = vec![0f32; n];
        let mut start = 0;
        for len in [
            1,
            3,
            kernels::MAP_CHUNK - 1,
            kernels::MAP_CHUNK,
            2 * kernels::MAP_CHUNK + 5,
        ] {
            d.fill_mask(9, start, &mut pieces[start..start + len]);
            start += len;
        }
        d.fill_mask(9, start, &mut pieces[start..]);
        assert_eq!(pieces, whole);
        let xs = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(d.apply(&xs, 9)?.to_vec1::<f32>()?, whole);
        Ok(())
    }

    #[test]
    fn maxout_takes_contiguous_pieces() -> Result<()> {
        let zs = Tensor::new(&[[1f32, 5.0, 2.0, -1.0, -3.0, -2.0]], &Device::Cpu)?;
        assert_eq!(maxout(&zs, 3)?.to_vec2::<f32>()?, vec![vec![5.0, -1.0]]);
        Ok(())
    }
}
