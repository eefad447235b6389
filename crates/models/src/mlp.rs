//! A fully connected network with ReLU or sigmoid hidden units.

use candle_core::{Result, Tensor};

use crate::kernels::{self, Gradients};
use crate::layers::{derive_seed, linear_stack, max_norm_all_weights};
use crate::{Activation, Arch, Classifier, MlpSpec, Mode, ModelSpec, ParamBuilder, Params};

/// `input → act(hidden[0]) → … → softmax(n_classes)`.
///
/// Checkpoint names: `h{i}.weight` `[out, in]`, `h{i}.bias`, `out.weight`, `out.bias`.
/// Initialisation is PyTorch's `nn.Linear` default, U(−1/√fan_in, 1/√fan_in).
pub struct Mlp {
    spec: ModelSpec,
    layers: Vec<(Tensor, Tensor)>,
    params: Params,
}

impl Mlp {
    pub fn new(spec: ModelSpec, mut pb: ParamBuilder<'_>) -> Result<Self> {
        let s = Self::arch(&spec).clone();
        let layers = linear_stack(&mut pb, 0, spec.input_dim(), &s.hidden, spec.n_classes)?;
        Ok(Self {
            spec,
            layers,
            params: pb.finish()?,
        })
    }

    /// Logits of a pass whose backward computes `grads`.
    fn logits(&self, xs: &Tensor, mode: Mode, grads: Gradients) -> Result<Tensor> {
        let s = Self::arch(&self.spec);
        let mut h = crate::preprocess::apply(&self.spec, &self.params, xs)?.flatten_from(1)?;
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            if let Mode::Train { seed } = mode {
                let dropout = if i == 0 {
                    s.input_dropout
                } else {
                    s.hidden_dropout
                };
                h = dropout.apply(&h, derive_seed(seed, i as u64))?;
            }
            h = kernels::linear(&h, w, b, grads)?;
            if i < last {
                h = match s.activation {
                    Activation::Relu => kernels::relu(&h)?,
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&h)?,
                };
            }
        }
        Ok(h)
    }

    fn arch(spec: &ModelSpec) -> &MlpSpec {
        match &spec.arch {
            Arch::Mlp(s) => s,
            _ => unreachable!("built only from an mlp spec"),
        }
    }
}

impl Classifier for Mlp {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    crate::classifier::forward_by_logits!();

    fn params(&self) -> &Params {
        &self.params
    }

    fn apply_constraints(&self) -> Result<()> {
        max_norm_all_weights(&self.params, Self::arch(&self.spec).max_norm)
    }
}
