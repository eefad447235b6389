//! Robust evaluation: an [`Attack`] (or the worst case over several, [`evaluate_ensemble`])
//! swept over ε, or Gaussian noise swept over σ, on a fixed set of images, each setting scored
//! with `n`, accuracies with Wilson intervals, and the perturbation *measured* on the attack's
//! output (in its own norm and in L∞, L2, L1), so an attack that breaks its budget shows in
//! the numbers instead of inflating them. [`evaluate_attack_detailed`] also returns every
//! example's outcome ([`ExampleOutcome`]).

use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::attack::arg_max;
use crate::batch::{replace_rows, select_rows};
use crate::norm::check_eps;
use crate::{wilson_interval, Attack, AttackKind, Goal, Norm};

/// The outcome of one attack at one ε (one row of `robustness.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackRecord {
    /// [`Attack::name`], or `"ensemble(a+b)"` for [`evaluate_ensemble`].
    pub attack: String,
    /// How the attack searches ([`Attack::kind`]); `other` when absent from a file.
    #[serde(default)]
    pub kind: AttackKind,
    /// The attack's threat model, in which the perturbation is measured.
    pub norm: Norm,
    pub eps: f64,
    /// Number of examples.
    pub n: usize,
    /// Examples classified correctly without attack.
    pub clean_correct: usize,
    pub clean_accuracy: f64,
    /// Examples classified correctly both clean and attacked. The clean input is itself in
    /// the ε-ball, so an example counts as robust only if both are right (worst case per
    /// example); this never exceeds `clean_correct`.
    pub adversarial_correct: usize,
    pub adversarial_accuracy: f64,
    /// Wilson 95% interval of `adversarial_accuracy`.
    pub adversarial_ci_low: f64,
    pub adversarial_ci_high: f64,
    /// Mean and maximum of `‖x_adv − x‖` in [`AttackRecord::norm`], measured on the output.
    pub mean_perturbation: f64,
    pub max_perturbation: f64,
    /// The same in L∞, L2 and L1, whatever the attack's norm, so attacks of different norms
    /// can be compared on one scale.
    pub mean_linf: f64,
    pub max_linf: f64,
    pub mean_l2: f64,
    pub max_l2: f64,
    pub mean_l1: f64,
    pub max_l1: f64,
    /// Attacked inputs the model misclassifies.
    pub mistakes: usize,
    /// Mean softmax probability of the (wrong) predicted class over those mistakes; `None`
    /// when there are none.
    pub mean_confidence_on_mistakes: Option<f64>,
    /// Wall time of crafting and scoring the attacked inputs, in seconds.
    pub seconds: f64,
    /// For an ensemble, its members in the order they ran, each with the examples it broke
    /// (that the members before it left robust); empty for a single attack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRecord>,
    /// For an attack that picks its own targets ([`Attack::targets`]): the examples aimed at
    /// a class other than their label, and how many of those the attacked input is
    /// classified as the target (targeted success, which robust accuracy does not measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted_n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_reached: Option<usize>,
    /// The model gave the same logits (within [`CONSTANT_LOGITS`]) for every clean example:
    /// it ignores its input, so no attack can move it and its "robustness" means nothing (the
    /// masking checks flag it). Absent from files when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant_logits: bool,
}

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

/// One member of an ensemble in an [`AttackRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// [`Attack::name`] of the member.
    pub attack: String,
    pub kind: AttackKind,
    /// Correctly classified examples this member broke after the earlier members failed.
    pub broken: usize,
}

/// Accuracy under additive Gaussian noise of one standard deviation (one row of the noise table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRecord {
    pub sigma: f64,
    /// Whether the noisy images were clipped to `[0, 1]`.
    pub clip: bool,
    pub seed: u64,
    pub n: usize,
    /// Noisy examples classified correctly.
    pub correct: usize,
    pub accuracy: f64,
    /// Wilson 95% interval of `accuracy`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// `1 − accuracy`.
    pub error: f64,
    pub seconds: f64,
}

