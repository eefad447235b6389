//! The ε sweep: an attack (or an ensemble's members in turn) on a fixed set of images, each ε
//! scored, with the perturbation measured on the attack's output.

use std::time::Instant;

use candle_core::{DType, Result, Tensor};
use gauntlet_models::{Classifier, Mode};

use super::ensemble::common_norm;
use super::min_norm::evaluate_min_norm;
use super::queries::Counted;
use super::*;
use crate::batch::{check_output_shape, replace_rows, select_rows};
use crate::norm::check_eps;
use crate::{wilson_interval, Attack, AttackKind, Goal, Norm, Queries};

/// The records, per-example outcomes and (when kept) adversarial images of an evaluation.
type Evaluated = (Vec<Timed<AttackRecord>>, Vec<ExampleOutcome>, Vec<Tensor>);

/// Runs `attack` (untargeted, against the true labels) at every ε of `eps_list` on `images`,
/// `batch_size` examples at a time, and scores each ε.
///
/// The same as [`evaluate_attack_detailed`] without the per-example outcomes.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
///
/// # Errors
/// On a negative or non-finite ε (checked before any work), `batch_size = 0`, a label count
/// different from the image count, an attack output of the wrong shape, and model errors.
pub fn evaluate_attack(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
) -> Result<Vec<Timed<AttackRecord>>> {
    Ok(evaluate_attack_detailed(model, attack, images, labels, eps_list, batch_size)?.0)
}

/// [`evaluate_attack`], also returning every example's outcome at every ε (ε-major: all
/// examples at the first ε, then at the second, ...).
///
/// An ensemble ([`Attack::members`] not empty, e.g. [`Ensemble`]) is run member by member as
/// in [`evaluate_ensemble`], so each outcome names the member that broke the example and the
/// records count the examples each member broke; the record keeps the ensemble's own name and
/// kind.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
///
/// # Errors
/// As [`evaluate_attack`].
pub fn evaluate_attack_detailed(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
) -> Result<(Vec<Timed<AttackRecord>>, Vec<ExampleOutcome>)> {
    let (records, outcomes, _) =
        evaluate_attack_keeping(model, attack, images, labels, eps_list, batch_size, false)?;
    Ok((records, outcomes))
}

/// [`evaluate_attack_detailed`], also returning, when `keep` is set, the adversarial images
/// it scored: one `(n, channels, height, width)` tensor per ε (empty otherwise).
pub fn evaluate_attack_keeping(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
    keep: bool,
) -> Result<Evaluated> {
    let members = attack.members();
    if members.is_empty() {
        if let Some(search) = attack.min_norm() {
            let run = evaluate_min_norm(model, search, images, labels, eps_list, batch_size, keep)?;
            return Ok((run.records, run.outcomes, run.adversarials));
        }
    }
    let attacks = if members.is_empty() {
        vec![attack]
    } else {
        members
    };
    evaluate(
        model,
        &attacks,
        attack.name(),
        attack.kind(),
        images,
        labels,
        eps_list,
        batch_size,
        keep,
    )
}

/// Running sum and maximum of perturbation sizes.
#[derive(Clone, Copy, Default)]
pub(super) struct SizeStats {
    sum: f64,
    max: f64,
}

impl SizeStats {
    fn add(&mut self, size: f64) {
        self.sum += size;
        // A NaN size (a broken attack) must survive into the record, which f64::max would drop.
        if size > self.max || size.is_nan() {
            self.max = size;
        }
    }

    fn mean(&self, n: usize) -> f64 {
        if n == 0 {
            0.0
        } else {
            self.sum / n as f64
        }
    }
}

/// The one evaluation loop: `attacks` in order, later ones on the still-robust examples only.
#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate(
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    name: String,
    kind: AttackKind,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
    keep: bool,
) -> Result<Evaluated> {
    // The attacks' own passes are counted; scoring's forward passes are not.
    let counted = Counted::new(model);
    let mut attack =
        |eps: f64, _start: usize, xs: &Tensor, ys: &Tensor, open: &dyn Fn(usize, u32) -> bool| {
            run_in_turn(
                &counted,
                model,
                attacks,
                xs,
                &Goal::Untargeted { labels: ys },
                eps,
                open,
            )
        };
    let queries = |n: usize| Some(counted.take(n));
    score(
        model,
        attacks,
        name,
        kind,
        images,
        labels,
        eps_list,
        batch_size,
        keep,
        &mut attack,
        &queries,
    )
}

