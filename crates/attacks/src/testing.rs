//! Small models and inputs shared by the unit tests.

use candle_core::{DType, Device, Result, Tensor};
use gauntlet_models::{build, Arch, Classifier, MaxoutMlpSpec, MlpSpec, Mode, ModelSpec, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `logits = W x` with fixed weights `W`, `[n_classes, input_dim]`, and no parameters.
pub struct LinearModel {
    weight: Tensor,
    spec: ModelSpec,
    params: Params,
}

impl LinearModel {
    pub fn new<const N: usize>(weight: &[[f32; N]]) -> Result<Self> {
        // A hidden-layer-free MLP spec describes the same function.
        let arch = Arch::Mlp(MlpSpec {
            hidden: vec![],
            ..MlpSpec::default()
        });
        Ok(Self {
            weight: Tensor::from_vec(weight.concat(), (weight.len(), N), &Device::Cpu)?,
            spec: ModelSpec::new(arch, [1, 1, N], weight.len()),
            params: Params::default(),
        })
    }
}

impl Classifier for LinearModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&self, xs: &Tensor, _mode: Mode) -> Result<Tensor> {
        xs.flatten_from(1)?.matmul(&self.weight.t()?)
    }

    fn params(&self) -> &Params {
        &self.params
    }
}

/// A Maxout MLP on 4×4 grey images in 3 classes, 8 units × 3 pieces, with weights large
/// enough (U(−0.5, 0.5)) that its loss visibly depends on the input.
pub fn small_maxout() -> Result<Box<dyn Classifier>> {
    let arch = Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![8],
        pieces: 3,
        init_range: 0.5,
        ..MaxoutMlpSpec::default()
    });
    build(&ModelSpec::new(arch, [1, 4, 4], 3), 1, &Device::Cpu)
}

/// `n` images `[n, 1, 4, 4]` from U(0.2, 0.8) and labels `i mod 3`.
pub fn inputs(n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels: Vec<f32> = (0..n * 16).map(|_| rng.random_range(0.2..0.8)).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    Ok((
        Tensor::from_vec(pixels, (n, 1, 4, 4), &Device::Cpu)?,
        Tensor::from_vec(labels, n, &Device::Cpu)?.to_dtype(DType::U32)?,
    ))
}

/// Targets `label + 1 mod 3`, for the 3-class test models.
pub fn next_class(labels: &Tensor) -> Result<Tensor> {
    let ids: Vec<u32> = labels
        .to_vec1::<u32>()?
        .iter()
        .map(|y| (y + 1) % 3)
        .collect();
    Tensor::from_vec(ids, labels.dims1()?, labels.device())
}

/// A model with its logits multiplied by `scale`: with a large scale the softmax is one-hot in
/// f32, so the cross-entropy input gradient is exactly zero (a masked gradient) while the
/// decision, and hence the true robustness, is that of the inner model.
pub struct Saturated {
    inner: Box<dyn Classifier>,
    scale: f64,
}

impl Saturated {
    pub fn new(inner: Box<dyn Classifier>, scale: f64) -> Self {
        Self { inner, scale }
    }
}

impl Classifier for Saturated {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.inner.forward(xs, mode)?.affine(self.scale, 0.0)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }
}

/// A model that counts its forward passes and its input-gradient passes (each a forward and a
/// backward pass).
pub struct Counting {
    inner: Box<dyn Classifier>,
    pub forwards: std::sync::atomic::AtomicUsize,
    pub gradients: std::sync::atomic::AtomicUsize,
}

impl Counting {
    pub fn new(inner: Box<dyn Classifier>) -> Self {
        Self {
            inner,
            forwards: Default::default(),
            gradients: Default::default(),
        }
    }

    /// (forward passes, gradient passes) so far, and both counters reset.
    pub fn take(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (
            self.forwards.swap(0, SeqCst),
            self.gradients.swap(0, SeqCst),
        )
    }
}

impl Classifier for Counting {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forwards
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.forward(xs, mode)
    }

    fn loss_and_input_grad(
        &self,
        xs: &Tensor,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<gauntlet_models::InputGrad> {
        self.gradients
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.loss_and_input_grad(xs, labels, mode)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }
}

/// A model whose logits are shifted so that they are all zero at the grey image (every pixel
/// 0.5): its classes then split the input box between them instead of one class winning
/// everywhere, as with the raw randomly initialised [`small_maxout`].
pub struct Centered {
    inner: Box<dyn Classifier>,
    offset: Tensor,
}

impl Centered {
    pub fn new(inner: Box<dyn Classifier>) -> Result<Self> {
        let [c, h, w] = inner.spec().input;
        let grey = Tensor::full(0.5f32, (1, c, h, w), &Device::Cpu)?;
        let offset = inner.forward(&grey, Mode::Eval)?.detach();
        Ok(Self { inner, offset })
    }
}

impl Classifier for Centered {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.inner.forward(xs, mode)?.broadcast_sub(&self.offset)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }
}

/// [`small_maxout`], [`Centered`]: a small nonlinear model with all three classes in use.
pub fn balanced_maxout() -> Result<Box<dyn Classifier>> {
    Ok(Box::new(Centered::new(small_maxout()?)?))
}

/// [`balanced_maxout`] with 5 classes and 16 units, for losses that need more than 3 classes
/// (targeted DLR needs 4).
pub fn wide_maxout() -> Result<Box<dyn Classifier>> {
    let arch = Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![16],
        pieces: 3,
        init_range: 0.5,
        ..MaxoutMlpSpec::default()
    });
    let inner = build(&ModelSpec::new(arch, [1, 4, 4], 5), 2, &Device::Cpu)?;
    Ok(Box::new(Centered::new(inner)?))
}

/// A model that sees its input rounded to `levels` grey levels, the rounding done off the
/// autograd graph: its input gradient is zero everywhere (a step function, the extreme of
/// gradient masking), while a change that crosses a rounding boundary still changes its
/// decision.
pub struct Quantized {
    inner: Box<dyn Classifier>,
    levels: f64,
}

impl Quantized {
    pub fn new(inner: Box<dyn Classifier>, levels: f64) -> Self {
        Self { inner, levels }
    }
}

impl Classifier for Quantized {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let rounded = xs
            .detach()
            .affine(self.levels, 0.0)?
            .round()?
            .affine(1.0 / self.levels, 0.0)?;
        self.inner.forward(&rounded, mode)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }
}
