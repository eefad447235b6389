//! Input preprocessing as a fixed first layer of every model: global contrast normalisation
//! (GCN) and ZCA whitening as pylearn2 applies them to CIFAR-10 (research/paper.md §2.4, §5
//! row 17).
//!
//! Models take `[0, 1]` images and preprocess inside `forward`, so attacks and input gradients
//! live in pixel space. The ZCA mean and matrix are fitted on the training images by
//! [`crate::build_fitted`] and stored as buffers (`preprocess.mean`, `preprocess.zca`), so a
//! checkpoint carries them.

use candle_core::{bail, DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::{ModelSpec, ParamBuilder, Params};

/// GCN's scale in pylearn2's CIFAR-10 recipe (`CIFAR10(gcn=55.)`).
pub const CIFAR10_GCN_SCALE: f64 = 55.0;
/// ZCA's `filter_bias` in pylearn2's CIFAR-10 recipe.
pub const CIFAR10_FILTER_BIAS: f64 = 0.1;

/// Checkpoint name of the ZCA mean, `[input_dim]`.
pub const MEAN_NAME: &str = "preprocess.mean";
/// Checkpoint name of the ZCA matrix `P`, `[input_dim, input_dim]`; whitened = `(x − mean) P`.
pub const ZCA_NAME: &str = "preprocess.zca";

/// What a model does to its `[0, 1]` input before the first layer.
///
/// In TOML: `preprocess = { kind = "gcn-zca" }` (defaults: scale 55, filter-bias 0.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Preprocess {
    /// The raw `[0, 1]` pixels.
    #[default]
    None,
    /// Per image: subtract its mean over all values, divide by its L2 norm, multiply by `scale`.
    Gcn {
        #[serde(default = "default_scale")]
        scale: f64,
    },
    /// GCN, then ZCA whitening fitted on the GCN'd training images with `filter_bias · I`
    /// added to their covariance.
    #[serde(rename_all = "kebab-case")]
    GcnZca {
        #[serde(default = "default_scale")]
        scale: f64,
        #[serde(default = "default_filter_bias")]
        filter_bias: f64,
    },
}

fn default_scale() -> f64 {
    CIFAR10_GCN_SCALE
}

fn default_filter_bias() -> f64 {
    CIFAR10_FILTER_BIAS
}

impl Preprocess {
    /// pylearn2's CIFAR-10 preprocessing: GCN with scale 55, then ZCA with filter bias 0.1.
    pub fn cifar10() -> Self {
        Preprocess::GcnZca {
            scale: CIFAR10_GCN_SCALE,
            filter_bias: CIFAR10_FILTER_BIAS,
        }
    }

    /// Whether building the model needs training images ([`crate::build_fitted`]).
    pub fn needs_fit(&self) -> bool {
        matches!(self, Preprocess::GcnZca { .. })
    }

    /// Checks the hyper-parameters; [`ModelSpec::validate`] calls it.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Preprocess::None => {}
            Preprocess::Gcn { scale } => check_scale(scale)?,
            Preprocess::GcnZca { scale, filter_bias } => {
                check_scale(scale)?;
                if !(filter_bias >= 0.0 && filter_bias.is_finite()) {
                    bail!("preprocess filter-bias must be finite and >= 0, got {filter_bias}")
                }
            }
        }
        Ok(())
    }

    fn gcn_scale(&self) -> Option<f64> {
        match *self {
            Preprocess::None => None,
            Preprocess::Gcn { scale } | Preprocess::GcnZca { scale, .. } => Some(scale),
        }
    }
}

fn check_scale(scale: f64) -> Result<()> {
    if !(scale > 0.0 && scale.is_finite()) {
        bail!("preprocess scale must be finite and positive, got {scale}")
    }
    Ok(())
}

/// Global contrast normalisation of each row, as pylearn2's `global_contrast_normalize` with
/// `scale`, no sqrt bias and `min_divisor` 1e-8: `(x − mean(x)) / (‖x − mean(x)‖ / scale)`,
/// where a divisor below 1e-8 is replaced by 1 (a constant image stays all zeros).
///
/// Differentiable, in the dtype of `xs`.
///
/// # Shapes
/// - `xs`: `(batch, features)`; returns the same shape
pub fn gcn(xs: &Tensor, scale: f64) -> Result<Tensor> {
    let centred = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
    // Work with the squared divisor so that a skipped row never reaches sqrt(0), whose
    // backward would be 0/0.
    let divisor_sq = (centred.sqr()?.sum_keepdim(D::Minus1)? / (scale * scale))?;
    let skip = divisor_sq.lt(1e-16)?;
    let divisor = skip
        .where_cond(&divisor_sq.ones_like()?, &divisor_sq)?
        .sqrt()?;
    centred.broadcast_div(&divisor)
}

