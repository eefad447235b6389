//! Transfer (black-box) evaluation: adversarial examples crafted white-box against a *source*
//! model ([`craft`]) are scored on other *target* models ([`score_transfer`]). Crafting is the
//! expensive half, so it happens once per source and its output is reused for every target
//! ([`transfer_matrix`] does both for a grid; the suite runner caches crafted tensors on disk).
//! [`EnsembleModel`] averages the logits of several models, so an ensemble can be a source.
//!
//! **Paper**: Szegedy et al., "Intriguing properties of neural networks", ICLR 2014,
//! <https://arxiv.org/abs/1312.6199> (cross-model generalization); Goodfellow, Shlens & Szegedy,
//! ICLR 2015, <https://arxiv.org/abs/1412.6572> §8 (transfer of FGSM examples and agreement
//! on the wrong class); Tramèr et al., "Ensemble Adversarial Training", ICLR 2018,
//! <https://arxiv.org/abs/1705.07204> (ensembles as sources).

use std::sync::Arc;

use candle_core::{bail, DType, Result, Tensor};
use gauntlet_models::{Classifier, Frozen, Mode, ModelSpec, Params};

use crate::batch::check_output_shape;
use crate::norm::check_eps;
use crate::{wilson_interval, Attack, Goal, Norm, TransferRecord};

/// A classifier whose logits are the mean of its members' logits. Its spec is the first
/// member's; it has no parameters of its own.
pub struct EnsembleModel {
    members: Vec<Arc<dyn Classifier>>,
    params: Params,
}

impl EnsembleModel {
    /// # Errors
    /// On an empty list, or members that disagree on input shape or number of classes.
    pub fn new(members: Vec<Arc<dyn Classifier>>) -> Result<Self> {
        let Some(first) = members.first() else {
            bail!("an ensemble needs at least one member, got none")
        };
        let (input, n_classes) = (first.spec().input, first.n_classes());
        if let Some(other) = members
            .iter()
            .find(|m| m.spec().input != input || m.n_classes() != n_classes)
        {
            bail!(
                "ensemble members must share input shape and classes: expected {input:?} and {n_classes}, got {:?} and {}",
                other.spec().input,
                other.n_classes()
            )
        }
        Ok(Self {
            members,
            params: Params::default(),
        })
    }

    pub fn members(&self) -> &[Arc<dyn Classifier>] {
        &self.members
    }
}

impl Classifier for EnsembleModel {
    fn spec(&self) -> &ModelSpec {
        self.members[0].spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut sum = self.members[0].forward(xs, mode)?;
        for member in &self.members[1..] {
            sum = sum.add(&member.forward(xs, mode)?)?;
        }
        sum.affine(1.0 / self.members.len() as f64, 0.0)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn freeze(&self) -> Result<Frozen<'_>> {
        Frozen::all(self.members.iter().map(|m| m.as_ref()))
    }
}

/// Untargeted adversarial examples for `images` against `model`, `batch_size` at a time.
///
/// # Shapes
/// - `images`: `(n, channels, height, width)` in `[0, 1]`; `labels`: `(n,)` integer classes;
///   returns the shape of `images`, detached
///
/// # Errors
/// On a negative or non-finite ε, `batch_size = 0`, a label count different from the image
/// count, an attack output of the wrong shape, and model errors.
pub fn craft(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    eps: f64,
    batch_size: usize,
) -> Result<Tensor> {
    check_eps(eps)?;
    let n = check_batch(images, labels, batch_size)?;
    let labels = labels.to_dtype(DType::U32)?;
    let mut parts = Vec::with_capacity(n.div_ceil(batch_size));
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    for (start, len) in batches(n, batch_size) {
        let xs = images.narrow(0, start, len)?;
        let ys = labels.narrow(0, start, len)?;
        let adv = attack.perturb(model, &xs, &Goal::Untargeted { labels: &ys }, eps)?;
        check_output_shape(&attack.name(), &adv, &xs)?;
        parts.push(adv.detach());
    }
    if parts.is_empty() {
        return Ok(images.clone());
    }
    Tensor::cat(&parts, 0)
}

