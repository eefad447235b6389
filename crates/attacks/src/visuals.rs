//! What the attacks look like, as numbers for a report to draw (nothing here plots):
//!
//! - [`perturbation_views`]: for chosen images, the steepest-ascent perturbation
//!   `r* = argmax_{‖r‖_p ≤ ε} ∇ₓLᵀr` ([`Norm::steepest`]) in several norms, and the model's
//!   class and confidence on each attacked image — Lyu et al.'s "visual effects"
//!   (research/paper.md §4.1);
//! - [`logit_sweep`]: the logits of one image along a fixed steepest-ascent direction, over a
//!   range of signed budgets — Goodfellow et al. 2015, Fig. 4;
//! - [`first_correct_per_class`]: which images to show.

use candle_core::{bail, DType, Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use serde::{Deserialize, Serialize};

use crate::batch::select_rows;
use crate::eval::predictions;
use crate::norm::check_eps;
use crate::{predict, Norm};

/// One perturbation of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerturbationView {
    pub norm: Norm,
    pub eps: f64,
    /// `r*`, the image's `C·H·W` values row-major, not clipped (`‖r*‖_p = ε`).
    pub r: Vec<f32>,
    /// The model's class for `clip(x + r*, 0, 1)` and its softmax probability.
    pub adv_label: u32,
    pub confidence: f64,
}

/// One image with its perturbations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageView {
    /// Position of the image in the images passed in.
    pub index: usize,
    pub label: u32,
    /// The model's class for the clean image.
    pub pred: u32,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// `C·H·W` values in `[0, 1]`, row-major.
    pub image: Vec<f32>,
    /// In the order of the budgets.
    pub perturbations: Vec<PerturbationView>,
}

/// The first image of each class that every model classifies correctly (eval mode), in class
/// order; a class without one is left out.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)`; `labels`: `(n,)` u32
///
/// # Errors
/// On no models, models with different numbers of classes, mismatched lengths,
/// `batch_size = 0`, and model errors.
pub fn first_correct_per_class(
    models: &[&dyn Classifier],
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<Vec<usize>> {
    let Some(first) = models.first() else {
        bail!("expected at least one model, got none")
    };
    let n_classes = first.n_classes();
    if let Some(other) = models.iter().find(|m| m.n_classes() != n_classes) {
        bail!(
            "models disagree on the number of classes: {n_classes} and {}",
            other.n_classes()
        )
    }
    let labels = labels.to_vec1::<u32>()?;
    let mut correct = vec![true; labels.len()];
    for model in models {
        let preds = predict(*model, images, batch_size)?;
        if preds.len() != labels.len() {
            bail!(
                "expected one label per image ({}), got {}",
                preds.len(),
                labels.len()
            )
        }
        for (ok, (pred, label)) in correct.iter_mut().zip(preds.iter().zip(&labels)) {
            *ok &= pred == label;
        }
    }
    Ok((0..n_classes as u32)
        .filter_map(|c| (0..labels.len()).find(|&i| labels[i] == c && correct[i]))
        .collect())
}

/// The images `indices` of `images`, each with `r*` for every `(norm, ε)` of `budgets` taken
/// from the cross-entropy gradient of its true label (eval mode), and the model's verdict on
/// `clip(x + r*, 0, 1)`.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` u32
///
/// # Errors
/// On an index out of range, an invalid norm or ε, and model errors.
pub fn perturbation_views(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    indices: &[usize],
    budgets: &[(Norm, f64)],
) -> Result<Vec<ImageView>> {
    let (n, c, h, w) = images.dims4()?;
    if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
        bail!("image index {bad} out of range: {n} images")
    }
    if indices.is_empty() {
        return Ok(vec![]);
    }
    for &(_, eps) in budgets {
        check_eps(eps)?;
    }
    let xs = select_rows(images, indices)?.to_dtype(DType::F32)?;
    let ys = select_rows(labels, indices)?;
    let clean = model.loss_and_input_grad(&xs, &ys, Mode::Eval)?;
    let clean_preds = predictions(&clean.logits)?;
    let mut views: Vec<ImageView> = indices
        .iter()
        .zip(ys.to_vec1::<u32>()?)
        .zip(clean_preds)
        .zip(to_rows(&xs)?)
        .map(|(((&index, label), (pred, _)), image)| ImageView {
            index,
            label,
            pred,
            shape: [c, h, w],
            image,
            perturbations: Vec::with_capacity(budgets.len()),
        })
        .collect();
    for &(norm, eps) in budgets {
        let r = norm.steepest(&clean.grad, eps)?;
        let adv = xs.add(&r)?.clamp(0.0, 1.0)?;
        let verdicts = predictions(&model.forward(&adv, Mode::Eval)?)?;
        for ((view, r), (adv_label, confidence)) in views.iter_mut().zip(to_rows(&r)?).zip(verdicts)
        {
            view.perturbations.push(PerturbationView {
                norm,
                eps,
                r,
                adv_label,
                confidence,
            });
        }
    }
    Ok(views)
}

