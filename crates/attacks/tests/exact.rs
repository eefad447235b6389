//! An independent check that the attacks are right: results compared with exact worst cases
//! computed here without any attack code.
//!
//! - A linear model `z = Wx + b` is attacked through its margin `m = z_y − z_j`, linear in the
//!   input: its minimum over `‖δ‖_p ≤ ε` is `m(x) − ε‖w_y − w_j‖_q` (Hölder, `1/p + 1/q = 1`),
//!   and in the box `[0, 1]` with L∞ it is reached coordinate by coordinate. The fast gradient
//!   method is exact on a two-class linear model for every p, PGD must come within a small
//!   tolerance, and no attack may ever do better than the exact value (which would mean a
//!   perturbation outside the ball). With ten classes the exact robust accuracy is known too.
//! - A small two-layer network on 2-D inputs: PGD's loss against the maximum over a dense grid
//!   of the ε-ball.

use candle_core::{DType, Device, Tensor};
use gauntlet_attacks::{Attack, AttackLoss, FastGradient, Goal, Norm, Pgd, StepSize};
use gauntlet_models::{
    build, per_example_cross_entropy, Activation, Arch, Classifier, MlpSpec, Mode, ModelSpec,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PS: [f64; 5] = [1.0, 1.5, 2.0, 3.0, f64::INFINITY];

/// An MLP with `hidden` layers on `[1, 1, dim]` inputs, its weights drawn from U(−scale, scale).
fn mlp(
    hidden: Vec<usize>,
    dim: usize,
    n_classes: usize,
    scale: f32,
    seed: u64,
) -> Box<dyn Classifier> {
    let arch = Arch::Mlp(MlpSpec {
        hidden,
        activation: Activation::Relu,
        ..MlpSpec::default()
    });
    let model = build(
        &ModelSpec::new(arch, [1, 1, dim], n_classes),
        0,
        &Device::Cpu,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (_, var) in model.params().vars() {
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    model
}

/// `W` (`[k][d]`) and `b` of a linear model, in f64.
fn linear_weights(model: &dyn Classifier) -> (Vec<Vec<f64>>, Vec<f64>) {
    let tensors = model.params().tensors();
    let get = |rank: usize| {
        let (_, t) = tensors.iter().find(|(_, t)| t.rank() == rank).unwrap();
        t.to_dtype(DType::F64).unwrap()
    };
    (get(2).to_vec2().unwrap(), get(1).to_vec1().unwrap())
}

/// `n` inputs `[n, 1, 1, dim]` from U(lo, hi).
fn inputs(n: usize, dim: usize, lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..n * dim).map(|_| rng.random_range(lo..=hi)).collect();
    Tensor::from_vec(values, (n, 1, 1, dim), &Device::Cpu).unwrap()
}

fn rows(xs: &Tensor) -> Vec<Vec<f64>> {
    xs.flatten_from(1)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn lp(v: &[f64], p: f64) -> f64 {
    if p.is_infinite() {
        v.iter().fold(0.0, |m, x| m.max(x.abs()))
    } else {
        v.iter().map(|x| x.abs().powf(p)).sum::<f64>().powf(1.0 / p)
    }
}

fn dual(p: f64) -> f64 {
    if p == 1.0 {
        f64::INFINITY
    } else if p.is_infinite() {
        1.0
    } else {
        p / (p - 1.0)
    }
}

/// `z_a − z_b` of a linear model at `x`.
fn margin(w: &[Vec<f64>], b: &[f64], x: &[f64], a: usize, c: usize) -> f64 {
    let z = |k: usize| w[k].iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + b[k];
    z(a) - z(c)
}

/// Labels: the model's own predictions, so every example starts correctly classified.
fn predictions(model: &dyn Classifier, xs: &Tensor) -> Tensor {
    model
        .forward(xs, Mode::Eval)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
}

/// For a two-class linear model: per example, the attack's margin `z_y − z_other` at its
/// output and the exact minimum over the ball; checks the output lies in the ball.
fn margins(attack: &dyn Attack, model: &dyn Classifier, xs: &Tensor, eps: f64) -> Vec<(f64, f64)> {
    let labels = predictions(model, xs);
    let adv = attack
        .perturb(model, xs, &Goal::Untargeted { labels: &labels }, eps)
        .unwrap();
    let (w, b) = linear_weights(model);
    let p = attack.norm().p();
    let ys = labels.to_vec1::<u32>().unwrap();
    rows(xs)
        .iter()
        .zip(rows(&adv))
        .zip(ys)
        .map(|((x, a), y)| {
            let (y, o) = (y as usize, 1 - y as usize);
            let delta: Vec<f64> = a.iter().zip(x).map(|(a, x)| a - x).collect();
            assert!(
                lp(&delta, p) <= eps * (1.0 + 1e-5) + 1e-7,
                "outside the ball"
            );
            let dw: Vec<f64> = w[y].iter().zip(&w[o]).map(|(a, b)| a - b).collect();
            let exact = margin(&w, &b, x, y, o) - eps * lp(&dw, dual(p));
            (margin(&w, &b, &a, y, o), exact)
        })
        .collect()
}

#[test]
fn fast_gradient_is_exact_on_a_two_class_linear_model_for_every_p() {
    let model = mlp(vec![], 20, 2, 0.3, 1);
    let xs = inputs(40, 20, 0.2, 0.8, 2);
    for p in PS {
        for eps in [0.05, 0.2] {
            let mut attack = FastGradient::new(Norm::new(p).unwrap());
            attack.clip = false;
            for (got, exact) in margins(&attack, model.as_ref(), &xs, eps) {
                assert!(
                    (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                    "p {p}, eps {eps}: margin {got}, exact {exact}"
                );
            }
        }
    }
}

#[test]
fn pgd_reaches_the_exact_worst_case_of_a_linear_model_and_never_passes_it() {
    let model = mlp(vec![], 20, 2, 0.3, 3);
    let xs = inputs(40, 20, 0.2, 0.8, 4);
    let (w, _) = linear_weights(model.as_ref());
    let dw: Vec<f64> = w[0].iter().zip(&w[1]).map(|(a, b)| a - b).collect();
    let eps = 0.2;
    for p in PS {
        let scale = eps * lp(&dw, dual(p));
        for random_start in [false, true] {
            let mut pgd = Pgd::new(Norm::new(p).unwrap());
            (pgd.steps, pgd.clip, pgd.random_start) = (50, false, random_start);
            // Past the decision boundary too: the worst case, not the first mistake.
            pgd.early_stop = false;
            pgd.loss = AttackLoss::Margin;
            let mut worst_gap = 0f64;
            for (got, exact) in margins(&pgd, model.as_ref(), &xs, eps) {
                assert!(
                    got >= exact - 1e-4 * (1.0 + exact.abs()),
                    "p {p}: {got} beats the exact {exact}"
                );
                worst_gap = worst_gap.max((got - exact) / scale);
            }
            eprintln!(
                "p {p}, random start {random_start}: PGD-50 margin at most {:.2}% of eps·|w_y - w_o|_q above the exact minimum",
                100.0 * worst_gap
            );
            // From the clean input every step follows the exact maximiser: PGD is exact. From a
            // random start, for 1 < p < ∞, the projection onto the round ball only shrinks
            // the start's component step by step: 50 steps leave a few percent.
            let tolerance = match (random_start, p) {
                (false, _) => 1e-4,
                (true, p) if p == 1.0 || p.is_infinite() => 1e-4,
                (true, _) => 0.05,
            };
            assert!(
                worst_gap <= tolerance,
                "p {p}, random start {random_start}: gap {worst_gap}"
            );
        }
    }
}

#[test]
fn fgsm_with_clipping_is_exact_in_the_box() {
    // Pixels at and near 0 and 1, so clipping binds on many coordinates.
    let model = mlp(vec![], 20, 2, 0.3, 5);
    let xs = inputs(40, 20, -0.3, 1.3, 6).clamp(0f32, 1f32).unwrap();
    let labels = predictions(model.as_ref(), &xs);
    let eps = 0.25;
    let adv = FastGradient::new(Norm::Linf)
        .perturb(
            model.as_ref(),
            &xs,
            &Goal::Untargeted { labels: &labels },
            eps,
        )
        .unwrap();
    let (w, b) = linear_weights(model.as_ref());
    for ((x, a), y) in rows(&xs)
        .iter()
        .zip(rows(&adv))
        .zip(labels.to_vec1::<u32>().unwrap())
    {
        let (y, o) = (y as usize, 1 - y as usize);
        // Each coordinate moves against w_y − w_o as far as the ball and the box allow.
        let worst: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(j, &xj)| {
                let d = w[y][j] - w[o][j];
                let step = if d > 0.0 {
                    -eps
                } else if d < 0.0 {
                    eps
                } else {
                    0.0
                };
                (xj + step).clamp(0.0, 1.0)
            })
            .collect();
        let (got, exact) = (margin(&w, &b, &a, y, o), margin(&w, &b, &worst, y, o));
        assert!(
            (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
            "{got} vs {exact}"
        );
    }
}

/// Ten classes: an example is robust exactly when every margin `z_y − z_j` stays positive,
/// `m_yj(x) > ε‖w_y − w_j‖_q` for all `j ≠ y`.
#[test]
fn pgd_robust_accuracy_of_a_ten_class_linear_model_matches_the_exact_one() {
    let model = mlp(vec![], 30, 10, 0.3, 7);
    let n = 200;
    let xs = inputs(n, 30, 0.0, 1.0, 8);
    let labels = predictions(model.as_ref(), &xs);
    let (w, b) = linear_weights(model.as_ref());
    for p in [1.0, 2.0, f64::INFINITY] {
        let eps = match p {
            1.0 => 0.5,
            2.0 => 0.2,
            _ => 0.04,
        };
        let exact: Vec<bool> = rows(&xs)
            .iter()
            .zip(labels.to_vec1::<u32>().unwrap())
            .map(|(x, y)| {
                let y = y as usize;
                (0..10).filter(|&j| j != y).all(|j| {
                    let dw: Vec<f64> = w[y].iter().zip(&w[j]).map(|(a, b)| a - b).collect();
                    margin(&w, &b, x, y, j) > eps * lp(&dw, dual(p))
                })
            })
            .collect();
        let mut pgd = Pgd::new(Norm::new(p).unwrap());
        (pgd.steps, pgd.restarts, pgd.clip) = (40, 3, false);
        pgd.loss = AttackLoss::Margin;
        pgd.step_size = StepSize::EpsOverSteps(2.5);
        let adv = pgd
            .perturb(
                model.as_ref(),
                &xs,
                &Goal::Untargeted { labels: &labels },
                eps,
            )
            .unwrap();
        let still = predictions(model.as_ref(), &adv)
            .eq(&labels)
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let exact_robust = exact.iter().filter(|&&r| r).count();
        let pgd_robust = still.iter().filter(|&&r| r == 1).count();
        for (i, (&e, &s)) in exact.iter().zip(&still).enumerate() {
            assert!(
                !e || s == 1,
                "p {p}: example {i} is provably robust but PGD broke it"
            );
        }
        eprintln!("p {p}, eps {eps}: exact robust {exact_robust}/{n}, PGD robust {pgd_robust}/{n}");
        assert!(
            exact_robust > n / 10 && exact_robust < n * 9 / 10,
            "a test with both kinds"
        );
        assert!(
            pgd_robust <= exact_robust + n / 50,
            "p {p}: PGD too weak: {pgd_robust} vs {exact_robust}"
        );
    }
}

/// Per-example cross-entropy at `xs` for `labels`, in f64.
fn losses(model: &dyn Classifier, xs: &Tensor, labels: &Tensor) -> Vec<f64> {
    let logits = model.forward(xs, Mode::Eval).unwrap();
    per_example_cross_entropy(&logits, labels)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A two-layer ReLU network on 2-D inputs: the loss PGD reaches against the maximum over a
/// 401 × 401 grid of the ε-ball (L∞: the square; L2: the disc).
#[test]
fn pgd_loss_on_a_two_layer_net_matches_brute_force_over_the_ball() {
    let model = mlp(vec![12], 2, 3, 2.0, 9);
    let xs = inputs(6, 2, 0.3, 0.7, 10);
    let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &Device::Cpu).unwrap();
    let side = 401;
    for (p, eps) in [(f64::INFINITY, 0.15), (2.0, 0.2)] {
        let mut pgd = Pgd::new(Norm::new(p).unwrap());
        // Fixed-length steps end within about a step of the maximum: many short ones.
        (pgd.steps, pgd.restarts, pgd.clip, pgd.early_stop) = (300, 10, false, false);
        pgd.seed = 11;
        let adv = pgd
            .perturb(
                model.as_ref(),
                &xs,
                &Goal::Untargeted { labels: &labels },
                eps,
            )
            .unwrap();
        let got = losses(model.as_ref(), &adv, &labels);
        for (i, x) in rows(&xs).iter().enumerate() {
            let mut grid = Vec::new();
            for a in 0..side {
                for c in 0..side {
                    let d = [a, c].map(|k| eps * (2.0 * k as f64 / (side - 1) as f64 - 1.0));
                    if lp(&d, p) <= eps {
                        grid.extend([(x[0] + d[0]) as f32, (x[1] + d[1]) as f32]);
                    }
                }
            }
            let m = grid.len() / 2;
            let points = Tensor::from_vec(grid, (m, 1, 1, 2), &Device::Cpu).unwrap();
            let label = labels
                .narrow(0, i, 1)
                .unwrap()
                .broadcast_as(m)
                .unwrap()
                .contiguous()
                .unwrap();
            let best = losses(model.as_ref(), &points, &label)
                .into_iter()
                .fold(f64::NEG_INFINITY, f64::max);
            // The grid's spacing bounds what it can miss, so PGD may end a little above it, and
            // never more: that would be a point outside the ball. Below it, PGD can stop at a
            // local maximum on the sphere (a ReLU network's loss is not concave), so it
            // must come close, not equal.
            let slack = 1e-3 * (1.0 + best.abs());
            eprintln!(
                "p {p}, x {i}: PGD loss {:.5}, grid maximum {best:.5}",
                got[i]
            );
            assert!(
                got[i] <= best + 0.02 + slack,
                "p {p}, x {i}: PGD {} above the maximum {best}",
                got[i]
            );
            assert!(
                got[i] >= best - slack - 0.02 * best.abs(),
                "p {p}, x {i}: PGD {} far below the maximum {best}",
                got[i]
            );
        }
    }
}
