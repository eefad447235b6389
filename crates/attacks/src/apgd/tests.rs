use super::*;
use crate::testing::{balanced_maxout, inputs, next_class, wide_maxout};
use crate::{evaluate_attack, Pgd, Randomized};

const NORMS: [Norm; 4] = [Norm::Linf, Norm::L2, Norm::L1, Norm::Lp(3.0)];

fn budget(norm: Norm) -> f64 {
    match norm {
        Norm::Linf => 0.1,
        Norm::L1 => 2.0,
        _ => 0.4,
    }
}

/// `n` images of the 4×4 models labelled by the model's clean prediction.
fn data(model: &dyn Classifier, n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let (xs, _) = inputs(n, seed)?;
    let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
    Ok((xs, labels))
}

fn losses(model: &dyn Classifier, loss: AttackLoss, x: &Tensor, ids: &[u32]) -> Result<Vec<f64>> {
    let rows = model
        .forward(x, Mode::Eval)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    Ok(loss.values(&rows, ids, false))
}

#[test]
fn checkpoints_follow_the_papers_schedule() {
    // p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 for N = 100 (Croce & Hein 2020, §3.2).
    let schedule = Checkpoints::new(100, false);
    let mut at = vec![];
    let (mut position, mut spacing) = (0, schedule.first);
    while position + spacing <= 100 {
        position += spacing;
        at.push(position);
        spacing = schedule.next(spacing);
    }
    assert_eq!(at, [22, 41, 57, 70, 80, 87, 93, 99]);
    let l1 = Checkpoints::new(100, true);
    assert_eq!((l1.first, l1.next(4)), (4, 4));
    // Tiny budgets still check at least every step.
    let small = Checkpoints::new(3, false);
    assert_eq!((small.first, small.next(1)), (1, 1));
}