/// The adversarial batch at one ε: given ε, the batch's first index, its images and labels,
/// and which rows are still open (correct clean and at the prediction given).
pub(super) type Produce<'a> =
    dyn FnMut(f64, usize, &Tensor, &Tensor, &dyn Fn(usize, u32) -> bool) -> Result<InTurn> + 'a;

/// Scores the batches `produce` gives at every ε: the records, per-example outcomes and (when
/// `keep`) the adversarial images. `attacks` name the sources of [`InTurn::source`].
#[allow(clippy::too_many_arguments)]
pub(super) fn score(
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    name: String,
    kind: AttackKind,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
    keep: bool,
    produce: &mut Produce<'_>,
    queries: &dyn Fn(usize) -> Option<Queries>,
) -> Result<Evaluated> {
    let (n, labels, label_ids) = check_inputs(images, labels, batch_size)?;
    for &eps in eps_list {
        check_eps(eps)?;
    }
    let norm = common_norm(attacks)?;
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    let mut clean_pred = Vec::with_capacity(n);
    let mut spread = LogitSpread::default();
    for (start, len) in batches(n, batch_size) {
        let logits = model.forward(&images.narrow(0, start, len)?, Mode::Eval)?;
        let rows = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        spread.add(&rows);
        clean_pred.extend(row_predictions(&rows)?.iter().map(|&(pred, _)| pred));
    }
    let constant_logits = spread.constant();
    let clean_ok: Vec<bool> = clean_pred
        .iter()
        .zip(&label_ids)
        .map(|(p, y)| p == y)
        .collect();
    let clean_correct = clean_ok.iter().filter(|&&ok| ok).count();
    // A single self-targeting attack's targets do not depend on ε: pick them once.
    let targets = match attacks {
        [single] => own_targets(model, *single, images, &labels, n, batch_size)?,
        _ => None,
    };
    let aimed = targets.as_ref().map(|t| {
        t.iter()
            .zip(&label_ids)
            .filter(|(target, label)| target != label)
            .count()
    });

    let mut records = Vec::with_capacity(eps_list.len());
    let mut outcomes = Vec::with_capacity(n * eps_list.len());
    let mut kept = Vec::new();
    for &eps in eps_list {
        let mut batches_kept = Vec::new();
        let timer = Instant::now();
        let (mut robust, mut mistakes, mut confidence_sum) = (0usize, 0usize, 0f64);
        let mut broken = vec![0usize; attacks.len()];
        // In the attack's own norm, then L∞, L2, L1.
        let mut sizes = [SizeStats::default(); 4];
        let mut reached = 0usize;
        for (start, len) in batches(n, batch_size) {
            let xs = images.narrow(0, start, len)?;
            let ys = labels.narrow(0, start, len)?;
            let ids = &label_ids[start..start + len];
            let open = |i: usize, pred: u32| clean_ok[start + i] && pred == ids[i];
            let InTurn { adv, preds, source } = produce(eps, start, &xs, &ys, &open)?;
            let delta = adv.sub(&xs)?;
            if keep {
                batches_kept.push(adv.clone());
            }
            let measured = [norm, Norm::Linf, Norm::L2, Norm::L1]
                .iter()
                .map(|m| m.norm(&delta)?.to_dtype(DType::F64)?.to_vec1::<f64>())
                .collect::<Result<Vec<_>>>()?;
            for (i, &(pred, confidence)) in preds.iter().enumerate() {
                let (index, label) = (start + i, ids[i]);
                let broken_by = (clean_ok[index] && pred != label).then(|| {
                    broken[source[i]] += 1;
                    attacks[source[i]].name()
                });
                if pred == label {
                    robust += usize::from(clean_ok[index]);
                } else {
                    mistakes += 1;
                    confidence_sum += confidence;
                }
                for (stats, values) in sizes.iter_mut().zip(&measured) {
                    stats.add(values[i]);
                }
                let target = targets.as_ref().map(|t| t[index]);
                reached += usize::from(target.is_some_and(|t| t != label && t == pred));
                outcomes.push(ExampleOutcome {
                    eps,
                    index,
                    label,
                    clean_pred: clean_pred[index],
                    adv_pred: pred,
                    robust: clean_ok[index] && pred == label,
                    perturbation: measured[0][i],
                    linf: measured[1][i],
                    l2: measured[2][i],
                    l1: measured[3][i],
                    broken_by,
                    target,
                });
            }
        }
        if keep {
            kept.push(Tensor::cat(&batches_kept, 0)?);
        }
        let (ci_low, ci_high) = wilson_interval(robust, n);
        let [own, linf, l2, l1] = sizes;
        let record = AttackRecord {
            method: name.clone(),
            kind,
            norm: norm.into(),
            eps,
            n,
            clean_correct,
            clean_accuracy: fraction(clean_correct, n),
            adversarial_correct: robust,
            adversarial_accuracy: fraction(robust, n),
            ci_low,
            ci_high,
            mean_perturbation: own.mean(n),
            max_perturbation: own.max,
            mean_linf: linf.mean(n),
            max_linf: linf.max,
            mean_l2: l2.mean(n),
            max_l2: l2.max,
            mean_l1: l1.mean(n),
            max_l1: l1.max,
            mistakes,
            mean_confidence_on_mistakes: (mistakes > 0).then(|| confidence_sum / mistakes as f64),
            members: if attacks.len() > 1 {
                attacks
                    .iter()
                    .zip(&broken)
                    .map(|(a, &broken)| MemberRecord {
                        attack: a.name(),
                        kind: a.kind(),
                        broken,
                    })
                    .collect()
            } else {
                vec![]
            },
            targeted_n: aimed,
            target_reached: aimed.map(|_| reached),
            constant_logits,
            queries: queries(n),
        };
        records.push(Timed {
            record,
            seconds: timer.elapsed().as_secs_f64(),
        });
    }
    Ok((records, outcomes, kept))
}

