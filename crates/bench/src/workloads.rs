//! The benchmarked workloads of one model, each a closure that processes one batch, and the
//! interleaved timing loop.
//!
//! bench/torch_reference.py implements the same workloads, names and batch accounting in
//! PyTorch; keep the two in step.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use gauntlet_attacks::{transfer_matrix, Attack, FastGradient, Goal, Norm, Pgd};
use gauntlet_models::{accuracy_counts, Classifier, Frozen, Mode};
use gauntlet_train::{Optimizer, Param, Regularizer, SgdMomentum};

use crate::flops::ForwardFlops;

/// Workload names in report order. The two `gemm-*` profile workloads run only the matrix
/// products of an MLP's forward pass and of its training step, on their own: set beside
/// `forward` and `train` they give the share of each spent outside the products.
pub const ALL: [&str; 9] = [
    "forward",
    "input-grad",
    "train",
    "train-fgsm",
    "fgsm",
    "pgd-step",
    "transfer",
    "gemm-forward",
    "gemm-train",
];

/// Steps of the PGD run; its throughput counts steps × images.
pub const PGD_STEPS: usize = 10;
/// ε of the attacks (pixel space) and of FGSM adversarial training.
const ATTACK_EPS: f64 = 0.1;
const TRAIN_EPS: f64 = 0.25;

/// Processes one batch of images and labels.
type RunBatch<'a> = Box<dyn FnMut(&Tensor, &Tensor) -> Result<()> + 'a>;

/// One benchmarked operation.
pub struct Workload<'a> {
    pub name: &'static str,
    /// What the throughput counts: "examples/s" or "images/s" or "steps*images/s".
    pub unit: &'static str,
    /// Units of work in one call of `run`.
    pub per_batch: usize,
    /// FLOPs per unit of work.
    pub flops_per_unit: f64,
    run: RunBatch<'a>,
    /// The models whose weights the workload leaves as they are, frozen while it is measured
    /// ([`Classifier::freeze`]) as the evaluation loops hold them over their batches.
    fixed: Vec<&'a dyn Classifier>,
}

/// The workloads named in `names`, on `model` (trained by the training workloads) and `target`
/// (the transfer target). `dense` holds an MLP's layer shapes (`flops::dense_layers`); the
/// `gemm-*` workloads are left out without them.
pub fn build<'a>(
    names: &[String],
    model: &'a dyn Classifier,
    target: &'a dyn Classifier,
    batch: usize,
    flops: ForwardFlops,
    dense: Option<&[(usize, usize)]>,
) -> Result<Vec<Workload<'a>>> {
    let f = flops.total;
    let mut out = Vec::new();
    for name in names {
        let w = match name.as_str() {
            "gemm-forward" => {
                let Some(layers) = dense else { continue };
                Workload {
                    name: "gemm-forward",
                    unit: "images/s",
                    per_batch: batch,
                    flops_per_unit: f,
                    run: products(layers, batch, false)?,
                    fixed: Vec::new(),
                }
            }
            "gemm-train" => {
                let Some(layers) = dense else { continue };
                Workload {
                    name: "gemm-train",
                    unit: "examples/s",
                    per_batch: batch,
                    flops_per_unit: 3.0 * f - flops.first,
                    run: products(layers, batch, true)?,
                    fixed: Vec::new(),
                }
            }
            "forward" => Workload {
                name: "forward",
                unit: "images/s",
                per_batch: batch,
                flops_per_unit: f,
                run: Box::new(move |xs, _| {
                    model.forward(xs, Mode::Eval)?;
                    Ok(())
                }),
                fixed: vec![model],
            },
            "input-grad" => Workload {
                name: "input-grad",
                unit: "images/s",
                per_batch: batch,
                flops_per_unit: 2.0 * f,
                run: Box::new(move |xs, ys| {
                    model.loss_and_input_grad(xs, ys, Mode::Eval)?;
                    Ok(())
                }),
                fixed: vec![model],
            },
            "train" => Workload {
                name: "train",
                unit: "examples/s",
                per_batch: batch,
                flops_per_unit: 3.0 * f - flops.first,
                run: train_step(model, Regularizer::None)?,
                fixed: Vec::new(),
            },
            "train-fgsm" => Workload {
                name: "train-fgsm",
                unit: "examples/s",
                per_batch: batch,
                flops_per_unit: 6.0 * f - flops.first,
                run: train_step(
                    model,
                    Regularizer::Lp {
                        p: Norm::Linf,
                        eps: TRAIN_EPS,
                        alpha: 0.5,
                        labels: Default::default(),
                        perturb_mode: Default::default(),
                        clip: false,
                    },
                )?,
                fixed: Vec::new(),
            },
            "fgsm" => {
                let attack = FastGradient::fgsm();
                Workload {
                    name: "fgsm",
                    unit: "images/s",
                    per_batch: batch,
                    flops_per_unit: 2.0 * f,
                    run: Box::new(move |xs, ys| {
                        attack.perturb(model, xs, &Goal::Untargeted { labels: ys }, ATTACK_EPS)?;
                        Ok(())
                    }),
                    fixed: vec![model],
                }
            }
            "pgd-step" => {
                // Every image runs every step: no early stop.
                let mut pgd = Pgd::new(Norm::Linf);
                pgd.steps = PGD_STEPS;
                pgd.early_stop = false;
                Workload {
                    name: "pgd-step",
                    unit: "steps*images/s",
                    per_batch: batch * PGD_STEPS,
                    flops_per_unit: 2.0 * f + f / PGD_STEPS as f64,
                    run: Box::new(move |xs, ys| {
                        pgd.perturb(model, xs, &Goal::Untargeted { labels: ys }, ATTACK_EPS)?;
                        Ok(())
                    }),
                    fixed: vec![model],
                }
            }
            "transfer" => {
                let attack = FastGradient::fgsm();
                Workload {
                    name: "transfer",
                    unit: "images/s",
                    per_batch: batch,
                    flops_per_unit: 5.0 * f,
                    run: Box::new(move |xs, ys| {
                        transfer_matrix(
                            &[("source", model)],
                            &[("target", target)],
                            &attack,
                            xs,
                            ys,
                            ATTACK_EPS,
                            batch,
                        )?;
                        Ok(())
                    }),
                    fixed: vec![model, target],
                }
            }
            other => anyhow::bail!(
                "unknown workload {other:?}, expected one of {}",
                ALL.join(", ")
            ),
        };
        out.push(w);
    }
    Ok(out)
}