#[test]
fn a_run_never_ends_below_its_starting_loss() -> Result<()> {
    let model = balanced_maxout()?;
    let (xs, labels) = data(model.as_ref(), 24, 51)?;
    let ids = labels.to_vec1::<u32>()?;
    for norm in NORMS {
        for loss in [AttackLoss::CrossEntropy, AttackLoss::Dlr] {
            let eps = budget(norm);
            let apgd = Apgd {
                steps: 15,
                loss,
                ..Apgd::new(norm)
            };
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let start = apgd.clipped(xs.add(&norm.random(&xs, eps, &mut rng)?)?)?;
            let run = apgd.run(
                model.as_ref(),
                &xs,
                start.clone(),
                &ids,
                false,
                &ids,
                false,
                eps,
            )?;
            let at_start = losses(model.as_ref(), loss, &start, &ids)?;
            let at_best = losses(model.as_ref(), loss, &run.x_best, &ids)?;
            for i in 0..ids.len() {
                assert!(
                    run.loss_best[i] >= run.loss_start[i],
                    "{norm} {loss:?} example {i}: {} < {}",
                    run.loss_best[i],
                    run.loss_start[i]
                );
                assert!(
                    (run.loss_start[i] - at_start[i]).abs() < 1e-4 * at_start[i].abs().max(1.0)
                );
                // The best point holds the best loss (examples broken early keep the point
                // reached by then, whose loss is the best recorded too).
                assert!(
                    (at_best[i] - run.loss_best[i]).abs() < 1e-4 * at_best[i].abs().max(1.0),
                    "{norm} {loss:?} example {i}: best point {} vs best loss {}",
                    at_best[i],
                    run.loss_best[i]
                );
            }
            let rose = (0..ids.len())
                .filter(|&i| run.loss_best[i] > run.loss_start[i])
                .count();
            assert!(
                rose > ids.len() / 2,
                "{norm} {loss:?}: only {rose} losses rose"
            );
            let sizes = norm.norm(&run.x_best.sub(&xs)?)?.to_vec1::<f32>()?;
            assert!(
                sizes.iter().all(|&s| s as f64 <= eps * (1.0 + 1e-5)),
                "{norm}: {sizes:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn perturb_never_returns_less_loss_than_the_clean_input_unless_broken() -> Result<()> {
    let model = balanced_maxout()?;
    let (xs, labels) = data(model.as_ref(), 30, 52)?;
    let ids = labels.to_vec1::<u32>()?;
    for norm in NORMS {
        let eps = budget(norm) / 4.0;
        let apgd = Apgd {
            steps: 10,
            random_start: false,
            ..Apgd::new(norm)
        };
        let adv = apgd.perturb(
            model.as_ref(),
            &xs,
            &Goal::Untargeted { labels: &labels },
            eps,
        )?;
        let before = losses(model.as_ref(), AttackLoss::CrossEntropy, &xs, &ids)?;
        let after = losses(model.as_ref(), AttackLoss::CrossEntropy, &adv, &ids)?;
        let preds = model
            .forward(&adv, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        for i in 0..ids.len() {
            assert!(
                preds[i] != ids[i] || after[i] >= before[i] - 1e-6,
                "{norm} example {i}: {} -> {}",
                before[i],
                after[i]
            );
        }
    }
    Ok(())
}

#[test]
fn outputs_lie_in_the_ball_and_the_box_and_lower_accuracy() -> Result<()> {
    let model = balanced_maxout()?;
    let (xs, labels) = data(model.as_ref(), 40, 53)?;
    let targets = next_class(&labels)?;
    for norm in NORMS {
        let eps = budget(norm);
        let apgd = Apgd {
            steps: 20,
            restarts: 2,
            ..Apgd::new(norm)
        };
        for goal in [
            Goal::Untargeted { labels: &labels },
            Goal::Targeted { targets: &targets },
        ] {
            let adv = apgd.perturb(model.as_ref(), &xs, &goal, eps)?;
            let sizes = norm.norm(&adv.sub(&xs)?)?.to_vec1::<f32>()?;
            assert!(
                sizes.iter().all(|&s| s as f64 <= eps * (1.0 + 1e-5)),
                "{norm} {goal:?}: {sizes:?}"
            );
            let (lo, hi) = (
                adv.min_all()?.to_scalar::<f32>()?,
                adv.max_all()?.to_scalar::<f32>()?,
            );
            assert!(lo >= 0.0 && hi <= 1.0);
        }
        let robust = evaluate_attack(model.as_ref(), &apgd, &xs, &labels, &[eps], 16)?[0]
            .adversarial_correct;
        assert!(robust < 30, "{norm}: {robust}/40 robust");
    }
    Ok(())
}

#[test]
fn apgd_is_at_least_as_strong_as_pgd_with_the_same_gradients() -> Result<()> {
    let model = balanced_maxout()?;
    let (xs, labels) = data(model.as_ref(), 60, 54)?;
    for (norm, eps) in [(Norm::Linf, 0.04), (Norm::L2, 0.15)] {
        let pgd = Pgd {
            steps: 40,
            ..Pgd::new(norm)
        };
        let apgd = Apgd {
            steps: 40,
            ..Apgd::new(norm)
        };
        let count = |attack: &dyn Attack| -> Result<usize> {
            Ok(
                evaluate_attack(model.as_ref(), attack, &xs, &labels, &[eps], 60)?[0]
                    .adversarial_correct,
            )
        };
        let (p, a) = (count(&pgd)?, count(&apgd)?);
        assert!(a <= p + 1, "{norm}: apgd leaves {a} robust, pgd {p}");
        assert!(a < 60, "{norm}: apgd broke nothing");
    }
    Ok(())
}

#[test]
fn apgd_t_aims_at_the_top_classes_and_rejects_given_targets() -> Result<()> {
    let model = wide_maxout()?;
    let (xs, labels) = data(model.as_ref(), 40, 55)?;
    let apgd_t = Apgd {
        steps: 20,
        target_classes: Some(4),
        loss: AttackLoss::Dlr,
        ..Apgd::new(Norm::Linf)
    };
    assert_eq!(apgd_t.name(), "apgd-t-dlr-linf");
    let one_target = Apgd {
        target_classes: Some(1),
        ..apgd_t
    };
    let robust = |attack: &Apgd| -> Result<usize> {
        Ok(
            evaluate_attack(model.as_ref(), attack, &xs, &labels, &[0.05], 40)?[0]
                .adversarial_correct,
        )
    };
    let (all, first) = (robust(&apgd_t)?, robust(&one_target)?);
    // More targets only add runs on the still-robust examples.
    assert!(all <= first, "4 targets {all}, 1 target {first}");
    assert!(all < 40);
    let targets = labels.clone();
    let err = apgd_t
        .perturb(
            model.as_ref(),
            &xs,
            &Goal::Targeted { targets: &targets },
            0.05,
        )
        .expect_err("APGD-T with targets")
        .to_string();
    assert!(err.contains("picks its own targets"), "{err}");
    Ok(())
}

#[test]
fn eot_averages_the_gradient_of_a_randomized_model() -> Result<()> {
    use gauntlet_models::{build, Arch, Dropout, MlpSpec, ModelSpec};
    let spec = ModelSpec::new(
        Arch::Mlp(MlpSpec {
            hidden: vec![32],
            input_dropout: Dropout::inverted(0.5),
            ..MlpSpec::default()
        }),
        [1, 4, 4],
        3,
    );
    let model = Randomized::new(build(&spec, 3, &candle_core::Device::Cpu)?, 9);
    let (xs, labels) = inputs(6, 56)?;
    let goal = Goal::Untargeted { labels: &labels };
    let grad = |draws: usize| -> Result<Tensor> {
        let apgd = Apgd {
            eot_draws: draws,
            ..Apgd::new(Norm::L2)
        };
        Ok(apgd.gradient(&model, &xs, &goal)?.0)
    };
    let reference = grad(400)?;
    let error = |g: &Tensor| -> Result<f32> {
        g.sub(&reference)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()
    };
    let (single, twenty) = (error(&grad(1)?)?, error(&grad(20)?)?);
    // The mean of 20 draws has a quarter or less of one draw's spread (1/√20 ≈ 0.22).
    assert!(twenty < 0.5 * single, "one draw {single}, twenty {twenty}");
    Ok(())
}

#[test]
fn invalid_settings_are_rejected() -> Result<()> {
    let model = balanced_maxout()?;
    let (xs, labels) = data(model.as_ref(), 2, 57)?;
    let goal = Goal::Untargeted { labels: &labels };
    let err = |attack: Apgd| {
        attack
            .perturb(model.as_ref(), &xs, &goal, 0.1)
            .expect_err("invalid")
            .to_string()
    };
    let apgd = Apgd::new(Norm::Linf);
    assert!(err(Apgd { steps: 0, ..apgd }).contains("steps: must be at least 1, got 0"));
    assert!(err(Apgd {
        eot_draws: 0,
        ..apgd
    })
    .contains("eot-draws: must be at least 1"));
    assert!(err(Apgd { rho: 0.0, ..apgd }).contains("rho: must be in (0, 1]"));
    assert!(err(Apgd {
        target_classes: Some(2),
        loss: AttackLoss::Dlr,
        ..apgd
    })
    .contains("targeted DLR loss needs at least 4 classes, got 3"));
    assert_eq!(
        (apgd.name(), apgd.kind()),
        ("apgd-ce-linf".to_string(), AttackKind::Iterative)
    );
    let text = toml::to_string(&Apgd::targeted_dlr(Norm::L2)).unwrap();
    let back: Apgd = toml::from_str(&text).unwrap();
    assert_eq!(back, Apgd::targeted_dlr(Norm::L2));
    Ok(())
}
