//! Clean loss and error of a model on a data set, in eval mode.

use candle_core::{Device, Result};
use gauntlet_data::Dataset;
use gauntlet_models::{accuracy_counts, per_example_cross_entropy, Classifier, Mode};
use serde::{Deserialize, Serialize};

/// Mean loss and error over a data set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub n: usize,
    pub loss: f64,
    pub error: f64,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        1.0 - self.error
    }
}

/// Mean cross-entropy and error of `model` on `data`, in batches of `batch_size`.
pub fn evaluate(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<EvalResult> {
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let xs = data.images.narrow(0, start, len)?.to_device(device)?;
        let ys = data.labels.narrow(0, start, len)?.to_device(device)?;
        let logits = model.forward(&xs, Mode::Eval)?;
        loss_sum += per_example_cross_entropy(&logits, &ys)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        correct += accuracy_counts(&logits, &ys)?.0;
        start += len;
    }
    let denom = n.max(1) as f64;
    Ok(EvalResult {
        n,
        loss: loss_sum / denom,
        error: 1.0 - correct as f64 / denom,
    })
}
