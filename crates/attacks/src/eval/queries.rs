//! Counting the model passes an attack spends.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Result, Tensor};
use gauntlet_models::{Classifier, Frozen, InputGrad, Mode, ModelSpec, Params};

use crate::Queries;

/// `inner` with a count of the examples through its forward and backward passes: a plain
/// forward counts one forward per row; an input-gradient pass ([`Classifier::forward_input_grad`],
/// [`Classifier::loss_and_input_grad`]) one forward and one backward; and
/// [`Classifier::note_backward`] the backward passes an attack reports beyond those. With a
/// limit it reports itself [`Classifier::exhausted`] once forward plus backward passes reach it
/// ([`crate::Limited`]).
pub(crate) struct Counted<'a> {
    inner: &'a dyn Classifier,
    forward: AtomicUsize,
    backward: AtomicUsize,
    limit: Option<usize>,
}

impl<'a> Counted<'a> {
    pub(crate) fn new(inner: &'a dyn Classifier) -> Self {
        Self {
            inner,
            forward: AtomicUsize::new(0),
            backward: AtomicUsize::new(0),
            limit: None,
        }
    }

    /// Counting, and spent at `limit` forward plus backward example passes.
    pub(crate) fn with_limit(inner: &'a dyn Classifier, limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::new(inner)
        }
    }

    /// The passes so far as means over `n` examples, and the counts reset.
    pub(crate) fn take(&self, n: usize) -> Queries {
        let per = |c: &AtomicUsize| c.swap(0, Ordering::Relaxed) as f64 / n.max(1) as f64;
        Queries {
            forward: per(&self.forward),
            backward: per(&self.backward),
        }
    }

    fn add(&self, xs: &Tensor, backward: bool) {
        let rows = xs.dims().first().copied().unwrap_or(0);
        self.forward.fetch_add(rows, Ordering::Relaxed);
        if backward {
            self.backward.fetch_add(rows, Ordering::Relaxed);
        }
    }
}

impl Classifier for Counted<'_> {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.add(xs, false);
        self.inner.forward(xs, mode)
    }

    fn forward_input_grad(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.add(xs, true);
        self.inner.forward_input_grad(xs, mode)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }

    fn max_norm(&self, name: &str) -> Option<f64> {
        self.inner.max_norm(name)
    }

    fn freeze(&self) -> Result<Frozen<'_>> {
        self.inner.freeze()
    }

    fn note_backward(&self, rows: usize) {
        self.backward.fetch_add(rows, Ordering::Relaxed);
        self.inner.note_backward(rows);
    }

    fn exhausted(&self) -> bool {
        let used = || self.forward.load(Ordering::Relaxed) + self.backward.load(Ordering::Relaxed);
        self.limit.is_some_and(|limit| used() >= limit) || self.inner.exhausted()
    }

    fn loss_and_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        self.add(xs, true);
        self.inner.loss_and_input_grad(xs, labels, mode)
    }
}
