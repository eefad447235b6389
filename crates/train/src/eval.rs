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

    /// The number of correctly classified examples the error was computed from.
    pub fn correct(&self) -> usize {
        (self.accuracy() * self.n as f64).round() as usize
    }
}

/// Mean cross-entropy and error of `model` on `data`, in batches of `batch_size`.
pub fn evaluate(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<EvalResult> {
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let xs = data.images.narrow(0, start, len)?.to_device(device)?;
        let ys = data.labels.narrow(0, start, len)?.to_device(device)?;
        let logits = model.forward(&xs, Mode::Eval)?;
        // NaN logits would arg-max to class 0 and pass for a (poor) accuracy.
        gauntlet_attacks::check_logits(&logits)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Tensor};
    use gauntlet_models::{build, Arch, ModelSpec, Params};

    /// A model whose logits are all NaN, as one NaN weight makes them.
    struct NanLogits(Box<dyn Classifier>);

    impl Classifier for NanLogits {
        fn spec(&self) -> &ModelSpec {
            self.0.spec()
        }

        fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
            self.0.forward(xs, mode)?.affine(f64::NAN, 0.0)
        }

        fn params(&self) -> &Params {
            self.0.params()
        }
    }

    #[test]
    fn nan_logits_are_an_error_not_an_accuracy() {
        let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![4], 2));
        let model = NanLogits(build(&spec, 1, &Device::Cpu).unwrap());
        let data = Dataset {
            images: Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu).unwrap(),
            labels: Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap(),
            n_classes: 10,
        };
        let err = evaluate(&model, &data, 2, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is NaN") && err.contains("no accuracy"),
            "{err}"
        );
    }
}