/// The class `model` predicts for each image (eval mode, arg-max of the logits, first on ties).
///
/// # Shapes
/// - `images`: `(n, channels, height, width)`; returns `n` classes
pub fn predict(model: &dyn Classifier, images: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    Ok(predictions(model, images, batch_size)?
        .into_iter()
        .map(|(pred, _)| pred)
        .collect())
}

/// Scores inputs crafted against `source` (`x_adv`, on which the source predicted
/// `source_adv_preds`) on `target_model`, named `target`.
///
/// `images` are the clean inputs `x_adv` was crafted from: an example counts as correct only
/// if the target classifies both right (see [`TransferRecord::adversarial_correct`]).
///
/// # Shapes
/// - `images`, `x_adv`: `(n, channels, height, width)`; `labels`: `(n,)`;
///   `source_adv_preds`: `n` classes
///
/// # Errors
/// On mismatched lengths or shapes, `batch_size = 0`, and model errors.
#[allow(clippy::too_many_arguments)]
pub fn score_transfer(
    source: &str,
    target: &str,
    target_model: &dyn Classifier,
    images: &Tensor,
    x_adv: &Tensor,
    source_adv_preds: &[u32],
    labels: &Tensor,
    attack_name: &str,
    norm: Norm,
    eps: f64,
    batch_size: usize,
) -> Result<TransferRecord> {
    let n = check_batch(x_adv, labels, batch_size)?;
    if images.dims() != x_adv.dims() {
        bail!(
            "expected clean and adversarial images of one shape, got {:?} and {:?}",
            images.dims(),
            x_adv.dims()
        )
    }
    if source_adv_preds.len() != n {
        bail!(
            "expected one source prediction per image ({n}), got {}",
            source_adv_preds.len()
        )
    }
    let label_ids = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let clean = predict(target_model, images, batch_size)?;
    let adv = predictions(target_model, x_adv, batch_size)?;

    let (mut clean_correct, mut robust, mut mistakes, mut confidence_sum) = (0, 0, 0, 0f64);
    let (mut source_mistakes, mut agree, mut both_wrong, mut agree_both_wrong) = (0, 0, 0, 0);
    for i in 0..n {
        let (y, (pred, confidence), source_pred) = (label_ids[i], adv[i], source_adv_preds[i]);
        clean_correct += usize::from(clean[i] == y);
        if pred == y {
            robust += usize::from(clean[i] == y);
        } else {
            mistakes += 1;
            confidence_sum += confidence;
        }
        if source_pred != y {
            source_mistakes += 1;
            agree += usize::from(pred == source_pred);
            if pred != y {
                both_wrong += 1;
                agree_both_wrong += usize::from(pred == source_pred);
            }
        }
    }
    let share = |k: usize, of: usize| (of > 0).then(|| k as f64 / of as f64);
    let accuracy = share(robust, n).unwrap_or(0.0);
    let (ci_low, ci_high) = wilson_interval(robust, n);
    Ok(TransferRecord {
        source: source.to_string(),
        target: target.to_string(),
        attack: attack_name.to_string(),
        norm: norm.into(),
        eps,
        n,
        clean_correct,
        adversarial_correct: robust,
        accuracy,
        error: 1.0 - accuracy,
        ci_low,
        ci_high,
        target_mistakes: mistakes,
        mean_confidence_on_mistakes: (mistakes > 0).then(|| confidence_sum / mistakes as f64),
        source_mistakes,
        agreement: share(agree, source_mistakes),
        agreement_when_both_wrong: share(agree_both_wrong, both_wrong),
    })
}

