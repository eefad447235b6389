//! A fully connected network with ReLU or sigmoid hidden units.

use candle_core::{Result, Tensor};

use crate::layers::{apply_max_norm, derive_seed, linear};
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
        let mut fan_in = spec.input_dim();
        let mut layers = Vec::new();
        let sizes = s
            .hidden
            .iter()
            .copied()
            .chain(std::iter::once(spec.n_classes));
        for (i, fan_out) in sizes.enumerate() {
            let name = if i == s.hidden.len() {
                "out".to_string()
            } else {
                format!("h{i}")
            };
            let range = 1.0 / (fan_in as f64).sqrt();
            layers.push(pb.scope(&name, |pb| {
                Ok((
                    pb.uniform("weight", (fan_out, fan_in), range)?,
                    pb.uniform("bias", fan_out, range)?,
                ))
            })?);
            fan_in = fan_out;
        }
        Ok(Self {
            spec,
            layers,
            params: pb.finish()?,
        })
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

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
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
            h = linear(&h, w, b)?;
            if i < last {
                h = match s.activation {
                    Activation::Relu => h.relu()?,
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&h)?,
                };
            }
        }
        Ok(h)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn apply_constraints(&self) -> Result<()> {
        if let Some(c) = Self::arch(&self.spec).max_norm {
            for (name, var) in self.params.vars() {
                if name.ends_with("weight") {
                    apply_max_norm(var, c)?;
                }
            }
        }
        Ok(())
    }
}
