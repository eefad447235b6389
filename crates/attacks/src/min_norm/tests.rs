use candle_core::{DType, Device, Result, Tensor};
use gauntlet_models::{Classifier, Mode};

use super::*;
use crate::testing::{inputs, next_class, small_maxout, LinearModel};
use crate::{evaluate_attack_detailed, evaluate_min_norm};
use gauntlet_results::curve_point;

/// `logits = W x` on 4 inputs, 3 classes, margins large enough that DeepFool's 1e−4 slack is
/// far below the test's tolerance.
const W: [[f32; 4]; 3] = [
    [3.0, 0.0, 0.0, 1.5],
    [0.0, 3.0, 0.0, 0.0],
    [0.0, 0.0, 3.0, 0.0],
];

/// Two classes: the cross-entropy's gradient is then normal to the one boundary.
const W2: [[f32; 4]; 2] = [[3.0, 0.0, 0.0, 1.5], [0.0, 3.0, 1.0, 0.0]];

/// Examples in the middle of the box, none of them near a face: the box never binds, so the
/// minimal distance is the closed form.
fn linear_inputs(w: &[[f32; 4]]) -> Result<(Tensor, Tensor)> {
    let x = [
        [0.5f32, 0.4, 0.6, 0.5],
        [0.3, 0.6, 0.5, 0.4],
        [0.6, 0.35, 0.5, 0.45],
        [0.4, 0.5, 0.7, 0.5],
    ];
    let xs = Tensor::new(&x, &Device::Cpu)?.reshape((4, 1, 1, 4))?;
    let model = LinearModel::new(w)?;
    let labels = model.forward(&xs, Mode::Eval)?.argmax(1)?;
    Ok((xs, labels))
}

