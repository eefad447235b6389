//! Robust evaluation: an [`Attack`] (or the worst case over several, [`evaluate_ensemble`])
//! swept over ε, or Gaussian noise swept over σ, on a fixed set of images, each setting scored
//! with `n`, accuracies with Wilson intervals, and the perturbation *measured* on the attack's
//! output (in its own norm and in L∞, L2, L1), so an attack that breaks its budget shows in
//! the numbers instead of inflating them. [`evaluate_attack_detailed`] also returns every
//! example's outcome ([`ExampleOutcome`]).

mod ensemble;
mod min_norm;
mod noise;
mod queries;
mod records;
mod sweep;
#[cfg(test)]
mod tests;

pub(crate) use crate::{AttackRecord, MemberRecord, NoiseRecord, Timed};
pub use ensemble::{evaluate_ensemble, Ensemble};
pub use min_norm::{evaluate_min_norm, MinNormEvaluated};
pub use noise::gaussian_noise;
pub(crate) use queries::Counted;
pub use records::ExampleOutcome;
pub use sweep::{evaluate_attack, evaluate_attack_detailed, evaluate_attack_keeping};

use candle_core::{bail, DType, Result, Tensor};

use crate::attack::arg_max;

/// Logits beyond this magnitude come from a diverged model or overflowed weights: their
/// arg-max and softmax mean nothing, so evaluation stops instead of scoring them.
pub const MAX_LOGIT: f64 = 1e15;

/// Logits whose every class differs by at most this (relative to the largest, or absolute
/// below 1) across all examples count as constant.
pub const CONSTANT_LOGITS: f64 = 1e-6;

/// An error when a logit is NaN, infinite or larger in magnitude than [`MAX_LOGIT`], naming
/// the first such value, its example (row of the batch) and class, and how many there are.
///
/// # Shapes
/// - `logits`: `(batch, n_classes)`
pub fn check_logits(logits: &Tensor) -> Result<()> {
    check_rows(&logits.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn check_rows(rows: &[Vec<f64>]) -> Result<()> {
    let bad = |z: f64| !z.is_finite() || z.abs() > MAX_LOGIT;
    let Some((row, class, z)) = rows.iter().enumerate().find_map(|(i, row)| {
        row.iter()
            .position(|&z| bad(z))
            .map(|class| (i, class, row[class]))
    }) else {
        return Ok(());
    };
    let count: usize = rows
        .iter()
        .map(|r| r.iter().filter(|&&z| bad(z)).count())
        .sum();
    let total: usize = rows.iter().map(Vec::len).sum();
    let what = if z.is_nan() {
        "NaN"
    } else if z.is_infinite() {
        "infinite"
    } else {
        "beyond any trained model's range"
    };
    bail!(
        "the model's logit for class {class} of example {row} in a batch of {} is {z:e} ({what}; \
         {count} of the batch's {total} logits are non-finite or above {MAX_LOGIT:e} in size): \
         its weights are non-finite or it diverged, so no accuracy is reported",
        rows.len()
    )
}

/// The largest difference of any clean logit from the first example's, and that example's
/// largest magnitude: whether the model's logits depend on its input at all.
#[derive(Default)]
struct LogitSpread {
    first: Option<Vec<f64>>,
    spread: f64,
    rows: usize,
}

impl LogitSpread {
    fn add(&mut self, rows: &[Vec<f64>]) {
        for row in rows {
            self.rows += 1;
            match &self.first {
                None => self.first = Some(row.clone()),
                Some(first) => {
                    for (a, b) in first.iter().zip(row) {
                        self.spread = self.spread.max((a - b).abs());
                    }
                }
            }
        }
    }

    fn constant(&self) -> bool {
        let scale = self
            .first
            .iter()
            .flatten()
            .fold(1f64, |m, z| m.max(z.abs()));
        self.rows > 1 && self.spread <= CONSTANT_LOGITS * scale
    }
}

/// Checks the batch size and that there is one label per image; returns `n`, the labels as
/// u32 and their values.
fn check_inputs(
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<(usize, Tensor, Vec<u32>)> {
    if batch_size == 0 {
        bail!("batch size must be positive, got 0")
    }
    let n = images.dim(0)?;
    let n_labels = labels.dims1()?;
    if n_labels != n {
        bail!("expected one label per image ({n}), got {n_labels}")
    }
    let labels = labels.to_dtype(DType::U32)?;
    let ids = labels.to_vec1::<u32>()?;
    Ok((n, labels, ids))
}

/// `(start, len)` of consecutive batches covering `0..n`.
fn batches(n: usize, batch_size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(batch_size)
        .map(move |start| (start, batch_size.min(n - start)))
}

fn fraction(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

/// The arg-max class of each row of `logits` and its softmax probability, in f64; an error
/// on logits no working model gives ([`check_logits`]).
pub(crate) fn predictions(logits: &Tensor) -> Result<Vec<(u32, f64)>> {
    row_predictions(&logits.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn row_predictions(rows: &[Vec<f64>]) -> Result<Vec<(u32, f64)>> {
    // Arg-max of NaN logits is class 0: a plausible-looking accuracy for a broken model.
    check_rows(rows)?;
    Ok(rows
        .iter()
        .map(|row| {
            // The attacks' own success checks use the same arg-max, so they agree with this.
            let arg = arg_max(row);
            let total: f64 = row.iter().map(|l| (l - row[arg]).exp()).sum();
            (arg as u32, 1.0 / total)
        })
        .collect())
}
