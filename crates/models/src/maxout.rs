//! The Maxout MLP of Goodfellow et al. (2013), as in pylearn2's `mnist_pi.yaml`.

use candle_core::{Result, Tensor};

use crate::layers::{apply_max_norm, derive_seed, linear, maxout};
use crate::{Arch, Classifier, MaxoutMlpSpec, Mode, ModelSpec, ParamBuilder, Params};

/// `input → maxout(units[0] × pieces) → … → softmax(n_classes)`, dropout before every layer.
///
/// Checkpoint names: `h{i}.weight` `[units·pieces, in]`, `h{i}.bias` `[units·pieces]`,
/// `out.weight` `[n_classes, units_last]`, `out.bias`. Pieces of unit `j` are rows
/// `j·pieces .. (j+1)·pieces`.
pub struct MaxoutMlp {
    spec: ModelSpec,
    hidden: Vec<(Tensor, Tensor)>,
    out: (Tensor, Tensor),
    params: Params,
}

impl MaxoutMlp {
    pub fn new(spec: ModelSpec, mut pb: ParamBuilder<'_>) -> Result<Self> {
        let s = Self::arch(&spec).clone();
        let mut fan_in = spec.input_dim();
        let mut hidden = Vec::new();
        for (i, &units) in s.units.iter().enumerate() {
            let layer = pb.scope(&format!("h{i}"), |pb| {
                Ok((
                    pb.uniform("weight", (units * s.pieces, fan_in), s.init_range)?,
                    pb.constant("bias", units * s.pieces, 0.0)?,
                ))
            })?;
            hidden.push(layer);
            fan_in = units;
        }
        let out = pb.scope("out", |pb| {
            Ok((
                pb.uniform("weight", (spec.n_classes, fan_in), s.init_range)?,
                pb.constant("bias", spec.n_classes, 0.0)?,
            ))
        })?;
        Ok(Self {
            spec,
            hidden,
            out,
            params: pb.finish()?,
        })
    }

    fn arch(spec: &ModelSpec) -> &MaxoutMlpSpec {
        match &spec.arch {
            Arch::MaxoutMlp(s) => s,
            _ => unreachable!("built only from a maxout-mlp spec"),
        }
    }
}

impl Classifier for MaxoutMlp {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let s = Self::arch(&self.spec);
        let mut h = crate::preprocess::apply(&self.spec, &self.params, xs)?.flatten_from(1)?;
        for (i, (w, b)) in self.hidden.iter().enumerate() {
            if let Mode::Train { seed } = mode {
                let dropout = if i == 0 {
                    s.input_dropout
                } else {
                    s.hidden_dropout
                };
                h = dropout.apply(&h, derive_seed(seed, i as u64))?;
            }
            h = maxout(&linear(&h, w, b)?, s.pieces)?;
        }
        if let Mode::Train { seed } = mode {
            h = s
                .hidden_dropout
                .apply(&h, derive_seed(seed, self.hidden.len() as u64))?;
        }
        linear(&h, &self.out.0, &self.out.1)
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