/// The exact minimal perturbation of a linear model in Lp: the distance to the nearest
/// half-space `z_k ≥ z_y`, `min_k (z_y − z_k) / ‖w_y − w_k‖_q`.
fn closed_form(w: &[[f32; 4]], xs: &Tensor, labels: &Tensor, p: f64) -> Result<Vec<f64>> {
    let q = if p == 1.0 {
        f64::INFINITY
    } else if p.is_infinite() {
        1.0
    } else {
        p / (p - 1.0)
    };
    let norm = |v: &[f64]| -> f64 {
        if q.is_infinite() {
            v.iter().fold(0f64, |m, x| m.max(x.abs()))
        } else {
            v.iter().map(|x| x.abs().powf(q)).sum::<f64>().powf(1.0 / q)
        }
    };
    let rows = xs.flatten_from(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let labels = labels.to_vec1::<u32>()?;
    Ok(rows
        .iter()
        .zip(&labels)
        .map(|(x, &y)| {
            let z: Vec<f64> = w
                .iter()
                .map(|row| row.iter().zip(x).map(|(&a, b)| a as f64 * b).sum())
                .collect();
            (0..w.len())
                .filter(|&k| k != y as usize)
                .map(|k| {
                    let normal: Vec<f64> = (0..4)
                        .map(|j| (w[y as usize][j] - w[k][j]) as f64)
                        .collect();
                    (z[y as usize] - z[k]) / norm(&normal)
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect())
}

/// Each example's distance under `attack` on the linear model, against the closed form.
fn check_exact(w: &[[f32; 4]], attack: &dyn MinNorm, p: f64, rel: f64) -> Result<()> {
    let model = LinearModel::new(w)?;
    let (xs, labels) = linear_inputs(w)?;
    let run = evaluate_min_norm(&model, attack, &xs, &labels, &[], 4, false)?;
    let exact = closed_form(w, &xs, &labels, p)?;
    for (e, want) in run.examples.iter().zip(&exact) {
        let got = e
            .distance
            .unwrap_or_else(|| panic!("{}: example {} not broken", attack.name(), e.index));
        assert!(
            (got - want).abs() <= rel * want,
            "{}: example {}: distance {got}, the closed form {want}",
            attack.name(),
            e.index
        );
    }
    Ok(())
}

#[test]
fn every_attack_finds_the_closed_form_distance_of_a_linear_model() -> Result<()> {
    for (norm, p) in [
        (Norm::L1, 1.0),
        (Norm::L2, 2.0),
        (Norm::Linf, f64::INFINITY),
    ] {
        check_exact(&W, &Fmn::new(norm), p, 1e-3)?;
        // FMN-T over both wrong classes: the nearer of its two targeted searches.
        let t = Fmn {
            target_classes: Some(2),
            ..Fmn::new(norm)
        };
        check_exact(&W, &t, p, 1e-3)?;
    }
    // DDN follows the cross-entropy's gradient, which with three classes mixes the normals of
    // two boundaries, and moves its radius by a fixed 1 ± γ per step: with two classes (one
    // normal) and γ = 5e-4 it is within 1e-3; with the paper's γ = 0.05 within about γ.
    let fine = Ddn {
        steps: 4000,
        gamma: 5e-4,
        init_norm: 0.1,
    };
    check_exact(&W2, &fine, 2.0, 1e-3)?;
    check_exact(&W2, &Ddn::default(), 2.0, 0.06)?;
    // C&W's binary search halves the interval of c around the smallest that breaks the
    // example; on a linear model the minimiser for a given c lies on the segment to the
    // boundary, so nine rounds and a short Adam run come within 1e-3 (two classes: the
    // margin is then one hyperplane).
    let cw = CarliniWagner {
        steps: 1000,
        binary_search_steps: 20,
        initial_const: 1.0,
        ..CarliniWagner::default()
    };
    check_exact(&W2, &cw, 2.0, 1e-3)?;
    for (norm, p) in [(Norm::L2, 2.0), (Norm::Linf, f64::INFINITY)] {
        let exact = DeepFool {
            overshoot: 0.0,
            ..DeepFool::new(norm)
        };
        check_exact(&W, &exact, p, 1e-3)?;
    }
    Ok(())
}

#[test]
fn fab_lands_on_the_boundary_of_a_linear_model_in_one_step() -> Result<()> {
    for (norm, p) in [
        (Norm::L1, 1.0),
        (Norm::L2, 2.0),
        (Norm::Linf, f64::INFINITY),
    ] {
        // η just above 1: the first step lands on the nearest boundary, just past it.
        let one = Fab {
            steps: 1,
            eta: 1.0 + 1e-5,
            ..Fab::new(norm)
        };
        check_exact(&W, &one, p, 1e-3)?;
        // FAB-T over both wrong classes finds the same minimum; with the defaults' 5%
        // overshoot and backward steps, 100 steps come within 1%.
        let t = Fab {
            steps: 1,
            eta: 1.0 + 1e-5,
            target_classes: Some(2),
            ..Fab::new(norm)
        };
        check_exact(&W, &t, p, 1e-3)?;
        check_exact(&W, &Fab::new(norm), p, 1e-2)?;
    }
    Ok(())
}

#[test]
fn the_hyperplane_projection_is_the_smallest_step_inside_the_box() {
    let z = [0.5, 0.9, 0.2];
    let w = [1.0, 2.0, -1.0];
    for norm in [Norm::L1, Norm::L2, Norm::Linf] {
        let d = project_onto_hyperplane(norm, &z, &w, 0.3);
        let reached: f64 = d.iter().zip(&w).map(|(a, b)| a * b).sum();
        assert!((reached - 0.3).abs() < 1e-9, "{norm}: {reached}");
        assert!(z
            .iter()
            .zip(&d)
            .all(|(a, b)| (0.0..=1.0).contains(&(a + b))));
    }
    // L1 spends on the largest |w| first, up to the box: coordinate 1 can move 0.1 (gain
    // 0.2), then coordinate 0 (|w| = 1, tied with coordinate 2) the rest.
    let d = project_onto_hyperplane(Norm::L1, &z, &w, 0.3);
    assert!(
        (d[1] - 0.1).abs() < 1e-12 && (d[0] - 0.1).abs() < 1e-12 && d[2] == 0.0,
        "{d:?}"
    );
    // L∞: a common step t on every coordinate (the box room, 0.1 at least, does not bind):
    // 1·t + 2·t + 1·t = 0.3.
    let d = project_onto_hyperplane(Norm::Linf, &z, &w, 0.3);
    assert!(
        (d[0] - 0.075).abs() < 1e-9 && (d[1] - 0.075).abs() < 1e-9 && (d[2] + 0.075).abs() < 1e-9
    );
    // With c = 0.5 coordinate 1 hits its face: 1·t + 2·0.1 + 1·t = 0.5, t = 0.15.
    let d = project_onto_hyperplane(Norm::Linf, &z, &w, 0.5);
    assert!((d[0] - 0.15).abs() < 1e-9 && (d[1] - 0.1).abs() < 1e-9 && (d[2] + 0.15).abs() < 1e-9);
    // Unreachable within the box: every coordinate at its face.
    let d = project_onto_hyperplane(Norm::L2, &z, &w, 10.0);
    for (got, want) in d.iter().zip([0.5, 0.1, -0.2]) {
        assert!((got - want).abs() < 1e-12, "{d:?}");
    }
}

#[test]
fn deepfool_lands_on_the_boundary_of_a_linear_model_in_one_step() -> Result<()> {
    for (norm, p) in [(Norm::L2, 2.0), (Norm::Linf, f64::INFINITY)] {
        let one = DeepFool {
            steps: 1,
            overshoot: 0.0,
            ..DeepFool::new(norm)
        };
        check_exact(&W, &one, p, 1e-3)?;
        // With the default overshoot it is 2% beyond.
        let model = LinearModel::new(&W)?;
        let (xs, labels) = linear_inputs(&W)?;
        let run = evaluate_min_norm(
            &model,
            &DeepFool {
                steps: 1,
                ..DeepFool::new(norm)
            },
            &xs,
            &labels,
            &[],
            4,
            false,
        )?;
        for (e, want) in run.examples.iter().zip(closed_form(&W, &xs, &labels, p)?) {
            let ratio = e.distance.unwrap() / want;
            assert!((ratio - 1.02).abs() < 1e-3, "{norm}: {ratio}");
        }
    }
    Ok(())
}

#[test]
fn minimal_examples_of_a_maxout_mlp_are_misclassified_inside_the_box() -> Result<()> {
    let model = small_maxout()?;
    let (xs, labels) = inputs(24, 3)?;
    let attacks: [Box<dyn MinNorm>; 9] = [
        Box::new(Fab {
            steps: 20,
            ..Fab::new(Norm::Linf)
        }),
        Box::new(Fab {
            steps: 10,
            target_classes: Some(2),
            ..Fab::new(Norm::L2)
        }),
        Box::new(CarliniWagner {
            steps: 100,
            binary_search_steps: 5,
            ..CarliniWagner::default()
        }),
        Box::new(Fmn::new(Norm::L2)),
        Box::new(Fmn {
            target_classes: Some(2),
            ..Fmn::new(Norm::L2)
        }),
        Box::new(Fmn::new(Norm::Linf)),
        Box::new(Fmn::new(Norm::L1)),
        Box::new(Ddn::default()),
        Box::new(DeepFool::new(Norm::L2)),
    ];
    for attack in &attacks {
        let run = evaluate_min_norm(
            model.as_ref(),
            attack.as_ref(),
            &xs,
            &labels,
            &[0.1, 0.5],
            10,
            true,
        )?;
        let minimal = &run.minimal;
        assert!(minimal.min_all()?.to_scalar::<f32>()? >= 0.0);
        assert!(minimal.max_all()?.to_scalar::<f32>()? <= 1.0);
        let preds = model
            .forward(minimal, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        let sizes = attack.norm().norm(&minimal.sub(&xs)?)?.to_vec1::<f32>()?;
        let mut broken = 0;
        for e in &run.examples {
            if e.clean_pred != e.label {
                assert_eq!(e.distance, Some(0.0));
                continue;
            }
            match e.distance {
                Some(d) => {
                    broken += 1;
                    assert_ne!(
                        preds[e.index],
                        e.label,
                        "{}: example {}",
                        attack.name(),
                        e.index
                    );
                    assert!((d - sizes[e.index] as f64).abs() <= 1e-6 * d.max(1.0));
                }
                None => assert_eq!(sizes[e.index], 0.0),
            }
        }
        assert!(broken > 0, "{} broke nothing", attack.name());
        // The records at each ε are the curve read at that ε, and their perturbations stay
        // inside the ball.
        for (record, adv) in run.records.iter().zip(&run.adversarials) {
            let point = curve_point(&run.examples, record.eps);
            assert_eq!(
                record.adversarial_correct,
                point.robust,
                "{}",
                attack.name()
            );
            assert!(record.max_perturbation <= record.eps * (1.0 + 1e-6));
            let in_ball = attack
                .norm()
                .norm(&adv.sub(&xs)?)?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(in_ball as f64 <= record.eps * (1.0 + 1e-6));
        }
        // The ordinary evaluation takes the same path, and a fixed-ε perturb agrees with it.
        let (records, outcomes) = evaluate_attack_detailed(
            model.as_ref(),
            attack.as_ref(),
            &xs,
            &labels,
            &[0.1, 0.5],
            10,
        )?;
        for (a, b) in records.iter().zip(&run.records) {
            assert_eq!(a.record, b.record);
        }
        assert_eq!(outcomes, run.outcomes);
        let fixed = attack.perturb(
            model.as_ref(),
            &xs,
            &crate::Goal::Untargeted { labels: &labels },
            0.5,
        )?;
        let fixed_sizes = attack.norm().norm(&fixed.sub(&xs)?)?.to_vec1::<f32>()?;
        assert!(fixed_sizes.iter().all(|&s| s as f64 <= 0.5 * (1.0 + 1e-6)));
    }
    Ok(())
}

#[test]
fn targeted_minimal_examples_reach_their_target() -> Result<()> {
    let model = small_maxout()?;
    let (xs, labels) = inputs(12, 5)?;
    let targets = next_class(&labels)?;
    let goal = crate::Goal::Targeted { targets: &targets };
    let ids = targets.to_vec1::<u32>()?;
    for attack in [
        Box::new(Fab::new(Norm::L2)) as Box<dyn MinNorm>,
        Box::new(Fmn::new(Norm::L2)),
        Box::new(Ddn::default()),
        Box::new(DeepFool::new(Norm::Linf)),
    ] {
        let adv = attack.minimize(model.as_ref(), &xs, &goal)?;
        let preds = model
            .forward(&adv, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        let reached = preds.iter().zip(&ids).filter(|(p, t)| p == t).count();
        assert!(reached >= 8, "{}: {reached} of 12 reached", attack.name());
        // Rows not at their target are returned clean.
        let sizes = attack.norm().norm(&adv.sub(&xs)?)?.to_vec1::<f32>()?;
        for i in 0..12 {
            if preds[i] != ids[i] {
                assert_eq!(sizes[i], 0.0, "{}", attack.name());
            }
        }
    }
    Ok(())
}

#[test]
fn fmn_t_keeps_the_nearest_of_its_targeted_searches() -> Result<()> {
    let model = small_maxout()?;
    let (xs, labels) = inputs(24, 3)?;
    let fmn = Fmn {
        steps: 30,
        ..Fmn::new(Norm::L2)
    };
    let fmn_t = Fmn {
        target_classes: Some(2),
        ..fmn
    };
    let goal = Goal::Untargeted { labels: &labels };
    // Per row, the size of a misclassified result, or infinity.
    let ids = labels.to_vec1::<u32>()?;
    let sizes = |adv: &Tensor| -> Result<Vec<f32>> {
        let norms = Norm::L2.norm(&adv.sub(&xs)?)?.to_vec1::<f32>()?;
        let preds = model
            .forward(adv, Mode::Eval)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        Ok((0..24)
            .map(|i| {
                if preds[i] != ids[i] {
                    norms[i]
                } else {
                    f32::INFINITY
                }
            })
            .collect())
    };
    let combined = sizes(&fmn_t.minimize(model.as_ref(), &xs, &goal)?)?;
    // The wrong classes of each clean row by logit: FMN-T's first and second targets.
    let clean = model.forward(&xs, Mode::Eval)?.to_vec2::<f32>()?;
    let ranked = |rank: usize| -> Result<Tensor> {
        let t: Vec<u32> = clean
            .iter()
            .zip(&ids)
            .map(|(row, &y)| {
                let mut order: Vec<usize> = (0..3).filter(|&j| j != y as usize).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order[rank] as u32
            })
            .collect();
        Tensor::from_vec(t, 24, &Device::Cpu)
    };
    let mut runs = Vec::new();
    for rank in 0..2 {
        let targets = ranked(rank)?;
        let adv = fmn.minimize(model.as_ref(), &xs, &Goal::Targeted { targets: &targets })?;
        runs.push(sizes(&adv)?);
    }
    for i in 0..24 {
        assert_eq!(combined[i], runs[0][i].min(runs[1][i]), "example {i}");
    }
    // A linear decoy: at x = 0.5, class 1 has the smaller margin (0.1 against class 2's 0.5)
    // but class 2's boundary is nearer (0.018 against 0.037, its normal being longer). FMN
    // aimed at the runner-up stops at class 1's boundary; FMN-T reaches class 2's.
    let decoy = LinearModel::new(&[
        [2.0f32, 0.0, 0.0, 0.0],
        [0.0, 1.8, 0.0, 0.0],
        [0.0, 0.0, 20.0, -19.0],
    ])?;
    let x = Tensor::full(0.5f32, (1, 1, 1, 4), &Device::Cpu)?;
    let label = Tensor::new(&[0u32], &Device::Cpu)?;
    let runner_up = Tensor::new(&[1u32], &Device::Cpu)?;
    let distance = |adv: Tensor| -> Result<f32> {
        Norm::L2.norm(&adv.sub(&x)?)?.squeeze(0)?.to_scalar::<f32>()
    };
    let at_runner_up = distance(fmn.minimize(
        &decoy,
        &x,
        &Goal::Targeted {
            targets: &runner_up,
        },
    )?)?;
    let nearest = distance(fmn_t.minimize(&decoy, &x, &Goal::Untargeted { labels: &label })?)?;
    let exact = |margin: f64, normal: f64| margin / normal;
    let to_1 = exact(0.1, (4.0f64 + 1.8 * 1.8).sqrt());
    let to_2 = exact(0.5, (4.0f64 + 400.0 + 361.0).sqrt());
    assert!(
        ((at_runner_up as f64) - to_1).abs() <= 1e-3 * to_1,
        "{at_runner_up} vs {to_1}"
    );
    assert!(
        ((nearest as f64) - to_2).abs() <= 1e-3 * to_2,
        "{nearest} vs {to_2}"
    );
    // FMN-T picks its targets: a targeted goal is refused.
    let targets = ranked(0)?;
    let err = fmn_t
        .minimize(model.as_ref(), &xs, &Goal::Targeted { targets: &targets })
        .unwrap_err();
    assert!(err.to_string().contains("FMN-T"), "{err}");
    Ok(())
}

#[test]
fn bad_settings_are_refused_by_key() {
    let fmn = Fmn {
        gamma_init: 1.5,
        ..Fmn::new(Norm::L2)
    };
    assert_eq!(fmn.validate().unwrap_err().key, "gamma-init");
    let ddn = Ddn {
        steps: 0,
        ..Ddn::default()
    };
    assert_eq!(ddn.validate().unwrap_err().key, "steps");
    let deepfool = DeepFool {
        overshoot: -1.0,
        ..DeepFool::new(Norm::L2)
    };
    assert_eq!(deepfool.validate().unwrap_err().key, "overshoot");
}

#[test]
fn records_count_the_passes_each_attack_spent_per_example() -> Result<()> {
    let model = small_maxout()?;
    let (xs, labels) = inputs(12, 9)?;
    // FGSM: one forward and one backward pass per example and ε.
    let fgsm = crate::FastGradient::new(Norm::Linf);
    let records = crate::evaluate_attack(model.as_ref(), &fgsm, &xs, &labels, &[0.1, 0.2], 5)?;
    for r in &records {
        let q = r.queries.unwrap();
        assert_eq!((q.forward, q.backward), (1.0, 1.0), "eps {}", r.eps);
    }
    // DDN: one of each per step, for the whole search, in every record.
    let ddn = Ddn {
        steps: 7,
        ..Ddn::default()
    };
    let run = evaluate_min_norm(model.as_ref(), &ddn, &xs, &labels, &[0.5], 5, false)?;
    let q = run.curve.queries.unwrap();
    assert_eq!((q.forward, q.backward), (7.0, 7.0));
    assert_eq!(run.records[0].queries, Some(q));
    // DeepFool: one forward and a backward pass per candidate other than the label at each
    // linearisation, plus its clean and final forwards.
    let df = DeepFool {
        steps: 1,
        ..DeepFool::new(Norm::L2)
    };
    let q = evaluate_min_norm(model.as_ref(), &df, &xs, &labels, &[], 12, false)?
        .curve
        .queries
        .unwrap();
    assert_eq!((q.forward, q.backward), (3.0, 2.0));
    Ok(())
}

#[test]
fn a_query_budget_stops_the_search_where_it_is_spent() -> Result<()> {
    let model = small_maxout()?;
    let (xs, labels) = inputs(12, 9)?;
    // FMN's step is one forward and one backward pass: a budget of 20 passes allows 10 steps.
    let limited = crate::Limited::new(Box::new(Fmn::new(Norm::L2)), 20);
    assert_eq!(crate::Attack::name(&limited), "fmn-l2-q20");
    let run = evaluate_min_norm(model.as_ref(), &limited, &xs, &labels, &[0.5], 6, false)?;
    let q = run.curve.queries.unwrap();
    assert_eq!((q.forward, q.backward), (10.0, 10.0));
    // The same as FMN run for 10 steps from the start, with the schedule of 100.
    let full = evaluate_min_norm(
        model.as_ref(),
        &Fmn::new(Norm::L2),
        &xs,
        &labels,
        &[],
        6,
        false,
    )?;
    assert_eq!(full.curve.queries.unwrap().forward, 100.0);
    // PGD stops its steps at the budget and keeps its iterate (one run without early
    // stopping: no pass to score it).
    let pgd = crate::Pgd {
        steps: 40,
        early_stop: false,
        ..crate::Pgd::new(Norm::Linf)
    };
    let limited = crate::Limited::new(Box::new(pgd), 10);
    let records = crate::evaluate_attack(model.as_ref(), &limited, &xs, &labels, &[0.05], 12)?;
    let q = records[0].queries.unwrap();
    assert_eq!((q.forward, q.backward), (5.0, 5.0), "{q:?}");
    Ok(())
}