/// Every source against every target: examples are crafted once per source (all at one ε)
/// and scored on each target. Records are source-major, in the order given.
///
/// # Errors
/// Two sources or two targets of one name (their records could not be told apart); else as
/// [`craft`] and [`score_transfer`].
pub fn transfer_matrix(
    sources: &[(&str, &dyn Classifier)],
    targets: &[(&str, &dyn Classifier)],
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    eps: f64,
    batch_size: usize,
) -> Result<Vec<TransferRecord>> {
    for (side, models) in [("sources", sources), ("targets", targets)] {
        if let Some(i) = (1..models.len()).find(|&i| models[..i].iter().any(|m| m.0 == models[i].0))
        {
            bail!("transfer matrix: two {side} are named `{}`", models[i].0)
        }
    }
    let mut records = Vec::with_capacity(sources.len() * targets.len());
    for &(source, source_model) in sources {
        let x_adv = craft(source_model, attack, images, labels, eps, batch_size)?;
        let source_preds = predict(source_model, &x_adv, batch_size)?;
        for &(target, target_model) in targets {
            records.push(score_transfer(
                source,
                target,
                target_model,
                images,
                &x_adv,
                &source_preds,
                labels,
                &attack.name(),
                attack.norm(),
                eps,
                batch_size,
            )?);
        }
    }
    Ok(records)
}

fn check_batch(images: &Tensor, labels: &Tensor, batch_size: usize) -> Result<usize> {
    if batch_size == 0 {
        bail!("batch size must be positive, got 0")
    }
    let n = images.dim(0)?;
    let n_labels = labels.dims1()?;
    if n_labels != n {
        bail!("expected one label per image ({n}), got {n_labels}")
    }
    Ok(n)
}

fn batches(n: usize, batch_size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(batch_size)
        .map(move |start| (start, batch_size.min(n - start)))
}

