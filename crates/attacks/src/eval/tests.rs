use super::*;
use crate::testing::LinearModel;
use crate::FastGradient;
use crate::{wilson_interval, Attack, AttackKind, Goal, Lp, Norm};
use candle_core::{Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};

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
            (r.n, r.clean_correct, r.method.as_str(), r.norm),
            (5, 4, "fast-gradient-linf", Lp::LINF)
        );
        assert_eq!(
            (r.ci_low, r.ci_high),
            wilson_interval(r.adversarial_correct, 5)
        );
        assert!((r.adversarial_accuracy - r.adversarial_correct as f64 / 5.0).abs() < 1e-12);
        // No pixel reaches the box edge, so every example moves by exactly ε.
        assert!(
            (r.max_perturbation - r.eps).abs() < 1e-6 && (r.mean_perturbation - r.eps).abs() < 1e-6,
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
    let err = |r: Result<Vec<Timed<AttackRecord>>>| r.expect_err("must fail").to_string();
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
    let back: Vec<Timed<AttackRecord>> = serde_json::from_str(&text).unwrap();
    // serde_json's default float parsing may differ in the last bit, so floats get a tolerance.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    for (b, r) in back.iter().zip(&records) {
        assert_eq!(
            (&b.method, b.kind, b.norm, b.n, b.clean_correct),
            (&r.method, r.kind, r.norm, r.n, r.clean_correct)
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
                r.method
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
            (r.method.as_str(), r.kind, r.norm),
            (
                "ensemble(fast-gradient-linf+pgd-margin-linf)",
                AttackKind::Ensemble,
                Lp::LINF
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
        assert_eq!((r.method.as_str(), r.kind), ("pair", AttackKind::Ensemble));
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
