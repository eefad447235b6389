//! The training objective: plain cross-entropy, or a member of the Lp gradient-regularization
//! family of Lyu, Huang & Liang (2015, arXiv:1511.06385; research/paper.md §1.4).
//!
//! - [`Regularizer::Lp`], forms B and C: `α·L(x) + (1−α)·L(x + r*)` with
//!   `r* = argmax_{‖r‖_p ≤ ε} ∇ₓLᵀr` held constant. `p = ∞, ε = 0.25, α = 0.5` is Goodfellow
//!   et al.'s FGSM adversarial training; `α = 0` is form B. To first order it is
//!   `L(x) + σ_eff‖∇ₓL‖_q` with `σ_eff = (1−α)ε`. r* comes from the input gradient of the clean
//!   pass that the step does anyway, so a step costs two forward and two backward passes.
//! - [`Regularizer::GradientPenalty`], form A: `L(x) + σ‖∇ₓL(x)‖_q` per example, by double
//!   backpropagation, which Candle computes correctly only when `CANDLE_GRAD_DO_NOT_DETACH` was
//!   set before the thread's first backward; the step checks that and refuses otherwise.

use candle_core::backprop::GradStore;
use candle_core::{Result as CandleResult, Tensor, Var};
use gauntlet_attacks::Norm;
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{per_example_cross_entropy, Classifier, Frozen, Mode};
use serde::{Deserialize, Serialize};

use gauntlet_models::{kernels, shard};

use crate::{Error, Gradients, Result};

/// Seed stream of the dropout masks of shards after the first.
const SHARD_STREAM: u64 = 0x5348_4152_4400;

/// What the training step minimises, in TOML: `regularizer = { kind = "lp", p = "inf", eps = 0.25 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Regularizer {
    /// Plain cross-entropy.
    #[default]
    None,
    /// Forms B/C: `α·L(x) + (1−α)·L(x + r*)`.
    #[serde(rename_all = "kebab-case")]
    Lp {
        p: Norm,
        eps: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Labels r* is computed from: the true ones, or the model's predictions (avoids the
        /// "label leaking" of FGSM training, Kurakin et al. 2017).
        #[serde(default)]
        labels: PerturbLabels,
        /// Mode of the pass that computes r*: `train` (its own dropout mask, the default) or `eval`.
        #[serde(default)]
        perturb_mode: PerturbMode,
        /// Clip `x + r*` to `[0, 1]` (the paper's objective does not).
        #[serde(default)]
        clip: bool,
    },
    /// Form A: `L(x) + σ‖∇ₓL(x)‖_q` per example (q dual to p), by double backpropagation.
    #[serde(rename_all = "kebab-case")]
    GradientPenalty { p: Norm, sigma: f64 },
}