/// The logits of `image` at `x + ε·d` for each ε of `eps`, with `d = r*` of unit budget in
/// `norm` (for L∞, `sign(∇ₓL)`), computed once at ε = 0 from the cross-entropy of `label` and
/// held fixed along the sweep. The points are not clipped to `[0, 1]`: the sweep follows the
/// line the model's logits are piecewise linear along, beyond the image box.
///
/// Returns `logits[i][c]`, class `c` at `eps[i]`, in f64.
///
/// # Shapes
/// - `image`: `(1, channels, height, width)`
///
/// # Errors
/// On an image batch other than 1, non-finite ε, a label outside the classes, and model errors.
pub fn logit_sweep(
    model: &dyn Classifier,
    image: &Tensor,
    label: u32,
    norm: Norm,
    eps: &[f64],
) -> Result<Vec<Vec<f64>>> {
    let (batch, c, h, w) = image.dims4()?;
    if batch != 1 {
        bail!("expected one image (1, C, H, W), got a batch of {batch}")
    }
    if label as usize >= model.n_classes() {
        bail!("label {label} but {} classes", model.n_classes())
    }
    if let Some(bad) = eps.iter().find(|e| !e.is_finite()) {
        bail!("sweep eps must be finite, got {bad}")
    }
    if eps.is_empty() {
        return Ok(vec![]);
    }
    let x = image.to_dtype(DType::F32)?;
    let y = Tensor::new(&[label], image.device())?;
    let grad = model.loss_and_input_grad(&x, &y, Mode::Eval)?.grad;
    let direction = norm.steepest(&grad, 1.0)?;
    let scales: Vec<f32> = eps.iter().map(|&e| e as f32).collect();
    let scales = Tensor::from_vec(scales, (eps.len(), 1, 1, 1), image.device())?;
    let points = x
        .broadcast_as((eps.len(), c, h, w))?
        .add(&scales.broadcast_mul(&direction)?)?;
    model
        .forward(&points, Mode::Eval)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()
}

