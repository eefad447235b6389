//! Optimizers. candle-nn's SGD has no momentum, so pylearn2's momentum SGD is written here,
//! beside Adam. Gradients are detached before they are kept: a kept gradient otherwise holds
//! its step's whole graph alive (research/candle.md, Q4).

use candle_core::backprop::GradStore;
use candle_core::{bail, CpuStorage, DType, Device, Result, Shape, Tensor, Var};
use gauntlet_models::kernels;
use gauntlet_models::layers::apply_max_norm;
use gauntlet_models::Classifier;

use crate::OptimizerConfig;

/// A batch's parameter gradients as the parts its shards computed ([`crate::Regularizer::step`]):
/// each parameter's gradient is the sum of its parts in shard order. Kept apart so that an
/// update can sum them in its own pass over the parameter instead of a pass of its own.
#[derive(Debug)]
pub struct Gradients {
    parts: Vec<GradStore>,
}

impl Gradients {
    /// The gradients of shards in order.
    pub fn from_parts(parts: Vec<GradStore>) -> Self {
        Self { parts }
    }

    /// The parts of `param`'s gradient, in shard order; empty where it has none.
    pub fn parts(&self, param: &Tensor) -> Vec<&Tensor> {
        self.parts.iter().filter_map(|g| g.get(param)).collect()
    }

    /// `param`'s gradient, the sum of its parts from the first on.
    pub fn get(&self, param: &Tensor) -> Result<Option<Tensor>> {
        let mut parts = self.parts(param).into_iter();
        let Some(first) = parts.next() else {
            return Ok(None);
        };
        parts
            .try_fold(first.clone(), |sum, part| sum.add(part))
            .map(Some)
    }
}

impl From<GradStore> for Gradients {
    fn from(grads: GradStore) -> Self {
        Self::from_parts(vec![grads])
    }
}

/// A parameter an optimizer updates, and the max-norm its rows (one per output unit) are
/// clipped to after every update, if any ([`Classifier::max_norm`]).
#[derive(Clone, Debug)]
pub struct Param {
    pub var: Var,
    pub max_norm: Option<f64>,
}

impl Param {
    /// Every trainable parameter of `model`, in checkpoint order, with its constraint.
    pub fn of_model(model: &dyn Classifier) -> Vec<Param> {
        model
            .params()
            .vars()
            .map(|(name, var)| Param {
                var: var.clone(),
                max_norm: model.max_norm(name),
            })
            .collect()
    }

    /// Re-imposes the constraint, if there is one.
    fn constrain(&self) -> Result<()> {
        match self.max_norm {
            Some(c) => apply_max_norm(&self.var, c),
            None => Ok(()),
        }
    }
}

impl From<Var> for Param {
    fn from(var: Var) -> Self {
        Self {
            var,
            max_norm: None,
        }
    }
}

/// One update rule over a fixed list of parameters, each clipped to its max-norm after the
/// update.
pub trait Optimizer {
    /// Called before the first batch of each epoch (1-based), for per-epoch schedules.
    fn start_epoch(&mut self, epoch: usize);
    /// Applies one update from `grads`, then the max-norms; parameters without a gradient are
    /// not updated (but still clipped).
    fn step(&mut self, grads: &Gradients) -> Result<()>;
    /// The learning rate the next step will use.
    fn learning_rate(&self) -> f64;
    /// The momentum the next step will use, if the rule has one.
    fn momentum(&self) -> Option<f64>;
    /// Everything the rule carries between steps, so a resumed run continues exactly: copies,
    /// which later steps leave alone.
    fn state(&self) -> Result<OptimizerState>;
    /// Restores a [`Optimizer::state`] of an optimizer built with the same settings and
    /// parameters (checked by count and shape).
    fn set_state(&mut self, state: OptimizerState) -> Result<()>;
}

/// An optimizer's state between steps: its step count (the learning-rate schedule position)
/// and its per-parameter buffers (SGD's velocities; Adam's first then second moments).
#[derive(Clone, Debug)]
pub struct OptimizerState {
    pub steps: u64,
    pub tensors: Vec<Tensor>,
}

/// Replaces `buffers` by `new`, which must match them in count and shapes.
fn restore_buffers(what: &str, buffers: &mut [Tensor], new: &[Tensor]) -> Result<()> {
    if new.len() != buffers.len() {
        bail!(
            "{what}: saved state has {} buffers, expected {}",
            new.len(),
            buffers.len()
        )
    }
    for (i, (old, new)) in buffers.iter().zip(new).enumerate() {
        if old.shape() != new.shape() {
            bail!(
                "{what}: saved buffer {i} has shape {:?}, expected {:?}",
                new.shape(),
                old.shape()
            )
        }
    }
    for (old, new) in buffers.iter_mut().zip(new) {
        // A copy: the buffers may be updated in place, and `new` is the caller's.
        *old = new.to_dtype(old.dtype())?.to_device(old.device())?.copy()?;
    }
    Ok(())
}