/// The arg-max class of each image and its softmax probability.
fn predictions(
    model: &dyn Classifier,
    images: &Tensor,
    batch_size: usize,
) -> Result<Vec<(u32, f64)>> {
    if batch_size == 0 {
        bail!("batch size must be positive, got 0")
    }
    // The weights stay fixed through the loop: prepared once for all its batches.
    let _frozen = model.freeze()?;
    let n = images.dim(0)?;
    let mut res = Vec::with_capacity(n);
    for (start, len) in batches(n, batch_size) {
        let logits = model.forward(&images.narrow(0, start, len)?, Mode::Eval)?;
        res.extend(crate::eval::predictions(&logits)?);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::testing::{balanced_maxout, inputs};
    use crate::{evaluate_attack, FastGradient};
    use candle_core::Device;
    use gauntlet_models::InputGrad;

    /// Counts forward passes and input gradients of the model it wraps.
    struct Counting {
        inner: Box<dyn Classifier>,
        forwards: AtomicUsize,
        grads: AtomicUsize,
    }

    impl Counting {
        fn new(inner: Box<dyn Classifier>) -> Self {
            Self {
                inner,
                forwards: AtomicUsize::new(0),
                grads: AtomicUsize::new(0),
            }
        }
    }

    impl Classifier for Counting {
        fn spec(&self) -> &ModelSpec {
            self.inner.spec()
        }
        fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
            self.forwards.fetch_add(1, Ordering::SeqCst);
            self.inner.forward(xs, mode)
        }
        fn params(&self) -> &Params {
            self.inner.params()
        }
        fn loss_and_input_grad(
            &self,
            xs: &Tensor,
            labels: &Tensor,
            mode: Mode,
        ) -> Result<InputGrad> {
            self.grads.fetch_add(1, Ordering::SeqCst);
            self.inner.loss_and_input_grad(xs, labels, mode)
        }
    }

    /// Logits that ignore the input: always class 1.
    struct Constant {
        spec: ModelSpec,
        params: Params,
    }

    impl Classifier for Constant {
        fn spec(&self) -> &ModelSpec {
            &self.spec
        }
        fn forward(&self, xs: &Tensor, _mode: Mode) -> Result<Tensor> {
            let logits = Tensor::new(&[[0f32, 2.0, 1.0]], xs.device())?;
            logits.broadcast_as((xs.dim(0)?, 3))?.contiguous()
        }
        fn params(&self) -> &Params {
            &self.params
        }
    }

    #[test]
    fn two_models_of_one_name_are_an_error() -> Result<()> {
        let (a, b) = (balanced_maxout()?, balanced_maxout()?);
        let (images, labels) = inputs(4, 4)?;
        let one: [(&str, &dyn Classifier); 1] = [("a", a.as_ref())];
        let twice: [(&str, &dyn Classifier); 2] = [("a", a.as_ref()), ("a", b.as_ref())];
        let fgsm = FastGradient::fgsm();
        for (sources, targets, side) in
            [(&twice[..], &one[..], "sources"), (&one, &twice, "targets")]
        {
            let err =
                transfer_matrix(sources, targets, &fgsm, &images, &labels, 0.1, 4).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("two {side} are named `a`")),
                "{err}"
            );
        }
        Ok(())
    }

    #[test]
    fn identical_models_give_a_symmetric_matrix_equal_to_white_box() -> Result<()> {
        let (a, b) = (balanced_maxout()?, balanced_maxout()?);
        let (images, labels) = inputs(30, 4)?;
        let fgsm = FastGradient::fgsm();
        let models: [(&str, &dyn Classifier); 2] = [("a", a.as_ref()), ("b", b.as_ref())];
        let records = transfer_matrix(&models, &models, &fgsm, &images, &labels, 0.1, 7)?;
        let white_box = evaluate_attack(a.as_ref(), &fgsm, &images, &labels, &[0.1], 7)?;
        assert!(
            white_box[0].adversarial_correct < white_box[0].clean_correct,
            "{white_box:?}"
        );
        assert_eq!(records.len(), 4);
        for r in &records {
            assert_eq!(
                (r.adversarial_correct, r.clean_correct, r.target_mistakes),
                (
                    white_box[0].adversarial_correct,
                    white_box[0].clean_correct,
                    white_box[0].mistakes
                ),
                "{r:?}"
            );
            assert_eq!(r.agreement, Some(1.0));
            assert_eq!(r.agreement_when_both_wrong, Some(1.0));
            assert_eq!(
                (r.ci_low, r.ci_high),
                wilson_interval(r.adversarial_correct, 30)
            );
            let conf = white_box[0].mean_confidence_on_mistakes.unwrap();
            assert!((r.mean_confidence_on_mistakes.unwrap() - conf).abs() < 1e-9);
        }
        assert_eq!(
            (records[1].source.as_str(), records[1].target.as_str()),
            ("a", "b")
        );
        Ok(())
    }

    #[test]
    fn a_constant_target_is_unaffected() -> Result<()> {
        let source = balanced_maxout()?;
        let constant = Constant {
            spec: source.spec().clone(),
            params: Params::default(),
        };
        let (images, labels) = inputs(30, 5)?;
        let sources: [(&str, &dyn Classifier); 1] = [("source", source.as_ref())];
        let targets: [(&str, &dyn Classifier); 1] = [("constant", &constant)];
        let fgsm = FastGradient::fgsm();
        let r = &transfer_matrix(&sources, &targets, &fgsm, &images, &labels, 0.3, 8)?[0];
        // Labels are i mod 3, so class 1 is right on exactly 10 of 30, attacked or not.
        assert_eq!(
            (r.clean_correct, r.adversarial_correct, r.target_mistakes),
            (10, 10, 20)
        );
        assert!((r.accuracy - 1.0 / 3.0).abs() < 1e-12 && (r.error - 2.0 / 3.0).abs() < 1e-12);
        // Its confidence in class 1 is softmax(0, 2, 1)[1].
        let expected = 2f64.exp() / (1.0 + 2f64.exp() + 1f64.exp());
        assert!((r.mean_confidence_on_mistakes.unwrap() - expected).abs() < 1e-6);
        assert!(r.source_mistakes > 0);
        Ok(())
    }

    #[test]
    fn crafting_happens_once_per_source() -> Result<()> {
        let sources = [
            Counting::new(balanced_maxout()?),
            Counting::new(balanced_maxout()?),
        ];
        let targets = [
            Counting::new(balanced_maxout()?),
            Counting::new(balanced_maxout()?),
            Counting::new(balanced_maxout()?),
        ];
        let (images, labels) = inputs(20, 6)?;
        let src: Vec<(&str, &dyn Classifier)> = vec![("s0", &sources[0]), ("s1", &sources[1])];
        let tgt: Vec<(&str, &dyn Classifier)> = vec![
            ("t0", &targets[0]),
            ("t1", &targets[1]),
            ("t2", &targets[2]),
        ];
        let records = transfer_matrix(&src, &tgt, &FastGradient::fgsm(), &images, &labels, 0.1, 8)?;
        assert_eq!(records.len(), 6);
        // 20 images in batches of 8: 3 batches, one gradient each, for each source once.
        for s in &sources {
            assert_eq!(s.grads.load(Ordering::SeqCst), 3);
        }
        for t in &targets {
            assert_eq!(t.grads.load(Ordering::SeqCst), 0);
            // Clean and transferred inputs, 3 batches each, for each of the 2 sources.
            assert_eq!(t.forwards.load(Ordering::SeqCst), 2 * 2 * 3);
        }
        Ok(())
    }

    #[test]
    fn an_ensemble_averages_logits_and_can_be_a_source() -> Result<()> {
        let a: Arc<dyn Classifier> = Arc::from(balanced_maxout()?);
        let constant: Arc<dyn Classifier> = Arc::new(Constant {
            spec: a.spec().clone(),
            params: Params::default(),
        });
        let ensemble = EnsembleModel::new(vec![a.clone(), constant.clone()])?;
        let (images, labels) = inputs(6, 7)?;
        let got = ensemble.forward(&images, Mode::Eval)?;
        let expected = a
            .forward(&images, Mode::Eval)?
            .add(&constant.forward(&images, Mode::Eval)?)?
            .affine(0.5, 0.0)?;
        let diff = got.sub(&expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        let x_adv = craft(&ensemble, &FastGradient::fgsm(), &images, &labels, 0.2, 4)?;
        assert_eq!(x_adv.dims(), images.dims());
        let moved = x_adv.sub(&images)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!((moved - 0.2).abs() < 1e-6, "{moved}");
        assert!(EnsembleModel::new(vec![]).is_err());
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let model = balanced_maxout()?;
        let (images, labels) = inputs(5, 1)?;
        let fgsm = FastGradient::fgsm();
        assert!(craft(model.as_ref(), &fgsm, &images, &labels, -0.1, 2).is_err());
        assert!(craft(model.as_ref(), &fgsm, &images, &labels, 0.1, 0).is_err());
        let short = labels.narrow(0, 0, 3)?;
        assert!(craft(model.as_ref(), &fgsm, &images, &short, 0.1, 2).is_err());
        let err = score_transfer(
            "a",
            "b",
            model.as_ref(),
            &images,
            &images,
            &[0, 1],
            &labels,
            "x",
            Norm::Linf,
            0.1,
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("one source prediction per image"), "{err}");
        let other = Tensor::zeros((5, 1, 2, 2), DType::F32, &Device::Cpu)?;
        assert!(score_transfer(
            "a",
            "b",
            model.as_ref(),
            &other,
            &images,
            &[0; 5],
            &labels,
            "x",
            Norm::Linf,
            0.1,
            2,
        )
        .is_err());
        Ok(())
    }
}
