//! A minimum-norm attack evaluated once for every ε: its per-example distances, the security
//! curve they give, and the robustness records at the given ε from the same minimal examples.

use std::time::Instant;

use candle_core::{bail, DType, Result, Tensor};
use gauntlet_models::{Classifier, Mode};

use super::queries::Counted;
use super::sweep::{score, InTurn};
use super::*;
use crate::batch::{check_output_shape, where_rows};
use crate::norm::check_eps;
use crate::{Attack, Goal, MinNorm, MinNormExample, Norm, SecurityCurve};

/// What [`evaluate_min_norm`] returns.
pub struct MinNormEvaluated {
    /// Robust accuracy at every ε; `seconds` is the search's wall time.
    pub curve: Timed<SecurityCurve>,
    /// Each example's minimal perturbation, in order.
    pub examples: Vec<MinNormExample>,
    /// One robustness record per ε of `eps_list`, as a fixed-ε attack's: the minimal example
    /// where it lies within ε, the clean one elsewhere. The search's time is shared evenly.
    pub records: Vec<Timed<AttackRecord>>,
    /// Per-example outcomes at those ε, ε-major.
    pub outcomes: Vec<ExampleOutcome>,
    /// When kept: the scored images, one `(n, channels, height, width)` tensor per ε.
    pub adversarials: Vec<Tensor>,
    /// The minimal examples themselves (the clean input where none was found).
    pub minimal: Tensor,
}

/// Runs `attack` (untargeted, against the true labels) once on `images`, `batch_size` at a
/// time, and scores its minimal examples: each example's distance (re-checked by classifying
/// the returned input, and measured on it), the security curve, and a record at each ε of
/// `eps_list` (which may be empty).
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
///
/// # Errors
/// As [`crate::evaluate_attack`]; also when the attack returns a shape other than its input's
/// or a point outside `[0, 1]`.
pub fn evaluate_min_norm(
    model: &dyn Classifier,
    attack: &dyn MinNorm,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
    keep: bool,
) -> Result<MinNormEvaluated> {
    let (n, labels, label_ids) = check_inputs(images, labels, batch_size)?;
    for &eps in eps_list {
        check_eps(eps)?;
    }
    let norm = attack.norm();
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    let counted = Counted::new(model);
    let timer = Instant::now();
    let mut minimal = Vec::new();
    let mut examples = Vec::with_capacity(n);
    // (prediction, confidence) of the clean and of the minimal input, per example.
    let (mut clean, mut found) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (start, len) in batches(n, batch_size) {
        let xs = images.narrow(0, start, len)?;
        let ys = labels.narrow(0, start, len)?;
        let adv = attack.minimize(&counted, &xs, &Goal::Untargeted { labels: &ys })?;
        check_output_shape(&attack.name(), &adv, &xs)?;
        let (low, high) = (
            adv.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            adv.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        );
        if low < 0.0 || high > 1.0 {
            bail!(
                "attack {} returned values in [{low}, {high}], outside the box [0, 1]",
                attack.name()
            )
        }
        let clean_preds = predictions(&model.forward(&xs, Mode::Eval)?)?;
        let adv_preds = predictions(&model.forward(&adv, Mode::Eval)?)?;
        let delta = adv.sub(&xs)?;
        let sizes = [norm, Norm::Linf, Norm::L2, Norm::L1]
            .iter()
            .map(|m| m.norm(&delta)?.to_dtype(DType::F64)?.to_vec1::<f64>())
            .collect::<Result<Vec<_>>>()?;
        // An example is broken by what the model says of the returned input, not by what
        // the attack claims; one misclassified clean needs no perturbation.
        let broken: Vec<bool> = (0..len)
            .map(|i| adv_preds[i].0 != label_ids[start + i])
            .collect();
        for i in 0..len {
            let label = label_ids[start + i];
            let correct = clean_preds[i].0 == label;
            let distance = if !correct {
                Some(0.0)
            } else if broken[i] {
                Some(sizes[0][i])
            } else {
                None
            };
            let kept = correct && broken[i];
            examples.push(MinNormExample {
                index: start + i,
                label,
                clean_pred: clean_preds[i].0,
                adv_pred: if correct {
                    adv_preds[i].0
                } else {
                    clean_preds[i].0
                },
                distance,
                linf: if kept { sizes[1][i] } else { 0.0 },
                l2: if kept { sizes[2][i] } else { 0.0 },
                l1: if kept { sizes[3][i] } else { 0.0 },
            });
        }
        let keep_rows: Vec<bool> = (0..len)
            .map(|i| clean_preds[i].0 == label_ids[start + i] && broken[i])
            .collect();
        minimal.push(where_rows(&keep_rows, &adv, &xs)?);
        // The prediction of what `minimal` holds: the clean input's where it is kept.
        found.extend((0..len).map(|i| {
            if keep_rows[i] {
                adv_preds[i]
            } else {
                clean_preds[i]
            }
        }));
        clean.extend(clean_preds);
    }
    let minimal = if minimal.is_empty() {
        images.clone()
    } else {
        Tensor::cat(&minimal, 0)?
    };
    let seconds = timer.elapsed().as_secs_f64();
    let spent = counted.take(n);
    let mut curve = SecurityCurve::new(attack.name(), norm.into(), &examples);
    curve.queries = Some(spent);
    let curve = Timed {
        record: curve,
        seconds,
    };

    // At each ε: the minimal example where it lies within ε, the clean input elsewhere.
    let within = |start: usize, i: usize, eps: f64| examples[start + i].broken_at(eps);
    let mut produce = |eps: f64,
                       start: usize,
                       xs: &Tensor,
                       _ys: &Tensor,
                       _open: &dyn Fn(usize, u32) -> bool|
     -> Result<InTurn> {
        let len = xs.dim(0)?;
        let mask: Vec<bool> = (0..len).map(|i| within(start, i, eps)).collect();
        let adv = where_rows(&mask, &minimal.narrow(0, start, len)?, xs)?;
        let preds = (0..len)
            .map(|i| {
                if mask[i] {
                    found[start + i]
                } else {
                    clean[start + i]
                }
            })
            .collect();
        Ok(InTurn {
            adv,
            preds,
            source: vec![0; len],
        })
    };
    let as_attack: &dyn Attack = attack;
    let (mut records, outcomes, adversarials) = score(
        model,
        &[as_attack],
        attack.name(),
        attack.kind(),
        images,
        &labels,
        eps_list,
        batch_size,
        keep,
        &mut produce,
        // Every ε is read off the one search: each record carries all of its passes.
        &|_| Some(spent),
    )?;
    let share = seconds / eps_list.len().max(1) as f64;
    for record in &mut records {
        record.seconds += share;
    }
    Ok(MinNormEvaluated {
        curve,
        examples,
        records,
        outcomes,
        adversarials,
        minimal,
    })
}