/// The class each example is aimed at when `attack` picks its own targets
/// ([`Attack::targets`]), asked batch by batch as the examples will be attacked; `None` for
/// an attack that does not.
pub(super) fn own_targets(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    n: usize,
    batch_size: usize,
) -> Result<Option<Vec<u32>>> {
    let mut all = Vec::with_capacity(n);
    for (start, len) in batches(n, batch_size) {
        let xs = images.narrow(0, start, len)?;
        let Some(t) = attack.targets(model, &xs, &labels.narrow(0, start, len)?)? else {
            return Ok(None);
        };
        all.extend(t.to_dtype(DType::U32)?.to_vec1::<u32>()?);
    }
    Ok(Some(all))
}

/// One batch through `attacks` in turn (each attacking `attacked`; the predictions that
/// decide which rows stay open are `model`'s), AutoAttack's protocol: the first attack runs on every
/// row, each later one only on the rows for which `still_open(row, prediction)` holds. Returns
/// the adversarial batch, each row's prediction with its softmax probability, and the index of
/// the attack whose output each row holds: the last one run on it, which for a broken row is
/// the one that broke it.
///
/// The one worst-case loop: evaluation ([`evaluate_ensemble`]) and [`Ensemble::perturb`] both
/// run it.
pub(super) fn run_in_turn(
    attacked: &dyn Classifier,
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    xs: &Tensor,
    goal: &Goal<'_>,
    eps: f64,
    still_open: impl Fn(usize, u32) -> bool,
) -> Result<InTurn> {
    let len = xs.dim(0)?;
    let mut adv = xs.clone();
    // Every row is overwritten by the first attack, which runs on all of them.
    let mut preds = vec![(0u32, 0f64); len];
    let mut source = vec![0usize; len];
    for (k, attack) in attacks.iter().enumerate() {
        let rows: Vec<usize> = (0..len)
            .filter(|&i| k == 0 || still_open(i, preds[i].0))
            .collect();
        if rows.is_empty() {
            break;
        }
        let sub_xs = select_rows(xs, &rows)?;
        let sub_labels = select_rows(goal.labels(), &rows)?;
        let sub_goal = match goal {
            Goal::Untargeted { .. } => Goal::Untargeted {
                labels: &sub_labels,
            },
            Goal::Targeted { .. } => Goal::Targeted {
                targets: &sub_labels,
            },
        };
        let out = attack.perturb(attacked, &sub_xs, &sub_goal, eps)?;
        check_output_shape(&attack.name(), &out, &sub_xs)?;
        let sub_preds = predictions(&model.forward(&out, Mode::Eval)?)?;
        adv = replace_rows(&adv, &rows, &out)?;
        for (&i, pred) in rows.iter().zip(sub_preds) {
            preds[i] = pred;
            source[i] = k;
        }
    }
    Ok(InTurn { adv, preds, source })
}

/// What [`run_in_turn`] returns, by row of its batch.
pub(super) struct InTurn {
    pub(super) adv: Tensor,
    /// Predicted class and its softmax probability.
    pub(super) preds: Vec<(u32, f64)>,
    /// Index of the attack whose output the row holds.
    pub(super) source: Vec<usize>,
}
