//! Cross-entropy per example and accuracy counting.

use candle_core::{DType, Result, Tensor, D};

/// Cross-entropy of each example from raw logits, computed through log-softmax so that
/// confident predictions keep their (tiny) gradients instead of rounding to zero.
///
/// # Shapes
/// - `logits`: `(batch, n_classes)`; `labels`: `(batch,)` `u32`
/// - returns: `(batch,)`
pub fn per_example_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    log_probs
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

/// Number of rows whose arg-max equals the label, and the predictions.
pub fn accuracy_counts(logits: &Tensor, labels: &Tensor) -> Result<(usize, Vec<u32>)> {
    let preds = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let correct = preds.iter().zip(&labels).filter(|(p, l)| p == l).count();
    Ok((correct, preds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        // logits [0, ln 3] -> softmax [1/4, 3/4]; CE(label 1) = ln(4/3), CE(label 0) = ln 4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 3f32.ln()]], &Device::Cpu)?;
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        let ce = per_example_cross_entropy(&logits, &labels)?.to_vec1::<f32>()?;
        assert!((ce[0] - (4f32 / 3.0).ln()).abs() < 1e-6);
        assert!((ce[1] - 4f32.ln()).abs() < 1e-6);
        assert_eq!(accuracy_counts(&logits, &labels)?.0, 1);
        Ok(())
    }
}