/// The matrix products of an MLP's layers `(fan_in, fan_out)` at `batch` rows, as the fully
/// connected kernel runs them: `x·Wᵀ` per layer, and with `backward` also `dY·W` (every layer
/// but the first: the data need no gradient) and `dYᵀ·x`. Fixed operands: the timing covers
/// the products alone.
fn products<'a>(layers: &[(usize, usize)], batch: usize, backward: bool) -> Result<RunBatch<'a>> {
    let device = candle_core::Device::Cpu;
    let operands = layers
        .iter()
        .map(|&(fan_in, fan_out)| {
            Ok((
                Tensor::rand(0f32, 1f32, (batch, fan_in), &device)?,
                Tensor::rand(-0.05f32, 0.05f32, (fan_out, fan_in), &device)?,
                Tensor::rand(-1f32, 1f32, (batch, fan_out), &device)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(move |_, _| {
        for (l, (x, w, dy)) in operands.iter().enumerate() {
            x.matmul(&w.t()?)?;
            if backward {
                if l > 0 {
                    dy.matmul(w)?;
                }
                dy.t()?.matmul(x)?;
            }
        }
        Ok(())
    }))
}

/// What the trainer does per batch: the objective's step, momentum SGD, the constraints, and
/// the running training error.
fn train_step<'a>(model: &'a dyn Classifier, regularizer: Regularizer) -> Result<RunBatch<'a>> {
    let mut sgd = SgdMomentum::new(Param::of_model(model), 0.01, 0.5, 0.5, 1, 1.0, 0.0)?;
    let mut seed = 0u64;
    Ok(Box::new(move |xs, ys| {
        seed += 1;
        let step = regularizer.step(model, xs, ys, seed)?;
        anyhow::ensure!(
            step.loss.is_finite(),
            "training diverged: loss {}",
            step.loss
        );
        sgd.step(&step.grads)?;
        accuracy_counts(&step.logits, ys)?;
        Ok(())
    }))
}

/// How long each workload runs per round.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Batches until at least this many seconds have passed (at least one batch).
    Seconds(f64),
    /// Exactly this many batches (repeatable instruction counts under callgrind).
    Batches(usize),
}

/// Per-batch seconds of every workload, one entry per measured round.
///
/// Round 0 warms caches and the allocator and is not kept. Workloads are interleaved round
/// by round, so a change in machine load affects them all alike.
pub fn measure(
    workloads: &mut [Workload<'_>],
    batches: &[(Tensor, Tensor)],
    rounds: usize,
    budget: Budget,
) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(rounds); workloads.len()];
    let mut cursor = 0;
    for round in 0..=rounds {
        for (w, t) in workloads.iter_mut().zip(&mut times) {
            let start = Instant::now();
            // Timed: the evaluation loops pay for it too, once per pass over the data.
            let _frozen = Frozen::all(w.fixed.iter().copied())?;
            let mut n = 0usize;
            loop {
                let (xs, ys) = &batches[cursor % batches.len()];
                cursor += 1;
                (w.run)(xs, ys).with_context(|| format!("workload {}", w.name))?;
                n += 1;
                let done = match budget {
                    Budget::Seconds(s) => start.elapsed().as_secs_f64() >= s,
                    Budget::Batches(b) => n >= b,
                };
                if done {
                    break;
                }
            }
            if round > 0 {
                t.push(start.elapsed().as_secs_f64() / n as f64);
            }
        }
    }
    Ok(times)
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