/// Each example of a `(batch, ...)` tensor as a flat row-major `Vec<f32>`.
fn to_rows(xs: &Tensor) -> Result<Vec<Vec<f32>>> {
    xs.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_from(1)?
        .to_vec2::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{balanced_maxout, inputs, LinearModel};

    /// `‖v‖_p` in f64.
    fn lp(v: &[f32], norm: Norm) -> f64 {
        let abs = v.iter().map(|&x| f64::from(x).abs());
        match norm {
            Norm::Linf => abs.fold(0.0, f64::max),
            _ => {
                let p = norm.p();
                abs.map(|a| a.powf(p)).sum::<f64>().powf(1.0 / p)
            }
        }
    }

    #[test]
    fn views_hold_r_star_within_budget_and_the_verdict_on_the_clipped_image() -> Result<()> {
        let model = balanced_maxout()?;
        let (images, labels) = inputs(6, 11)?;
        let budgets = [(Norm::Linf, 0.25), (Norm::L2, 1.0), (Norm::L1, 2.0)];
        let views = perturbation_views(model.as_ref(), &images, &labels, &[4, 1], &budgets)?;
        assert_eq!(views.iter().map(|v| v.index).collect::<Vec<_>>(), [4, 1]);
        let labels = labels.to_vec1::<u32>()?;
        for view in &views {
            let x = images.narrow(0, view.index, 1)?;
            assert_eq!(view.label, labels[view.index]);
            assert_eq!(view.shape, [1, 4, 4]);
            assert_eq!(view.image, x.flatten_all()?.to_vec1::<f32>()?);
            let y = Tensor::new(&[view.label], &Device::Cpu)?;
            let grad = model.loss_and_input_grad(&x, &y, Mode::Eval)?.grad;
            assert_eq!(view.perturbations.len(), budgets.len());
            for (p, &(norm, eps)) in view.perturbations.iter().zip(&budgets) {
                assert_eq!((p.norm, p.eps), (norm, eps));
                let len = lp(&p.r, norm);
                assert!(len <= eps * (1.0 + 1e-6), "{norm:?}: ‖r‖ = {len} > {eps}");
                assert!(
                    len >= eps * (1.0 - 1e-5),
                    "{norm:?}: r* uses its budget: {len}"
                );
                // The same r* the attacks use, for this image alone.
                let alone = norm.steepest(&grad, eps)?.flatten_all()?.to_vec1::<f32>()?;
                for (a, b) in p.r.iter().zip(&alone) {
                    assert!((a - b).abs() <= 1e-6 * eps as f32, "{norm:?}: {a} vs {b}");
                }
                let r = Tensor::from_vec(p.r.clone(), (1, 1, 4, 4), &Device::Cpu)?;
                let adv = x.add(&r)?.clamp(0.0, 1.0)?;
                let logits = model.forward(&adv, Mode::Eval)?;
                let (class, confidence) = predictions(&logits)?[0];
                assert_eq!(p.adv_label, class);
                assert!((p.confidence - confidence).abs() < 1e-12);
                assert!(confidence > 0.0 && confidence <= 1.0);
            }
        }
        assert!(perturbation_views(
            model.as_ref(),
            &images,
            &Tensor::new(&[0u32; 6], &Device::Cpu)?,
            &[6],
            &budgets
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn first_correct_per_class_skips_mistakes_of_any_model() -> Result<()> {
        // Class 0 iff x₀ > x₁ (model a); model b always says class 1.
        let a = LinearModel::new(&[[1.0, -1.0], [-1.0, 1.0]])?;
        let b = LinearModel::new(&[[0.0, 0.0], [0.0, 1.0]])?;
        let images = Tensor::new(
            &[
                [0.2f32, 0.8],
                [0.9, 0.1],
                [0.1, 0.9],
                [0.7, 0.3],
                [0.3, 0.6],
            ],
            &Device::Cpu,
        )?
        .reshape((5, 1, 1, 2))?;
        let labels = Tensor::new(&[0u32, 0, 1, 0, 1], &Device::Cpu)?;
        // a: wrong on image 0, right on the others.
        assert_eq!(first_correct_per_class(&[&a], &images, &labels, 2)?, [1, 2]);
        // a and b agree only on class-1 images: no class-0 image qualifies.
        assert_eq!(
            first_correct_per_class(&[&a, &b], &images, &labels, 2)?,
            [2]
        );
        assert!(first_correct_per_class(&[], &images, &labels, 2).is_err());
        Ok(())
    }

    #[test]
    fn the_sweep_is_linear_for_a_linear_model_and_starts_at_the_clean_logits() -> Result<()> {
        let w = [[1.0f32, -2.0, 0.5], [-1.0, 1.0, 0.5]];
        let model = LinearModel::new(&w)?;
        let x = Tensor::new(&[[[[0.3f32, 0.6, 0.2]]]], &Device::Cpu)?;
        let eps = [-2.0, -0.5, 0.0, 1.0, 3.0];
        let logits = logit_sweep(&model, &x, 0, Norm::Linf, &eps)?;
        assert_eq!(logits.len(), eps.len());
        // For label 0 the gradient is p₁·(W₁ − W₀) = p₁·(−2, 3, 0): d = (−1, 1, 0), so
        // logit c moves by ε·(W_c · d): −3 for class 0, +2 for class 1.
        let clean = [0.3 - 1.2 + 0.1, -0.3 + 0.6 + 0.1];
        for (row, e) in logits.iter().zip(eps) {
            for (c, slope) in [(0, -3.0), (1, 2.0)] {
                let want = clean[c] + e * slope;
                assert!(
                    (row[c] - want).abs() < 1e-5,
                    "eps {e} class {c}: {} vs {want}",
                    row[c]
                );
            }
        }
        // In L2 the direction has unit length: the logits move by ε·W_c·g/‖g‖₂.
        let l2 = logit_sweep(&model, &x, 0, Norm::L2, &[0.0, 1.0])?;
        let slope = -8.0 / 13f64.sqrt();
        assert!((l2[1][0] - l2[0][0] - slope).abs() < 1e-5);
        assert!(logit_sweep(&model, &x, 2, Norm::Linf, &eps).is_err());
        assert!(logit_sweep(&model, &x, 0, Norm::Linf, &[f64::NAN]).is_err());
        Ok(())
    }
}