/// A fitted ZCA transform: whitened = `(x − mean) p`.
#[derive(Clone, Debug)]
pub struct Zca {
    /// `[features]`, f32.
    pub mean: Tensor,
    /// `[features, features]`, symmetric, f32.
    pub p: Tensor,
}

/// Fits ZCA on the rows of `xs` as pylearn2's `ZCA(filter_bias)` does: centre with the mean
/// row, `C = XᵀX / n + filter_bias · I`, `P = V diag(1/√λ) Vᵀ` from the eigendecomposition of
/// `C`, all in f64. Fails when `C` is (nearly) singular, e.g. GCN'd rows with filter bias 0.
///
/// # Shapes
/// - `xs`: `(n, features)`, any float dtype
pub fn fit_zca(xs: &Tensor, filter_bias: f64) -> Result<Zca> {
    let (n, d) = xs.dims2()?;
    fit_zca_chunked(n, d, xs.device(), filter_bias, |start, len| {
        xs.narrow(0, start, len)?.to_dtype(DType::F64)
    })
}

/// [`fit_zca`] on `n` rows of `d` features that `rows(start, len)` computes in f64 on demand,
/// so that no f64 copy of the whole set is held (CIFAR-10 is 50000 × 3072).
fn fit_zca_chunked(
    n: usize,
    d: usize,
    device: &Device,
    filter_bias: f64,
    rows: impl Fn(usize, usize) -> Result<Tensor>,
) -> Result<Zca> {
    if n == 0 {
        bail!("zca: expected at least one training row, got 0")
    }
    const CHUNK: usize = 4096;
    let chunks = || {
        (0..n)
            .step_by(CHUNK)
            .map(move |start| (start, CHUNK.min(n - start)))
    };
    let mut sum = Tensor::zeros(d, DType::F64, device)?;
    for (start, len) in chunks() {
        sum = (sum + rows(start, len)?.sum(0)?)?;
    }
    let mean = (sum / n as f64)?;
    let mut cov = Tensor::zeros((d, d), DType::F64, device)?;
    for (start, len) in chunks() {
        let c = rows(start, len)?.broadcast_sub(&mean)?;
        cov = (cov + c.t()?.matmul(&c)?)?;
    }
    let cov = (cov / n as f64)?.to_device(&Device::Cpu)?;
    let cov = cov.to_vec2::<f64>()?;
    let c = faer::Mat::<f64>::from_fn(d, d, |i, j| {
        cov[i][j] + if i == j { filter_bias } else { 0.0 }
    });
    let eigen = c
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| candle_core::Error::Msg(format!("zca: eigendecomposition failed: {e:?}")))?;
    let (values, vectors) = (eigen.S().column_vector(), eigen.U());
    let (min, max) = (0..d).fold((f64::INFINITY, 0f64), |(lo, hi), i| {
        (lo.min(values[i]), hi.max(values[i]))
    });
    // Eigenvalues at rounding level would turn P into noise amplified by 1/√λ.
    if min.is_nan() || min <= 1e-12 * max {
        bail!(
            "zca: covariance + filter-bias·I is singular (eigenvalues {min:e} to {max:e}); \
             expected filter-bias > 0 or more rows than features, \
             got {n} rows of {d} and filter-bias {filter_bias}"
        )
    }
    let scaled = faer::Mat::<f64>::from_fn(d, d, |i, j| vectors[(i, j)] / values[j].sqrt());
    let p = &scaled * vectors.transpose();
    let p: Vec<f32> = (0..d)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| p[(i, j)] as f32)
        .collect();
    Ok(Zca {
        mean: mean.to_dtype(DType::F32)?,
        p: Tensor::from_vec(p, (d, d), device)?,
    })
}

/// Fits what `preprocess` needs on `train_images` (`[n, C, H, W]` in `[0, 1]`): nothing for
/// [`Preprocess::None`] and [`Preprocess::Gcn`], the ZCA of the GCN'd images for
/// [`Preprocess::GcnZca`].
pub fn fit(preprocess: &Preprocess, train_images: &Tensor) -> Result<Option<Zca>> {
    let Preprocess::GcnZca { scale, filter_bias } = *preprocess else {
        return Ok(None);
    };
    let rows = train_images.flatten_from(1)?;
    let (n, d) = rows.dims2()?;
    // GCN in f64: f32 rounding would hide that GCN'd rows span one dimension less (a singular
    // covariance without filter bias).
    let gcn_rows = |start, len| gcn(&rows.narrow(0, start, len)?.to_dtype(DType::F64)?, scale);
    fit_zca_chunked(n, d, rows.device(), filter_bias, gcn_rows).map(Some)
}

