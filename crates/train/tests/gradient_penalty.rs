//! Form A (explicit gradient penalty) by double backpropagation: its weight gradient agrees
//! with finite differences of the objective. This file runs as its own process, so the
//! environment variable Candle needs can be set before any backward pass.

use candle_core::{Device, Tensor};
use gauntlet_attacks::Norm;
use gauntlet_models::{build, Activation, Arch, MlpSpec, ModelSpec};
use gauntlet_train::{double_backprop_works, Regularizer};

#[test]
fn penalty_gradient_matches_finite_differences() {
    // Candle reads this once per thread, at the thread's first backward pass.
    std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    assert!(double_backprop_works().unwrap());

    // A smooth model (sigmoid MLP) so that differences of step h see no kinks.
    let spec = ModelSpec::new(
        Arch::Mlp(MlpSpec {
            hidden: vec![6],
            activation: Activation::Sigmoid,
            ..Default::default()
        }),
        [1, 2, 3],
        3,
    );
    let model = build(&spec, 4, &Device::Cpu).unwrap();
    let xs = Tensor::from_vec(
        (0..24)
            .map(|i| ((i * 7 % 11) as f32) / 11.0)
            .collect::<Vec<_>>(),
        (4, 1, 2, 3),
        &Device::Cpu,
    )
    .unwrap();
    let ys = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
    for (p, sigma) in [(Norm::L2, 3.0), (Norm::Linf, 2.0), (Norm::Lp(3.0), 2.0)] {
        let reg = Regularizer::GradientPenalty { p, sigma };
        let out = reg.step(model.as_ref(), &xs, &ys, 0).unwrap();
        let plain = Regularizer::None.step(model.as_ref(), &xs, &ys, 0).unwrap();
        assert!(out.loss > plain.loss, "the penalty adds a positive term");
        for (name, var) in model.params().vars() {
            let analytic = out
                .grads
                .get(var.as_tensor())
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for i in (0..base.len()).step_by(3) {
                let h = 1e-2f32;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let loss = reg.step(model.as_ref(), &xs, &ys, 0).unwrap().loss as f64;
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
                let a = analytic[i] as f64;
                assert!(
                    (a - numeric).abs() <= 2e-2 * numeric.abs().max(a.abs()) + 2e-4,
                    "{p:?} {name}[{i}]: autograd {a}, finite differences {numeric}"
                );
            }
        }
    }
}