fn default_alpha() -> f64 {
    0.5
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerturbLabels {
    #[default]
    True,
    Predicted,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerturbMode {
    #[default]
    Train,
    Eval,
}

/// The result of one step's objective: its value and the parameter gradients.
pub struct StepOutput {
    pub loss: f32,
    /// Clean logits of the batch (train mode), for the running training error.
    pub logits: Tensor,
    /// Per shard: the optimizer sums them in its update pass.
    pub grads: Gradients,
}

/// One shard's part of a [`StepOutput`].
struct ShardOutput {
    loss: f32,
    logits: Tensor,
    grads: GradStore,
}

impl Regularizer {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Regularizer::None => Ok(()),
            Regularizer::Lp { eps, alpha, .. } => {
                if !(eps >= 0.0) || !(0.0..=1.0).contains(&alpha) {
                    return Err(Error::Config(format!(
                        "lp regularizer needs eps >= 0 and alpha in [0, 1], got eps {eps}, alpha {alpha}"
                    )));
                }
                Ok(())
            }
            Regularizer::GradientPenalty { sigma, .. } => {
                if !(sigma >= 0.0) {
                    return Err(Error::Config(format!(
                        "gradient-penalty sigma must be >= 0, got {sigma}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// The first-order equivalent weight σ of `σ‖∇ₓL‖_q`, for comparing runs on one scale.
    pub fn sigma_eff(&self) -> Option<f64> {
        match *self {
            Regularizer::None => None,
            Regularizer::Lp { eps, alpha, .. } => Some((1.0 - alpha) * eps),
            Regularizer::GradientPenalty { sigma, .. } => Some(sigma),
        }
    }

    /// The norm and radius an adversarial validation check should use by default.
    pub fn threat(&self) -> Option<(Norm, f64)> {
        match *self {
            Regularizer::Lp { p, eps, .. } => Some((p, eps)),
            _ => None,
        }
    }

    /// Computes the objective of one batch and its parameter gradients. `seed` drives the
    /// dropout masks; each pass gets its own.
    ///
    /// On the CPU with more than one compute thread, the batch is cut into one shard per
    /// thread ([`shard`]), whose objectives and gradients are
    /// computed side by side; the gradients stay per shard ([`Gradients`]), to be summed in
    /// shard order: every term of the objective is a per-example mean, so the sum is the
    /// whole batch's. This keeps both cores busy, where
    /// the batch-100 matrix products of an MLP are too small for gemm to split well. The
    /// shards depend on the thread count only: the same count gives the same bits, another
    /// count the same objective up to rounding (and other dropout masks).
    pub fn step(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        ys: &Tensor,
        seed: u64,
    ) -> Result<StepOutput> {
        let n = xs.dim(0)?;
        let shards = match self {
            // Double backpropagation reads its switch per thread: kept on the caller's.
            Regularizer::GradientPenalty { .. } => 1,
            _ => shard::count(n, xs.device()),
        };
        // Each shard would pack every weight for its products itself; one transposed copy
        // for all is cheaper. Same bits either way.
        let _frozen = match shards {
            1 => Frozen::none(),
            _ => model.freeze()?,
        };
        let parts = shard::map(n, shards, |s, start, len| {
            // Shard 0 keeps the step's masks; the others draw their own.
            let seed = match s {
                0 => seed,
                s => derive_seed(seed, SHARD_STREAM + s as u64),
            };
            let (xs, ys) = (xs.narrow(0, start, len)?, ys.narrow(0, start, len)?);
            self.shard_step(model, &xs, &ys, seed, n)
        })?;
        let mut loss = 0f32;
        let mut logits = Vec::with_capacity(parts.len());
        let mut grads = Vec::with_capacity(parts.len());
        for part in parts {
            loss += part.loss;
            logits.push(part.logits);
            grads.push(part.grads);
        }
        Ok(StepOutput {
            loss,
            logits: Tensor::cat(&logits, 0)?,
            grads: Gradients::from_parts(grads),
        })
    }

    /// [`Regularizer::step`]'s objective on `xs`, a shard of a batch of `total` examples: each
    /// per-example mean is taken over `total`.
    fn shard_step(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        ys: &Tensor,
        seed: u64,
        total: usize,
    ) -> Result<ShardOutput> {
        let mean =
            |per_example: Tensor| -> CandleResult<Tensor> { per_example.sum_all()? / total as f64 };
        let clean_mode = Mode::Train {
            seed: derive_seed(seed, 0),
        };
        match *self {
            Regularizer::None => {
                let logits = model.forward(xs, clean_mode)?;
                let loss = mean(per_example_cross_entropy(&logits, ys)?)?;
                let value = loss.to_scalar::<f32>()?;
                let grads = kernels::backward(&loss)?;
                Ok(ShardOutput {
                    loss: value,
                    logits: logits.detach(),
                    grads,
                })
            }
            Regularizer::Lp {
                p,
                eps,
                alpha,
                labels,
                perturb_mode,
                clip,
            } => {
                let x_var = Var::from_tensor(&xs.detach())?;
                let logits = model.forward(x_var.as_tensor(), clean_mode)?;
                let clean = mean(per_example_cross_entropy(&logits, ys)?)?;
                let clean_value = clean.to_scalar::<f32>()?;
                let mut grads = kernels::backward(&clean)?;
                // r* is invariant to scaling the gradient, so the batch-mean loss serves.
                let reuse_clean_pass =
                    labels == PerturbLabels::True && perturb_mode == PerturbMode::Train;
                let gx = if reuse_clean_pass {
                    grads.remove(x_var.as_tensor()).map(|g| g.detach())
                } else {
                    let target = match labels {
                        PerturbLabels::True => ys.clone(),
                        PerturbLabels::Predicted => logits.argmax(candle_core::D::Minus1)?,
                    };
                    let mode = match perturb_mode {
                        PerturbMode::Train => Mode::Train {
                            seed: derive_seed(seed, 2),
                        },
                        PerturbMode::Eval => Mode::Eval,
                    };
                    Some(model.loss_and_input_grad(xs, &target, mode)?.grad)
                };
                let gx = match gx {
                    Some(g) => g,
                    None => xs.zeros_like()?,
                };
                let x_adv = gauntlet_attacks::fast_gradient_step(p, xs, &gx, eps, clip)?;
                let adv_logits = model.forward(
                    &x_adv.detach(),
                    Mode::Train {
                        seed: derive_seed(seed, 1),
                    },
                )?;
                let adv = mean(per_example_cross_entropy(&adv_logits, ys)?)?;
                let adv_value = adv.to_scalar::<f32>()?;
                let adv_grads = kernels::backward(&adv)?;
                mix_grads(model, &mut grads, &adv_grads, alpha)?;
                let value = alpha as f32 * clean_value + (1.0 - alpha as f32) * adv_value;
                Ok(ShardOutput {
                    loss: value,
                    logits: logits.detach(),
                    grads,
                })
            }
            Regularizer::GradientPenalty { p, sigma } => {
                if !double_backprop_works()? {
                    return Err(Error::Config(
                        "the gradient-penalty regularizer needs double backpropagation: set the environment \
                         variable CANDLE_GRAD_DO_NOT_DETACH=1 before starting (the gauntlet binary does this \
                         itself when a configuration uses gradient-penalty)"
                            .into(),
                    ));
                }
                let x_var = Var::from_tensor(&xs.detach())?;
                let logits = model.forward(x_var.as_tensor(), clean_mode)?;
                let ce = per_example_cross_entropy(&logits, ys)?;
                // Per-example gradients: the gradient of the sum, not of the mean.
                let first = ce.sum_all()?.backward()?;
                let gx = match first.get(x_var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => xs.zeros_like()?,
                };
                let penalty = differentiable_norm(&gx, p.dual())?;
                let loss = (ce.mean_all()? + (penalty.mean_all()? * sigma)?)?;
                let value = loss.to_scalar::<f32>()?;
                let grads = loss.backward()?;
                Ok(ShardOutput {
                    loss: value,
                    logits: logits.detach(),
                    grads,
                })
            }
        }
    }
}

/// Replaces every parameter gradient in `clean` by `α·clean + (1−α)·adv`.
fn mix_grads(
    model: &dyn Classifier,
    clean: &mut GradStore,
    adv: &GradStore,
    alpha: f64,
) -> CandleResult<()> {
    for (_, var) in model.params().vars() {
        let t = var.as_tensor();
        let mixed = match (clean.get(t), adv.get(t)) {
            (Some(c), Some(a)) if kernels::mix_assign(c, a, alpha)? => continue,
            (Some(c), Some(a)) => ((c.detach() * alpha)? + (a.detach() * (1.0 - alpha))?)?,
            (Some(c), None) => (c.detach() * alpha)?,
            (None, Some(a)) => (a.detach() * (1.0 - alpha))?,
            (None, None) => continue,
        };
        clean.insert(t, mixed);
    }
    Ok(())
}

/// Per-example q-norm over the non-batch dims, built from ops that have second derivatives.
fn differentiable_norm(g: &Tensor, q: Norm) -> CandleResult<Tensor> {
    let flat = g.flatten_from(1)?;
    match q {
        Norm::L1 => flat.abs()?.sum(1),
        // The tiny offset keeps sqrt's derivative finite at a zero gradient.
        Norm::L2 => (flat.sqr()?.sum(1)? + 1e-24)?.sqrt(),
        Norm::Linf => flat.abs()?.max(1),
        Norm::Lp(q) => (flat.abs()? + 1e-30)?.powf(q)?.sum(1)?.powf(1.0 / q),
    }
}

/// Whether second-order gradients are correct on this thread: d/dw of (d/dx w·x²)² at w = 1.5,
/// x = 2 must be 8·w·x² = 48. Candle reads `CANDLE_GRAD_DO_NOT_DETACH` once per thread.
pub fn double_backprop_works() -> CandleResult<bool> {
    let device = candle_core::Device::Cpu;
    let w = Var::new(1.5f64, &device)?;
    let x = Var::new(2.0f64, &device)?;
    let f = (w.as_tensor() * x.as_tensor().sqr()?)?;
    let first = f.backward()?;
    let Some(gx) = first.get(x.as_tensor()) else {
        return Ok(false);
    };
    let second = gx.sqr()?.backward()?;
    Ok(match second.get(w.as_tensor()) {
        Some(gw) => (gw.to_scalar::<f64>()? - 48.0).abs() < 1e-9,
        None => false,
    })
}
