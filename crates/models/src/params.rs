//! Parameter storage: named trainable [`Var`]s and fixed buffers, created from a seeded
//! generator or from a checkpoint's tensors.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// The named tensors of a model, in creation order. Names are the checkpoint keys.
#[derive(Clone, Debug, Default)]
pub struct Params {
    vars: Vec<(String, Var)>,
    buffers: Vec<(String, Tensor)>,
}

impl Params {
    /// Trainable parameters in a stable order.
    pub fn vars(&self) -> impl Iterator<Item = &(String, Var)> {
        self.vars.iter()
    }

    /// Fixed, non-trainable tensors (preprocessing matrices).
    pub fn buffers(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.buffers.iter()
    }

    /// Number of trainable scalars.
    pub fn n_scalars(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every tensor by name, detached: what a checkpoint stores.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let vars = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()));
        vars.chain(self.buffers.iter().map(|(n, t)| (n.clone(), t.clone())))
            .collect()
    }

    /// A deep copy of the trainable values (for keeping the best model during training).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .map(|(_, v)| v.as_detached_tensor().copy())
            .collect()
    }

    /// Restores values taken by [`Params::snapshot`].
    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        if snapshot.len() != self.vars.len() {
            bail!(
                "snapshot has {} tensors, the model {}",
                snapshot.len(),
                self.vars.len()
            )
        }
        for ((_, var), value) in self.vars.iter().zip(snapshot) {
            var.set(value)?;
        }
        Ok(())
    }
}

enum Source<'a> {
    // Boxed: the generator's state is large and the enum lives in every builder.
    Init(Box<ChaCha8Rng>),
    Load(&'a HashMap<String, Tensor>),
}

/// Creates a model's parameters by name, like candle-nn's `VarBuilder` with `pp`, but drawing
/// initial values from a seeded generator or taking them from a checkpoint (checked by shape).
pub struct ParamBuilder<'a> {
    source: Source<'a>,
    device: Device,
    prefix: Vec<String>,
    params: Params,
    /// Stored tensors read and dropped (PyTorch's `num_batches_tracked`).
    ignored: Vec<String>,
}

impl<'a> ParamBuilder<'a> {
    /// Fresh parameters drawn from a generator seeded with `seed`.
    pub fn init(seed: u64, device: &Device) -> Self {
        Self {
            source: Source::Init(Box::new(ChaCha8Rng::seed_from_u64(seed))),
            device: device.clone(),
            prefix: Vec::new(),
            params: Params::default(),
            ignored: Vec::new(),
        }
    }

    /// Parameters taken from `tensors` (a checkpoint); every name must be present with the
    /// expected shape, and [`ParamBuilder::finish`] rejects tensors that no layer asked for.
    pub fn load(tensors: &'a HashMap<String, Tensor>, device: &Device) -> Self {
        Self {
            source: Source::Load(tensors),
            device: device.clone(),
            prefix: Vec::new(),
            params: Params::default(),
            ignored: Vec::new(),
        }
    }

    /// Runs `f` with `name` pushed on the name prefix (`"h0"` then `"weight"` gives `"h0.weight"`).
    pub fn scope<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.prefix.push(name.to_string());
        let res = f(self);
        self.prefix.pop();
        res
    }

    fn full_name(&self, name: &str) -> String {
        let mut parts = self.prefix.clone();
        parts.push(name.to_string());
        parts.join(".")
    }

    fn loaded(&self, full: &str, shape: &Shape) -> Result<Option<Tensor>> {
        let Source::Load(tensors) = &self.source else {
            return Ok(None);
        };
        let Some(t) = tensors.get(full) else {
            bail!("tensor `{full}` is missing (expected shape {shape:?})")
        };
        if t.shape() != shape {
            bail!(
                "tensor `{full}` has shape {:?}, expected {shape:?}",
                t.shape()
            )
        }
        if t.dtype() != DType::F32 {
            bail!("tensor `{full}` has dtype {:?}, expected f32", t.dtype())
        }
        // A NaN or infinite weight makes every logit NaN, and arg-max would still pick a class.
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "tensor `{full}` has a non-finite value ({}) at flat index {i} of {}",
                values[i],
                values.len()
            )
        }
        Ok(Some(t.to_device(&self.device)?))
    }

    fn add_var(&mut self, full: String, value: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().clone();
        self.params.vars.push((full, var));
        Ok(t)
    }

    fn drawn(
        &mut self,
        shape: &Shape,
        mut draw: impl FnMut(&mut ChaCha8Rng) -> f32,
    ) -> Result<Tensor> {
        let Source::Init(rng) = &mut self.source else {
            unreachable!("only called when initialising")
        };
        let values: Vec<f32> = (0..shape.elem_count()).map(|_| draw(rng)).collect();
        Tensor::from_vec(values, shape.clone(), &self.device)
    }

    fn param(
        &mut self,
        name: &str,
        shape: Shape,
        draw: impl FnMut(&mut ChaCha8Rng) -> f32,
    ) -> Result<Tensor> {
        let full = self.full_name(name);
        let value = match self.loaded(&full, &shape)? {
            Some(t) => t,
            None => self.drawn(&shape, draw)?,
        };
        self.add_var(full, value)
    }

    /// A trainable tensor initialised from U(-range, range).
    pub fn uniform(&mut self, name: &str, shape: impl Into<Shape>, range: f64) -> Result<Tensor> {
        let range = range as f32;
        self.param(name, shape.into(), |rng| rng.random_range(-range..=range))
    }

    /// A trainable tensor initialised from N(0, std²).
    pub fn normal(&mut self, name: &str, shape: impl Into<Shape>, std: f64) -> Result<Tensor> {
        let normal =
            Normal::new(0f32, std as f32).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.param(name, shape.into(), |rng| normal.sample(rng))
    }

    /// A trainable tensor initialised to a constant.
    pub fn constant(&mut self, name: &str, shape: impl Into<Shape>, value: f64) -> Result<Tensor> {
        self.param(name, shape.into(), |_| value as f32)
    }

    /// A fixed tensor: `compute` gives its value when initialising; loading takes the stored one.
    pub fn buffer(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        compute: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let full = self.full_name(name);
        let value = match self.loaded(&full, &shape)? {
            Some(t) => t,
            None => {
                let t = compute()?.to_device(&self.device)?;
                if t.shape() != &shape {
                    bail!(
                        "buffer `{full}` computed with shape {:?}, expected {shape:?}",
                        t.shape()
                    )
                }
                t
            }
        };
        self.params.buffers.push((full, value.clone()));
        Ok(value)
    }

    /// A stored tensor this layer does not use but whose presence is no error (PyTorch's
    /// `num_batches_tracked` beside a batch norm's statistics).
    pub fn ignore(&mut self, name: &str) {
        let full = self.full_name(name);
        self.ignored.push(full);
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters created; when loading, fails on tensors that no layer used.
    pub fn finish(self) -> Result<Params> {
        if let Source::Load(tensors) = &self.source {
            let used: std::collections::HashSet<&str> = self
                .params
                .vars
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(self.params.buffers.iter().map(|(n, _)| n.as_str()))
                .chain(self.ignored.iter().map(String::as_str))
                .collect();
            let mut unused: Vec<&str> = tensors
                .keys()
                .map(String::as_str)
                .filter(|n| !used.contains(n))
                .collect();
            if !unused.is_empty() {
                unused.sort_unstable();
                bail!(
                    "tensors not used by the architecture: {}",
                    unused.join(", ")
                )
            }
        }
        Ok(self.params)
    }
}