/// Builds the optimizer of `config` over `params`.
pub fn build(config: &OptimizerConfig, params: Vec<Param>) -> Result<Box<dyn Optimizer>> {
    Ok(match *config {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            final_momentum,
            momentum_saturate,
            lr_decay,
            min_lr,
        } => Box::new(SgdMomentum::new(
            params,
            lr,
            momentum,
            final_momentum.unwrap_or(momentum),
            momentum_saturate,
            lr_decay,
            min_lr,
        )?),
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => Box::new(Adam::new(params, lr, beta1, beta2, eps)?),
    })
}

/// pylearn2's SGD with (Hinton) momentum and its `ExponentialDecay` and `MomentumAdjustor`.
pub struct SgdMomentum {
    params: Vec<Param>,
    velocity: Vec<Velocity>,
    lr: f64,
    decay: f64,
    min_lr: f64,
    start_momentum: f64,
    final_momentum: f64,
    saturate: usize,
    momentum: f64,
    n_steps: u64,
}

impl SgdMomentum {
    pub fn new<P: Into<Param>>(
        params: impl IntoIterator<Item = P>,
        lr: f64,
        start_momentum: f64,
        final_momentum: f64,
        saturate: usize,
        decay: f64,
        min_lr: f64,
    ) -> Result<Self> {
        let params: Vec<Param> = params.into_iter().map(Into::into).collect();
        let velocity = params
            .iter()
            .map(|p| Velocity::zeros(&p.var))
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            velocity,
            lr,
            decay,
            min_lr,
            start_momentum,
            final_momentum,
            saturate,
            momentum: start_momentum,
            n_steps: 0,
        })
    }
}

impl Optimizer for SgdMomentum {
    fn start_epoch(&mut self, epoch: usize) {
        // pylearn2's MomentumAdjustor: linear from epoch 1 to `saturate`, flat after.
        let progress = if self.saturate <= 1 {
            1.0
        } else {
            ((epoch.max(1) - 1) as f64 / (self.saturate - 1) as f64).min(1.0)
        };
        self.momentum =
            self.start_momentum + (self.final_momentum - self.start_momentum) * progress;
    }

    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let lr = self.learning_rate();
        for (param, velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let (var, max_norm) = (param.var.as_tensor(), param.max_norm);
            let parts = grads.parts(var);
            let done = match velocity {
                Velocity::Host { data, .. } if !parts.is_empty() => {
                    kernels::sgd_momentum(var, data, &parts, self.momentum, lr, max_norm)?
                }
                _ => false,
            };
            if done {
                continue;
            }
            if let Some(grad) = grads.get(var)? {
                let v = ((velocity.tensor()? * self.momentum)? - (grad.detach() * lr)?)?;
                param.var.set(&(var + &v)?)?;
                *velocity = Velocity::from_tensor(v)?;
            }
            param.constrain()?;
        }
        self.n_steps += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        (self.lr / self.decay.powf(self.n_steps as f64)).max(self.min_lr)
    }

    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }

    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            steps: self.n_steps,
            // Snapshots: host velocities are updated in place (kernels::sgd_momentum).
            tensors: self
                .velocity
                .iter()
                .map(Velocity::tensor)
                .collect::<Result<_>>()?,
        })
    }

    fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let mut buffers = self.state()?.tensors;
        restore_buffers("sgd", &mut buffers, &state.tensors)?;
        for (velocity, buffer) in self.velocity.iter_mut().zip(buffers) {
            *velocity = Velocity::from_tensor(buffer)?;
        }
        self.n_steps = state.steps;
        Ok(())
    }
}

/// A parameter's momentum velocity: in the optimizer's own memory on the CPU, so that the
/// weight and its velocity are updated in one pass ([`kernels::sgd_momentum`]); a
/// tensor elsewhere.
enum Velocity {
    Host { data: CpuStorage, shape: Shape },
    Tensor(Tensor),
}

impl Velocity {
    fn zeros(var: &Var) -> Result<Self> {
        Self::from_tensor(var.zeros_like()?)
    }

    /// The velocity as a tensor that later steps leave alone: a copy of a host velocity, the
    /// tensor itself otherwise (the tensor ops replace it rather than change it).
    fn tensor(&self) -> Result<Tensor> {
        match self {
            Velocity::Host { data, shape } => match data {
                CpuStorage::F32(v) => Tensor::from_slice(v, shape, &Device::Cpu),
                CpuStorage::F64(v) => Tensor::from_slice(v, shape, &Device::Cpu),
                _ => bail!("sgd: a host velocity is f32 or f64"),
            },
            Velocity::Tensor(t) => Ok(t.clone()),
        }
    }

    /// `v` as a velocity: copied to host memory where it is an f32 or f64 CPU tensor.
    fn from_tensor(v: Tensor) -> Result<Self> {
        Ok(match v.dtype() {
            DType::F32 | DType::F64 if v.device().is_cpu() => {
                let shape = v.shape().clone();
                let flat = v.flatten_all()?;
                let data = match v.dtype() {
                    DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
                    _ => CpuStorage::F64(flat.to_vec1::<f64>()?),
                };
                Velocity::Host { data, shape }
            }
            _ => Velocity::Tensor(v),
        })
    }
}

