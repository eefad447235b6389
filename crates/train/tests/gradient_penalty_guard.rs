//! Without `CANDLE_GRAD_DO_NOT_DETACH`, form A refuses to run instead of training with
//! silently wrong gradients (its own process, so the variable is surely unset).

use candle_core::{Device, Tensor};
use gauntlet_attacks::Norm;
use gauntlet_models::{build, Arch, ModelSpec};
use gauntlet_train::{double_backprop_works, Regularizer};

#[test]
fn refuses_without_the_environment_variable() {
    std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH");
    assert!(!double_backprop_works().unwrap());
    let model = build(
        &ModelSpec::new(Arch::maxout_mlp(vec![4], 2), [1, 2, 2], 2),
        1,
        &Device::Cpu,
    )
    .unwrap();
    let xs = Tensor::zeros((2, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let ys = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let err = Regularizer::GradientPenalty {
        p: Norm::L2,
        sigma: 1.0,
    }
    .step(model.as_ref(), &xs, &ys, 0)
    .err()
    .expect("must refuse")
    .to_string();
    assert!(err.contains("CANDLE_GRAD_DO_NOT_DETACH"), "{err}");
}
