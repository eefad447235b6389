//! [`Limited`]: an attack stopped at a budget of model passes per example, so that attacks can
//! be compared at equal cost.

use candle_core::{Result, Tensor};
use gauntlet_models::Classifier;

use crate::eval::Counted;
use crate::{Attack, AttackKind, Goal, MinNorm, Norm};

/// `attack` given at most `max_queries` forward plus backward passes per example (summed over
/// the batch it runs on). The attack sees a model that reports itself spent
/// ([`Classifier::exhausted`]) once the batch's budget is used; PGD and the minimum-norm
/// attacks check it before each step and stop there with what they have, so the budget is
/// exceeded by at most one step. The records' `queries` show what was spent.
pub struct Limited {
    inner: Box<dyn Attack>,
    max_queries: usize,
}

impl Limited {
    pub fn new(inner: Box<dyn Attack>, max_queries: usize) -> Self {
        Self { inner, max_queries }
    }
}

impl Attack for Limited {
    fn name(&self) -> String {
        format!("{}-q{}", self.inner.name(), self.max_queries)
    }

    fn norm(&self) -> Norm {
        self.inner.norm()
    }

    fn kind(&self) -> AttackKind {
        self.inner.kind()
    }

    fn min_norm(&self) -> Option<&dyn MinNorm> {
        self.inner.min_norm().map(|_| self as &dyn MinNorm)
    }

    fn targets(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        labels: &Tensor,
    ) -> Result<Option<Tensor>> {
        self.inner.targets(model, xs, labels)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        let limited = Counted::with_limit(model, self.max_queries * xs.dim(0)?);
        self.inner.perturb(&limited, xs, goal, eps)
    }
}

impl MinNorm for Limited {
    fn minimize(&self, model: &dyn Classifier, xs: &Tensor, goal: &Goal<'_>) -> Result<Tensor> {
        let search = self
            .inner
            .min_norm()
            .expect("Limited::min_norm is Some only for a minimum-norm attack");
        let limited = Counted::with_limit(model, self.max_queries * xs.dim(0)?);
        search.minimize(&limited, xs, goal)
    }
}