/// Adam with bias correction.
pub struct Adam {
    params: Vec<Param>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    n_steps: i32,
}

impl Adam {
    pub fn new<P: Into<Param>>(
        params: impl IntoIterator<Item = P>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> Result<Self> {
        let params: Vec<Param> = params.into_iter().map(Into::into).collect();
        let zeros = || {
            params
                .iter()
                .map(|p| p.var.zeros_like())
                .collect::<Result<Vec<_>>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(Self {
            params,
            m,
            v,
            lr,
            beta1,
            beta2,
            eps,
            n_steps: 0,
        })
    }
}

impl Optimizer for Adam {
    fn start_epoch(&mut self, _epoch: usize) {}

    fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.n_steps += 1;
        let c1 = 1.0 - self.beta1.powi(self.n_steps);
        let c2 = 1.0 - self.beta2.powi(self.n_steps);
        for ((param, m), v) in self
            .params
            .iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let var = &param.var;
            if let Some(grad) = grads.get(var.as_tensor())? {
                let grad = grad.detach();
                *m = ((&*m * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
                *v = ((&*v * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
                let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + self.eps)?)?;
                var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            }
            param.constrain()?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn momentum(&self) -> Option<f64> {
        None
    }

    fn state(&self) -> Result<OptimizerState> {
        // Adam replaces its moments every step: clones stay snapshots.
        Ok(OptimizerState {
            steps: self.n_steps as u64,
            tensors: self.m.iter().chain(&self.v).cloned().collect(),
        })
    }

    fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let n = self.m.len();
        if state.tensors.len() != 2 * n {
            bail!(
                "adam: saved state has {} buffers, expected {}",
                state.tensors.len(),
                2 * n
            )
        }
        let Ok(steps) = i32::try_from(state.steps) else {
            bail!("adam: saved step count {} is out of range", state.steps)
        };
        restore_buffers("adam first moments", &mut self.m, &state.tensors[..n])?;
        restore_buffers("adam second moments", &mut self.v, &state.tensors[n..])?;
        self.n_steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sgd_momentum_follows_the_hinton_form_and_schedules() -> Result<()> {
        // f(θ) = θ²/2, g = θ. θ0 = 1, lr 0.1, μ 0.5:
        // v1 = -0.1, θ1 = 0.9; v2 = 0.5·(-0.1) - 0.1·0.9 = -0.14, θ2 = 0.76.
        let theta = Var::new(&[1f32], &Device::Cpu)?;
        let mut opt = SgdMomentum::new(vec![theta.clone()], 0.1, 0.5, 0.9, 5, 1.0, 0.0)?;
        opt.start_epoch(1);
        for _ in 0..2 {
            let grads = (theta.as_tensor().sqr()? * 0.5)?.sum_all()?.backward()?;
            opt.step(&grads.into())?;
        }
        assert!((theta.as_tensor().to_vec1::<f32>()?[0] - 0.76).abs() < 1e-6);
        opt.start_epoch(3);
        assert!((opt.momentum().unwrap() - 0.7).abs() < 1e-12);
        opt.start_epoch(100);
        assert_eq!(opt.momentum(), Some(0.9));

        // The state is a snapshot: the in-place update of the next step leaves it alone.
        let saved = opt.state()?.tensors[0].to_vec1::<f32>()?;
        let grads = (theta.as_tensor().sqr()? * 0.5)?.sum_all()?.backward()?;
        opt.step(&grads.into())?;
        assert_eq!(opt.state()?.tensors[0].to_vec1::<f32>()?.len(), 1);
        assert_ne!(opt.state()?.tensors[0].to_vec1::<f32>()?, saved);
        assert!((saved[0] + 0.14).abs() < 1e-6, "{saved:?}");

        let mut decaying = SgdMomentum::new(Vec::<Param>::new(), 0.1, 0.5, 0.5, 1, 2.0, 0.03)?;
        decaying.step(&theta.as_tensor().sum_all()?.backward()?.into())?;
        assert!((decaying.learning_rate() - 0.05).abs() < 1e-12);
        decaying.step(&theta.as_tensor().sum_all()?.backward()?.into())?;
        assert_eq!(decaying.learning_rate(), 0.03);
        Ok(())
    }

    #[test]
    fn adam_first_step_moves_by_lr() -> Result<()> {
        // With bias correction the first Adam step is lr·sign(g).
        let theta = Var::new(&[2f32, -3.0], &Device::Cpu)?;
        let mut opt = Adam::new(vec![theta.clone()], 0.01, 0.9, 0.999, 1e-8)?;
        opt.step(&theta.as_tensor().sqr()?.sum_all()?.backward()?.into())?;
        let got = theta.as_tensor().to_vec1::<f32>()?;
        assert!(
            (got[0] - 1.99).abs() < 1e-6 && (got[1] + 2.99).abs() < 1e-6,
            "{got:?}"
        );
        Ok(())
    }
}
