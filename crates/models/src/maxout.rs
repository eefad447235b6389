//! The Maxout MLP of Goodfellow et al. (2013), as in pylearn2's `mnist_pi.yaml`.

use candle_core::{DType, Result, Tensor, D};

use crate::kernels::{self, Gradients};
use crate::layers::{derive_seed, linear, max_norm_all_weights, maxout};
use crate::{
    autograd_input_grad, Arch, Classifier, InputGrad, MaxoutMlpSpec, Mode, ModelSpec, ParamBuilder,
    Params,
};

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

    /// Logits of a pass whose backward computes `grads`.
    fn logits(&self, xs: &Tensor, mode: Mode, grads: Gradients) -> Result<Tensor> {
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
            h = maxout(&kernels::linear(&h, w, b, grads)?, s.pieces)?;
        }
        if let Mode::Train { seed } = mode {
            h = s
                .hidden_dropout
                .apply(&h, derive_seed(seed, self.hidden.len() as u64))?;
        }
        kernels::linear(&h, &self.out.0, &self.out.1, grads)
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

    crate::classifier::forward_by_logits!();

    fn params(&self) -> &Params {
        &self.params
    }

    /// In eval mode without preprocessing, a hand-written backward that computes the input
    /// gradient only: Candle's autograd would also compute every weight gradient (its matmul
    /// backward always does both operands), which made FGSM and PGD steps ~1.5× slower.
    fn loss_and_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        if mode != Mode::Eval || self.spec.preprocess != crate::preprocess::Preprocess::None {
            return autograd_input_grad(self, xs, labels, mode);
        }
        let pieces = Self::arch(&self.spec).pieces;
        let xs = xs.detach();
        let mut h = xs.flatten_from(1)?;
        let mut masks = Vec::with_capacity(self.hidden.len());
        for (w, b) in &self.hidden {
            let z = linear(&h, w, b)?;
            let (batch, features) = z.dims2()?;
            let z = z.reshape((batch, features / pieces, pieces))?;
            let max = z.max_keepdim(D::Minus1)?;
            // Every tied piece gets the full gradient, as Candle's max backward does.
            masks.push(z.broadcast_eq(&max)?.to_dtype(z.dtype())?);
            h = max.squeeze(D::Minus1)?;
        }
        let logits = linear(&h, &self.out.0, &self.out.1)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let labels = labels.to_dtype(DType::U32)?;
        let loss = log_probs
            .gather(&labels.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg()?;
        let classes = Tensor::arange(0u32, self.spec.n_classes as u32, xs.device())?;
        let onehot = labels
            .unsqueeze(1)?
            .broadcast_eq(&classes.unsqueeze(0)?)?
            .to_dtype(logits.dtype())?;
        // d(sum of per-example CE)/d logits = softmax − one-hot, row by row. The true class's
        // entry, p_y − 1, is taken as −Σ_{j≠y} p_j: a confident model has p_y within f32
        // rounding of 1, and p_y − 1 would lose all of the (tiny) gradient.
        let others = log_probs.exp()?.mul(&(1.0 - &onehot)?)?;
        let grad_logits = (&others - onehot.broadcast_mul(&others.sum_keepdim(1)?)?)?;
        let mut grad = grad_logits.matmul(&self.out.0)?;
        for ((w, _), mask) in self.hidden.iter().zip(&masks).rev() {
            let (batch, units, pieces) = mask.dims3()?;
            let grad_z = mask
                .broadcast_mul(&grad.unsqueeze(2)?)?
                .reshape((batch, units * pieces))?;
            grad = grad_z.matmul(w)?;
        }
        Ok(InputGrad {
            loss,
            logits,
            grad: grad.reshape(xs.shape())?,
        })
    }

    fn apply_constraints(&self) -> Result<()> {
        max_norm_all_weights(&self.params, Self::arch(&self.spec).max_norm)
    }
}