/// Registers the buffers the spec's preprocessing needs (`preprocess.mean`, `preprocess.zca`)
/// in `pb`. When initialising they come from `fitted`; without it, a [`Preprocess::GcnZca`]
/// spec is an error. When loading they come from the checkpoint.
pub fn add_buffers(
    spec: &ModelSpec,
    pb: &mut ParamBuilder<'_>,
    fitted: Option<&Zca>,
) -> Result<()> {
    if !spec.preprocess.needs_fit() {
        return Ok(());
    }
    let d = spec.input_dim();
    let missing = || -> Result<Tensor> {
        bail!(
            "gcn-zca preprocessing is fitted on training images: build the model with build_fitted"
        )
    };
    pb.scope("preprocess", |pb| {
        pb.buffer("mean", d, || {
            fitted.map_or_else(missing, |z| Ok(z.mean.clone()))
        })?;
        pb.buffer("zca", (d, d), || {
            fitted.map_or_else(missing, |z| Ok(z.p.clone()))
        })?;
        Ok(())
    })
}

/// Applies the spec's preprocessing to a batch of images, taking fitted buffers from `params`;
/// every model's `forward` starts with it. Returns the same shape as `xs`.
///
/// # Shapes
/// - `xs`: `(batch, channels, height, width)`
pub fn apply(spec: &ModelSpec, params: &Params, xs: &Tensor) -> Result<Tensor> {
    let Some(scale) = spec.preprocess.gcn_scale() else {
        return Ok(xs.clone());
    };
    let rows = gcn(&xs.flatten_from(1)?, scale)?;
    let rows = if spec.preprocess.needs_fit() {
        let mean = buffer(params, MEAN_NAME, xs.dtype())?;
        let p = buffer(params, ZCA_NAME, xs.dtype())?;
        rows.broadcast_sub(&mean)?.matmul(&p)?
    } else {
        rows
    };
    rows.reshape(xs.shape())
}

fn buffer(params: &Params, name: &str, dtype: DType) -> Result<Tensor> {
    let Some((_, t)) = params.buffers().find(|(n, _)| n == name) else {
        bail!(
            "preprocessing buffer `{name}` is missing: \
             build the model with build_fitted or load a checkpoint"
        )
    };
    // f64 inputs (gradient checks) meet f32 buffers.
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcn_matches_hand_computed_values_and_skips_constant_rows() -> Result<()> {
        // Row 1: centred (-1, 1), norm √2, scale 2 → (-√2, √2). Row 2: constant → zeros.
        let xs = Tensor::new(&[[1f64, 3.0], [0.5, 0.5]], &Device::Cpu)?;
        let got = gcn(&xs, 2.0)?.to_vec2::<f64>()?;
        let r = 2f64.sqrt();
        assert!(
            (got[0][0] + r).abs() < 1e-12 && (got[0][1] - r).abs() < 1e-12,
            "{got:?}"
        );
        assert_eq!(got[1], vec![0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn gcn_gradient_is_finite_on_constant_rows() -> Result<()> {
        let x = candle_core::Var::from_tensor(&Tensor::new(&[[0.5f64, 0.5, 0.5]], &Device::Cpu)?)?;
        let grads = gcn(x.as_tensor(), 55.0)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).unwrap().to_vec2::<f64>()?;
        assert!(g[0].iter().all(|v| v.is_finite()), "{g:?}");
        Ok(())
    }

    #[test]
    fn preprocess_toml_defaults_and_typos() {
        #[derive(Deserialize)]
        struct Wrap {
            preprocess: Preprocess,
        }
        let w: Wrap = toml::from_str("preprocess = { kind = \"gcn-zca\" }").unwrap();
        assert_eq!(w.preprocess, Preprocess::cifar10());
        let w: Wrap =
            toml::from_str("preprocess = { kind = \"gcn-zca\", filter-bias = 0.0 }").unwrap();
        assert_eq!(
            w.preprocess,
            Preprocess::GcnZca {
                scale: 55.0,
                filter_bias: 0.0
            }
        );
        let err = toml::from_str::<Wrap>("preprocess = { kind = \"gcn\", scael = 1.0 }")
            .err()
            .unwrap();
        assert!(err.to_string().contains("scael"), "{err}");
    }
}