/// The outcome of one example under one attack at one ε (one row of a per-example CSV).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleOutcome {
    pub eps: f64,
    /// Position of the example in the evaluated images.
    pub index: usize,
    pub label: u32,
    /// Predicted class of the clean and of the attacked input.
    pub clean_pred: u32,
    pub adv_pred: u32,
    /// Classified correctly both clean and attacked (the worst case over the ε-ball, which
    /// contains the clean input).
    pub robust: bool,
    /// `‖x_adv − x‖` in the attack's own norm, then in L∞, L2 and L1.
    pub perturbation: f64,
    pub linf: f64,
    pub l2: f64,
    pub l1: f64,
    /// The attack whose output turned this correctly classified example into a mistake (for
    /// an ensemble, the member that broke it); `None` when it is robust or was misclassified
    /// clean.
    #[serde(default)]
    pub broken_by: Option<String>,
    /// The class a targeted attack aimed this example at ([`Attack::targets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
}

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
) -> Result<Vec<AttackRecord>> {
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
) -> Result<(Vec<AttackRecord>, Vec<ExampleOutcome>)> {
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
) -> Result<(Vec<AttackRecord>, Vec<ExampleOutcome>, Vec<Tensor>)> {
    let members = attack.members();
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

/// The per-example worst case over `attacks` at every ε of `eps_list`: an example is robust
/// only if it is classified correctly clean and every attack failed on it (DESIGN.md
/// decision 5).
///
/// Following AutoAttack (Croce & Hein 2020, <https://arxiv.org/abs/2003.01690>), the first
/// attack runs on every example and each later one only on the examples still robust, so the
/// ensemble costs little more than its first member on a weak model. An example keeps the
/// output of the attack that broke it, or of the last attack when none did; perturbation sizes
/// and confidences are measured on that output. The record is named `"ensemble(a+b+…)"` after
/// the members' names, with [`AttackKind::Ensemble`]; [`AttackRecord::members`] counts the
/// examples each member broke. [`Ensemble`] is the same worst case as an [`Attack`] with a
/// name of its own.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
///
/// # Errors
/// As [`evaluate_attack`], and on an empty list or members with different norms (the record
/// measures one threat model).
pub fn evaluate_ensemble(
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
) -> Result<Vec<AttackRecord>> {
    let names: Vec<String> = attacks.iter().map(|a| a.name()).collect();
    let name = format!("ensemble({})", names.join("+"));
    let (records, _, _) = evaluate(
        model,
        attacks,
        name,
        AttackKind::Ensemble,
        images,
        labels,
        eps_list,
        batch_size,
        false,
    )?;
    Ok(records)
}

/// Running sum and maximum of perturbation sizes.
#[derive(Clone, Copy, Default)]
struct SizeStats {
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
fn evaluate(
    model: &dyn Classifier,
    attacks: &[&dyn Attack],
    name: String,
    kind: AttackKind,
    images: &Tensor,
    labels: &Tensor,
    eps_list: &[f64],
    batch_size: usize,
    keep: bool,
) -> Result<(Vec<AttackRecord>, Vec<ExampleOutcome>, Vec<Tensor>)> {
    let (n, labels, label_ids) = check_inputs(images, labels, batch_size)?;
    for &eps in eps_list {
        check_eps(eps)?;
    }
    let norm = common_norm(attacks)?;
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
            let InTurn { adv, preds, source } = run_in_turn(
                model,
                attacks,
                &xs,
                &Goal::Untargeted { labels: &ys },
                eps,
                |i, pred| clean_ok[start + i] && pred == ids[i],
            )?;
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
        records.push(AttackRecord {
            attack: name.clone(),
            kind,
            norm,
            eps,
            n,
            clean_correct,
            clean_accuracy: fraction(clean_correct, n),
            adversarial_correct: robust,
            adversarial_accuracy: fraction(robust, n),
            adversarial_ci_low: ci_low,
            adversarial_ci_high: ci_high,
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
            seconds: timer.elapsed().as_secs_f64(),
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
        });
    }
    Ok((records, outcomes, kept))
}

/// The class each example is aimed at when `attack` picks its own targets
/// ([`Attack::targets`]), asked batch by batch as the examples will be attacked; `None` for
/// an attack that does not.
fn own_targets(
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

/// The norm shared by `attacks`.
///
/// # Errors
/// On an empty list or members with different norms (a record measures one threat model).
fn common_norm(attacks: &[&dyn Attack]) -> Result<Norm> {
    match attacks {
        [] => bail!("expected at least one attack, got none"),
        [first, rest @ ..] => {
            if let Some(other) = rest.iter().find(|a| a.norm() != first.norm()) {
                bail!(
                    "expected attacks sharing one norm, got {} ({}) and {} ({})",
                    first.name(),
                    first.norm(),
                    other.name(),
                    other.norm()
                )
            }
            Ok(first.norm())
        }
    }
}

/// One batch through `attacks` in turn, AutoAttack's protocol: the first attack runs on every
/// row, each later one only on the rows for which `still_open(row, prediction)` holds. Returns
/// the adversarial batch, each row's prediction with its softmax probability, and the index of
/// the attack whose output each row holds: the last one run on it, which for a broken row is
/// the one that broke it.
///
/// The one worst-case loop: evaluation ([`evaluate_ensemble`]) and [`Ensemble::perturb`] both
/// run it.
fn run_in_turn(
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
        let out = attack.perturb(model, &sub_xs, &sub_goal, eps)?;
        if out.dims() != sub_xs.dims() {
            bail!(
                "attack {} returned shape {:?}, expected {:?}",
                attack.name(),
                out.dims(),
                sub_xs.dims()
            )
        }
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
struct InTurn {
    adv: Tensor,
    /// Predicted class and its softmax probability.
    preds: Vec<(u32, f64)>,
    /// Index of the attack whose output the row holds.
    source: Vec<usize>,
}

/// The per-example worst case over several attacks of one norm, as an [`Attack`] of its own
/// ([`AttackKind::Ensemble`]): the first member runs on every example, each later one on the
/// examples the earlier ones did not break (misclassified when untargeted, classified as the
/// target when targeted); an example keeps the output of the member that broke it, or of the
/// last member when none did. [`crate::evaluate_attack_detailed`] runs the members one by one
/// ([`Attack::members`]) and records which one broke each example.
///
/// This is the composition of AutoAttack (Croce & Hein 2020,
/// <https://arxiv.org/abs/2003.01690>); [`crate::AutoAttack`] builds its standard members.
pub struct Ensemble {
    name: String,
    norm: Norm,
    members: Vec<Box<dyn Attack>>,
}

impl Ensemble {
    /// An ensemble called `name` running `members` in order.
    ///
    /// # Errors
    /// On an empty list or members with different norms.
    pub fn new(name: impl Into<String>, members: Vec<Box<dyn Attack>>) -> Result<Self> {
        let refs: Vec<&dyn Attack> = members.iter().map(|m| m.as_ref()).collect();
        let norm = common_norm(&refs)?;
        Ok(Self {
            name: name.into(),
            norm,
            members,
        })
    }
}

impl Attack for Ensemble {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn kind(&self) -> AttackKind {
        AttackKind::Ensemble
    }

    fn members(&self) -> Vec<&dyn Attack> {
        self.members.iter().map(|m| m.as_ref()).collect()
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        xs: &Tensor,
        goal: &Goal<'_>,
        eps: f64,
    ) -> Result<Tensor> {
        check_eps(eps)?;
        let ids = goal.checked_ids(xs.dim(0)?, model.n_classes())?;
        let targeted = matches!(goal, Goal::Targeted { .. });
        let res = run_in_turn(model, &self.members(), xs, goal, eps, |i, pred| {
            (pred == ids[i]) != targeted
        })?;
        Ok(res.adv)
    }
}

/// Accuracy of `model` on `x + σ·z`, `z ~ N(0, I)`, for every σ of `sigmas`, clipped to
/// `[0, 1]` when `clip`.
///
/// The noise comes from a generator seeded with `seed`, restarted for every σ: each σ scales
/// the *same* standard-normal draw (common random numbers), so the accuracy curve over σ is
/// not made jagged by resampling, and one σ's result does not depend on the others in the list.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes
pub fn gaussian_noise(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    sigmas: &[f64],
    clip: bool,
    seed: u64,
    batch_size: usize,
) -> Result<Vec<NoiseRecord>> {
    let (n, _, label_ids) = check_inputs(images, labels, batch_size)?;
    for &sigma in sigmas {
        if !(sigma.is_finite() && sigma >= 0.0) {
            bail!("sigma must be finite and >= 0, got {sigma}")
        }
    }
    let mut records = Vec::with_capacity(sigmas.len());
    for &sigma in sigmas {
        let timer = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut correct = 0;
        for (start, len) in batches(n, batch_size) {
            let xs = images.narrow(0, start, len)?;
            let z: Vec<f32> = (0..xs.elem_count())
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            let z = Tensor::from_vec(z, xs.shape(), &Device::Cpu)?
                .to_dtype(xs.dtype())?
                .to_device(xs.device())?;
            let mut noisy = xs.add(&z.affine(sigma, 0.0)?)?;
            if clip {
                noisy = noisy.clamp(0.0, 1.0)?;
            }
            let preds = predictions(&model.forward(&noisy, Mode::Eval)?)?;
            let ids = &label_ids[start..start + len];
            correct += preds
                .iter()
                .zip(ids)
                .filter(|((pred, _), y)| pred == *y)
                .count();
        }
        let (ci_low, ci_high) = wilson_interval(correct, n);
        records.push(NoiseRecord {
            sigma,
            clip,
            seed,
            n,
            correct,
            accuracy: fraction(correct, n),
            ci_low,
            ci_high,
            error: 1.0 - fraction(correct, n),
            seconds: timer.elapsed().as_secs_f64(),
        });
    }
    Ok(records)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::LinearModel;
    use crate::FastGradient;

    /// Class 0 iff x₀ > x₁: logits (x₀ − x₁, x₁ − x₀).
    fn model_and_data() -> Result<(LinearModel, Tensor, Tensor)> {
        let model = LinearModel::new(&[[1.0, -1.0], [-1.0, 1.0]])?;
        // Margins towards the true class: 0.2, 0.5, 0.2, −0.1 (misclassified), 0.8. FGSM
        // shrinks a margin by 2ε, so the examples fall at ε > 0.1, 0.25, 0.1, –, 0.4.
        let images = Tensor::new(
            &[
                [0.6f32, 0.4],
                [0.7, 0.2],
                [0.3, 0.5],
                [0.45, 0.55],
                [0.9, 0.1],
            ],
            &Device::Cpu,
        )?;
        let labels = Tensor::new(&[0u32, 0, 1, 0, 0], &Device::Cpu)?;
        Ok((model, images, labels))
    }

    #[test]
    fn fgsm_on_a_linear_model_gives_the_hand_counted_records() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let eps_list = [0.0, 0.05, 0.15, 0.3, 0.42];
        let records = evaluate_attack(
            &model,
            &FastGradient::fgsm(),
            &images,
            &labels,
            &eps_list,
            2,
        )?;
        let robust: Vec<usize> = records.iter().map(|r| r.adversarial_correct).collect();
        assert_eq!(robust, [4, 4, 2, 1, 0]);
        for r in &records {
            assert_eq!(
                (r.n, r.clean_correct, r.attack.as_str(), r.norm),
                (5, 4, "fast-gradient-linf", Norm::Linf)
            );
            assert_eq!(
                (r.adversarial_ci_low, r.adversarial_ci_high),
                wilson_interval(r.adversarial_correct, 5)
            );
            assert!((r.adversarial_accuracy - r.adversarial_correct as f64 / 5.0).abs() < 1e-12);
            // No pixel reaches the box edge, so every example moves by exactly ε.
            assert!(
                (r.max_perturbation - r.eps).abs() < 1e-6
                    && (r.mean_perturbation - r.eps).abs() < 1e-6,
                "{r:?}"
            );
            assert_eq!(r.mistakes, 5 - r.adversarial_correct);
        }
        // Unattacked, the one mistake has logits (−0.1, 0.1): confidence sigmoid(0.2).
        let sigmoid = 1.0 / (1.0 + (-0.2f64).exp());
        assert!((records[0].mean_confidence_on_mistakes.unwrap() - sigmoid).abs() < 1e-6);
        // Batching does not change the outcome.
        let whole = evaluate_attack(
            &model,
            &FastGradient::fgsm(),
            &images,
            &labels,
            &eps_list,
            5,
        )?;
        assert_eq!(
            whole
                .iter()
                .map(|r| r.adversarial_correct)
                .collect::<Vec<_>>(),
            robust
        );
        Ok(())
    }

    /// A broken attack that spends twice its budget.
    struct Overspending(FastGradient);

    impl Attack for Overspending {
        fn name(&self) -> String {
            "overspending".to_string()
        }
        fn norm(&self) -> Norm {
            self.0.norm
        }
        fn perturb(
            &self,
            model: &dyn Classifier,
            xs: &Tensor,
            goal: &Goal<'_>,
            eps: f64,
        ) -> Result<Tensor> {
            self.0.perturb(model, xs, goal, 2.0 * eps)
        }
    }

    #[test]
    fn an_attack_over_budget_shows_in_the_measured_perturbation() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let attack = Overspending(FastGradient::new(Norm::L2));
        let records = evaluate_attack(&model, &attack, &images, &labels, &[0.1], 3)?;
        assert!(
            (records[0].max_perturbation - 0.2).abs() < 1e-6,
            "{:?}",
            records[0]
        );
        Ok(())
    }

    #[test]
    fn bad_inputs_are_rejected_before_any_work() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let fgsm = FastGradient::fgsm();
        let err = |r: Result<Vec<AttackRecord>>| r.expect_err("must fail").to_string();
        assert!(err(evaluate_attack(
            &model,
            &fgsm,
            &images,
            &labels,
            &[0.1, -0.1],
            2
        ))
        .contains("eps must be"));
        assert!(
            err(evaluate_attack(&model, &fgsm, &images, &labels, &[0.1], 0)).contains("batch size")
        );
        let short = labels.narrow(0, 0, 3)?;
        assert!(
            err(evaluate_attack(&model, &fgsm, &images, &short, &[0.1], 2))
                .contains("one label per image")
        );
        assert!(gaussian_noise(&model, &images, &labels, &[f64::NAN], true, 1, 2).is_err());
        Ok(())
    }

    #[test]
    fn non_finite_or_absurd_logits_stop_the_evaluation_instead_of_scoring_class_0() -> Result<()> {
        let (_, images, labels) = model_and_data()?;
        let fgsm = FastGradient::fgsm();
        // One NaN weight makes every logit NaN; 1e30 weights stand for a diverged model;
        // an infinite weight makes infinite logits.
        let nan = LinearModel::new(&[[1.0, f32::NAN], [-1.0, 1.0]])?;
        let diverged = LinearModel::new(&[[1e30, -1e30], [-1e30, 1e30]])?;
        let overflow = LinearModel::new(&[[f32::INFINITY, 1.0], [-1.0, 1.0]])?;
        for (model, found) in [
            (&nan, "is NaN (NaN;"),
            (&diverged, "beyond any trained model's range"),
            (&overflow, "is inf (infinite;"),
        ] {
            let err = evaluate_attack(model, &fgsm, &images, &labels, &[0.1], 2)
                .expect_err("must refuse")
                .to_string();
            assert!(
                err.contains(found) && err.contains("no accuracy is reported"),
                "{err}"
            );
            let err = gaussian_noise(model, &images, &labels, &[0.1], true, 1, 2)
                .expect_err("must refuse")
                .to_string();
            assert!(err.contains(found), "{err}");
            assert!(crate::predict(model, &images, 2).is_err());
        }
        let err = evaluate_attack(&nan, &fgsm, &images, &labels, &[0.1], 5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("class 0 of example 0 in a batch of 5")
                && err.contains("5 of the batch's 10 logits"),
            "{err}"
        );
        // A large but finite logit of a working model is fine.
        let big = LinearModel::new(&[[1e6, -1e6], [-1e6, 1e6]])?;
        evaluate_attack(&big, &fgsm, &images, &labels, &[0.1], 2)?;
        Ok(())
    }

    #[test]
    fn constant_logits_are_recorded_and_varying_ones_are_not() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let fgsm = FastGradient::fgsm();
        let constant = LinearModel::new(&[[0.0, 0.0], [0.0, 0.0]])?;
        let records = evaluate_attack(&constant, &fgsm, &images, &labels, &[0.1], 2)?;
        assert!(records[0].constant_logits);
        let text = serde_json::to_string(&records[0]).unwrap();
        assert!(text.contains("\"constant_logits\":true"), "{text}");
        let records = evaluate_attack(&model, &fgsm, &images, &labels, &[0.1], 2)?;
        assert!(!records[0].constant_logits);
        // Absent when false: files written before the field read back the same.
        let text = serde_json::to_string(&records[0]).unwrap();
        assert!(!text.contains("constant_logits"), "{text}");
        Ok(())
    }

    #[test]
    fn gaussian_noise_is_clean_at_zero_and_follows_the_seed() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let sigmas = [0.0, 0.2, 1.0];
        let run = |clip, seed| gaussian_noise(&model, &images, &labels, &sigmas, clip, seed, 2);
        let a = run(true, 9)?;
        assert_eq!((a[0].correct, a[0].n), (4, 5));
        assert!((a[0].error - 0.2).abs() < 1e-12);
        assert_eq!(
            (a[1].ci_low, a[1].ci_high),
            wilson_interval(a[1].correct, 5)
        );
        let b = run(true, 9)?;
        assert_eq!(
            a.iter().map(|r| r.correct).collect::<Vec<_>>(),
            b.iter().map(|r| r.correct).collect::<Vec<_>>()
        );
        // Noise drawn from other seeds, clipped or not, changes some outcome at σ = 1.
        let outcomes: std::collections::HashSet<usize> = (0..8)
            .flat_map(|s| [run(true, s), run(false, s)])
            .map(|r| r.unwrap()[2].correct)
            .collect();
        assert!(outcomes.len() > 1, "{outcomes:?}");
        Ok(())
    }

    #[test]
    fn records_round_trip_through_json() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let records = evaluate_attack(
            &model,
            &FastGradient::new(Norm::Lp(1.5)),
            &images,
            &labels,
            &[0.0, 0.5],
            5,
        )?;
        assert!(records[0].mean_confidence_on_mistakes.is_some());
        let text = serde_json::to_string(&records).unwrap();
        assert!(text.contains("\"norm\":1.5"), "{text}");
        let back: Vec<AttackRecord> = serde_json::from_str(&text).unwrap();
        // serde_json's default float parsing may differ in the last bit, so floats get a tolerance.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(
                (&b.attack, b.kind, b.norm, b.n, b.clean_correct),
                (&r.attack, r.kind, r.norm, r.n, r.clean_correct)
            );
            assert!(close(b.mean_l2, r.mean_l2) && close(b.max_l1, r.max_l1));
            assert_eq!(
                (b.adversarial_correct, b.mistakes),
                (r.adversarial_correct, r.mistakes)
            );
            assert!(close(b.max_perturbation, r.max_perturbation) && close(b.seconds, r.seconds));
            let (bc, rc) = (b.mean_confidence_on_mistakes, r.mean_confidence_on_mistakes);
            assert!(
                bc.zip(rc).is_some_and(|(x, y)| close(x, y)) || bc == rc,
                "{bc:?} {rc:?}"
            );
        }
        assert_eq!(back.len(), records.len());
        Ok(())
    }

    #[test]
    fn records_measure_the_perturbation_in_every_norm() -> Result<()> {
        // Every example moves along ±(−1, 1) without reaching the box edge: FGSM by ε per
        // pixel (L∞ ε, L2 ε√2, L1 2ε), the L2 method by ε/√2 per pixel (L∞ ε/√2, L1 ε√2).
        let (model, images, labels) = model_and_data()?;
        let eps = 0.05;
        let root2 = 2f64.sqrt();
        for (attack, linf, l2, l1) in [
            (FastGradient::fgsm(), eps, eps * root2, 2.0 * eps),
            (FastGradient::new(Norm::L2), eps / root2, eps, eps * root2),
        ] {
            let r = &evaluate_attack(&model, &attack, &images, &labels, &[eps], 5)?[0];
            for (name, mean, max, want) in [
                ("linf", r.mean_linf, r.max_linf, linf),
                ("l2", r.mean_l2, r.max_l2, l2),
                ("l1", r.mean_l1, r.max_l1, l1),
            ] {
                assert!(
                    (mean - want).abs() < 1e-6 && (max - want).abs() < 1e-6,
                    "{} {name}: mean {mean} max {max}, want {want}",
                    r.attack
                );
            }
            assert_eq!(r.kind, AttackKind::SingleStep);
        }
        Ok(())
    }

    #[test]
    fn detailed_outcomes_agree_with_the_records() -> Result<()> {
        let (model, images, labels) = model_and_data()?;
        let eps_list = [0.05, 0.15];
        let (records, outcomes) = evaluate_attack_detailed(
            &model,
            &FastGradient::fgsm(),
            &images,
            &labels,
            &eps_list,
            2,
        )?;
        assert_eq!(records, {
            // Wall time aside, the records are those of evaluate_attack.
            let mut plain = evaluate_attack(
                &model,
                &FastGradient::fgsm(),
                &images,
                &labels,
                &eps_list,
                2,
            )?;
            for (p, r) in plain.iter_mut().zip(&records) {
                p.seconds = r.seconds;
            }
            plain
        });
        assert_eq!(outcomes.len(), 10);
        for (r, chunk) in records.iter().zip(outcomes.chunks(5)) {
            let indices: Vec<usize> = chunk.iter().map(|o| o.index).collect();
            assert_eq!(indices, [0, 1, 2, 3, 4]);
            assert!(chunk.iter().all(|o| o.eps == r.eps));
            let robust = chunk.iter().filter(|o| o.robust).count();
            assert_eq!(robust, r.adversarial_correct);
            let wrong = chunk.iter().filter(|o| o.adv_pred != o.label).count();
            assert_eq!(wrong, r.mistakes);
            // Example 3 is misclassified clean (class 1 for label 0) and never robust.
            assert_eq!(
                (chunk[3].label, chunk[3].clean_pred, chunk[3].robust),
                (0, 1, false)
            );
            for o in chunk {
                assert!(
                    (o.linf - r.eps).abs() < 1e-6 && o.perturbation == o.linf,
                    "{o:?}"
                );
                assert!((o.l1 - 2.0 * r.eps).abs() < 1e-6, "{o:?}");
            }
        }
        // ε 0.05 breaks nobody, ε 0.15 examples 0 and 2 (margin 0.2 each).
        let broken: Vec<usize> = outcomes[5..]
            .iter()
            .filter(|o| o.clean_pred == o.label && !o.robust)
            .map(|o| o.index)
            .collect();
        assert_eq!(broken, [0, 2]);
        let text = serde_json::to_string(&outcomes[5]).unwrap();
        let back: ExampleOutcome = serde_json::from_str(&text).unwrap();
        assert_eq!((back.index, back.adv_pred, back.robust), (0, 1, false));
        Ok(())
    }

    #[test]
    fn ensemble_is_the_per_example_worst_case() -> Result<()> {
        use crate::testing::{balanced_maxout, inputs};
        use crate::{AttackLoss, Pgd};
        let model = balanced_maxout()?;
        let (images, _) = inputs(60, 11)?;
        let labels = model.forward(&images, Mode::Eval)?.argmax(1)?;
        // Deterministic members (no random start), so each example's outcome under a member
        // does not depend on which other examples share its batch.
        let fgsm = FastGradient::fgsm();
        let pgd = Pgd {
            steps: 5,
            random_start: false,
            loss: AttackLoss::Margin,
            ..Pgd::new(Norm::Linf)
        };
        let eps_list = [0.02, 0.05];
        let robust_of = |attack: &dyn Attack| -> Result<Vec<bool>> {
            let (_, outcomes) =
                evaluate_attack_detailed(model.as_ref(), attack, &images, &labels, &eps_list, 25)?;
            Ok(outcomes.iter().map(|o| o.robust).collect())
        };
        let (a, b) = (robust_of(&fgsm)?, robust_of(&pgd)?);
        let members: [&dyn Attack; 2] = [&fgsm, &pgd];
        let records = evaluate_ensemble(model.as_ref(), &members, &images, &labels, &eps_list, 25)?;
        for (k, r) in records.iter().enumerate() {
            let both = (0..60).filter(|&i| a[k * 60 + i] && b[k * 60 + i]).count();
            assert_eq!(r.adversarial_correct, both, "eps {}", r.eps);
            assert_eq!(
                (r.attack.as_str(), r.kind, r.norm),
                (
                    "ensemble(fast-gradient-linf+pgd-margin-linf)",
                    AttackKind::Ensemble,
                    Norm::Linf
                )
            );
            assert!(r.max_perturbation <= r.eps + 1e-6);
        }
        // Each member alone is at least as accurate, and the sweep is not trivial.
        let only_a = a[60..].iter().filter(|&&x| x).count();
        let only_b = b[60..].iter().filter(|&&x| x).count();
        assert!(records[1].adversarial_correct <= only_a.min(only_b));
        assert!(records[1].adversarial_correct < records[0].adversarial_correct);

        let err = |attacks: &[&dyn Attack]| {
            evaluate_ensemble(model.as_ref(), attacks, &images, &labels, &eps_list, 25)
                .expect_err("invalid ensemble")
                .to_string()
        };
        assert!(err(&[]).contains("expected at least one attack, got none"));
        let l2 = FastGradient::new(Norm::L2);
        assert!(err(&[&fgsm, &l2]).contains(
            "expected attacks sharing one norm, got fast-gradient-linf (linf) and fast-gradient-l2 (l2)"
        ));
        Ok(())
    }

    #[test]
    fn an_ensemble_attack_is_evaluated_member_by_member() -> Result<()> {
        use crate::testing::{balanced_maxout, inputs, next_class};
        use crate::{AttackLoss, Pgd};
        let model = balanced_maxout()?;
        let (images, _) = inputs(60, 12)?;
        let labels = model.forward(&images, Mode::Eval)?.argmax(1)?;
        let pgd = Pgd {
            steps: 5,
            random_start: false,
            loss: AttackLoss::Margin,
            ..Pgd::new(Norm::Linf)
        };
        let ensemble = Ensemble::new("pair", vec![Box::new(FastGradient::fgsm()), Box::new(pgd)])?;
        assert_eq!(ensemble.members().len(), 2);
        let eps_list = [0.02, 0.05];
        let (records, outcomes) =
            evaluate_attack_detailed(model.as_ref(), &ensemble, &images, &labels, &eps_list, 25)?;
        let members: [&dyn Attack; 2] = [&FastGradient::fgsm(), &pgd];
        let plain = evaluate_ensemble(model.as_ref(), &members, &images, &labels, &eps_list, 25)?;
        for (r, p) in records.iter().zip(&plain) {
            assert_eq!((r.attack.as_str(), r.kind), ("pair", AttackKind::Ensemble));
            assert_eq!(r.adversarial_correct, p.adversarial_correct);
            assert_eq!(r.members, p.members);
            let counted: usize = r.members.iter().map(|m| m.broken).sum();
            assert_eq!(counted, r.clean_correct - r.adversarial_correct);
            let by_name = |name: &str| {
                outcomes
                    .iter()
                    .filter(|o| o.eps == r.eps && o.broken_by.as_deref() == Some(name))
                    .count()
            };
            assert_eq!(by_name("fast-gradient-linf"), r.members[0].broken);
            assert_eq!(by_name("pgd-margin-linf"), r.members[1].broken);
        }
        // At ε 0.02 the margin PGD breaks some examples FGSM left, so both members count.
        assert!(
            records[0].members.iter().all(|m| m.broken > 0),
            "{records:?}"
        );
        // As an attack on its own: each example keeps the point that broke it (targeted: that
        // reached its target), so the output is at least as good as each member's.
        let targets = next_class(&labels)?;
        let adv = ensemble.perturb(
            model.as_ref(),
            &images,
            &Goal::Targeted { targets: &targets },
            0.1,
        )?;
        let hits = |x: &Tensor| -> Result<usize> {
            let preds = model.forward(x, Mode::Eval)?.argmax(1)?.to_vec1::<u32>()?;
            Ok(preds
                .iter()
                .zip(targets.to_vec1::<u32>()?)
                .filter(|(p, t)| **p == *t)
                .count())
        };
        let alone = pgd.perturb(
            model.as_ref(),
            &images,
            &Goal::Targeted { targets: &targets },
            0.1,
        )?;
        assert!(hits(&adv)? >= hits(&alone)?);
        Ok(())
    }
}
