//! The [`Classifier`] trait every model implements, and the autograd input gradient.

use candle_core::{Result, Tensor, Var};

use crate::{loss::per_example_cross_entropy, ModelSpec, Params};

/// Whether stochastic layers behave as in training.
///
/// Attacks use [`Mode::Eval`]. In [`Mode::Train`] dropout masks are drawn from `seed`, so a
/// training step is reproducible and two passes with different seeds get independent masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { seed: u64 },
}

impl Mode {
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

/// Per-example loss, logits and input gradient of one batch.
#[derive(Clone, Debug)]
pub struct InputGrad {
    /// Cross-entropy of each example, `[B]`.
    pub loss: Tensor,
    /// `[B, n_classes]`, detached.
    pub logits: Tensor,
    /// Gradient of the *sum* of per-example losses with respect to the input, so each row is
    /// that example's own gradient; same shape as the input, detached.
    pub grad: Tensor,
}

/// A model's weights held as they are: while the guard lives, the model reuses what it
/// prepared from them for its products ([`Classifier::freeze`]); dropping it ends the hold
/// (the model may keep its buffers, to be written over by the next freeze).
#[must_use = "what the model prepared is dropped with the guard"]
pub struct Frozen<'a> {
    holds: Vec<&'a dyn Thaw>,
}

/// A model's side of a [`Frozen`] guard: told when a guard that held it drops.
pub trait Thaw: Sync {
    fn thaw(&self);
}

impl<'a> Frozen<'a> {
    /// A guard that holds nothing: a model without anything to prepare.
    pub fn none() -> Self {
        Frozen { holds: Vec::new() }
    }

    /// A guard that thaws `model` when it drops; the model has counted the hold.
    pub fn holding(model: &'a dyn Thaw) -> Self {
        Frozen { holds: vec![model] }
    }

    /// One guard for all of `models` (an ensemble's members, a source and a target).
    pub fn all(models: impl IntoIterator<Item = &'a dyn Classifier>) -> Result<Self> {
        let mut frozen = Frozen::none();
        for model in models {
            frozen.holds.append(&mut model.freeze()?.holds);
        }
        Ok(frozen)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for model in self.holds.drain(..) {
            model.thaw();
        }
    }
}

/// An image classifier whose inputs live in `[0, 1]`; preprocessing happens inside the model.
pub trait Classifier: Send + Sync {
    /// The description this model was built from.
    fn spec(&self) -> &ModelSpec;

    /// Logits for a batch.
    ///
    /// # Shapes
    /// - `xs`: `(batch, channels, height, width)`, values in `[0, 1]`
    /// - returns: `(batch, n_classes)`
    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor>;

    /// [`Classifier::forward`] for a pass whose backward is asked for the input's gradient
    /// only, so that layers may skip their weight gradients ([`crate::kernels::Gradients`]):
    /// what an attack needs. The logits are the same; by default this is `forward`.
    fn forward_input_grad(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward(xs, mode)
    }

    /// The trainable parameters and fixed buffers, in checkpoint order.
    fn params(&self) -> &Params;

    /// The max-norm the rows of parameter `name` (as in [`Classifier::params`]) are clipped to
    /// after each update, if it has one; none by default. An optimizer built over
    /// `gauntlet_train::Param::of_model` applies them itself.
    fn max_norm(&self, _name: &str) -> Option<f64> {
        None
    }

    /// Re-imposes the parameter constraints ([`Classifier::max_norm`]) after an update.
    fn apply_constraints(&self) -> Result<()> {
        for (name, var) in self.params().vars() {
            if let Some(c) = self.max_norm(name) {
                crate::layers::apply_max_norm(var, c)?;
            }
        }
        Ok(())
    }

    /// Prepares the weights for the passes to come (a linear layer's transposed weight) and
    /// uses what it made until the guard drops, in every shard and call meanwhile: an
    /// evaluation's batches, an attack's iterations. Nothing may change the weights while a
    /// guard is held (a pass would read the stale copy). Guards nest. Holds nothing by default.
    fn freeze(&self) -> Result<Frozen<'_>> {
        Ok(Frozen::none())
    }

    fn n_classes(&self) -> usize {
        self.spec().n_classes
    }

    /// Told of `rows` examples' backward passes that the model cannot see: an attack that
    /// takes several gradients from one [`Classifier::forward_input_grad`] graph (DeepFool, one
    /// per candidate class) reports the extra ones here, so a wrapper counting passes counts
    /// them. A no-op by default.
    fn note_backward(&self, _rows: usize) {}

    /// Whether a query budget around the model is spent: attacks that honour a budget stop
    /// at their next step when it is (`max-queries`). Never, by default.
    fn exhausted(&self) -> bool {
        false
    }

    /// Per-example cross-entropy against `labels` and its gradient with respect to `xs`.
    fn loss_and_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        autograd_input_grad(self, xs, labels, mode)
    }
}

/// [`Classifier::loss_and_input_grad`] by Candle's autograd: the input becomes a fresh leaf,
/// through [`Classifier::forward_input_grad`].
pub fn autograd_input_grad<M: Classifier + ?Sized>(
    model: &M,
    xs: &Tensor,
    labels: &Tensor,
    mode: Mode,
) -> Result<InputGrad> {
    let leaf = Var::from_tensor(&xs.detach())?;
    let logits = model.forward_input_grad(leaf.as_tensor(), mode)?;
    let loss = per_example_cross_entropy(&logits, labels)?;
    let grads = loss.sum_all()?.backward()?;
    // No gradient at all means the logits do not depend on the input (a constant model).
    let grad = match grads.get(leaf.as_tensor()) {
        Some(g) => g.detach(),
        None => xs.zeros_like()?,
    };
    Ok(InputGrad {
        loss: loss.detach(),
        logits: logits.detach(),
        grad,
    })
}
