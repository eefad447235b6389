//! Short training runs on slices of the embedded MNIST.

use candle_core::{Device, Tensor};
use gauntlet_data::{load, DataConfig, DatasetName, Splits};
use gauntlet_models::{build, Arch, Classifier, MaxoutMlpSpec, ModelSpec};
use gauntlet_train::{
    evaluate, train, EarlyStopping, OptimizerConfig, SilentObserver, TrainConfig,
};

fn small_mnist() -> Splits {
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.train_limit = Some(2000);
    config.valid_limit = Some(500);
    config.test_limit = Some(1000);
    load(&config).unwrap()
}

fn small_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 50,
        optimizer: OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.5,
            final_momentum: Some(0.7),
            momentum_saturate: 3,
            lr_decay: 1.0,
            min_lr: 0.0,
        },
        seed: 3,
        ..TrainConfig::default()
    }
}

fn flat(model: &dyn Classifier) -> Vec<f32> {
    let parts: Vec<Tensor> = model
        .params()
        .tensors()
        .into_iter()
        .map(|(_, t)| t.flatten_all().unwrap())
        .collect();
    Tensor::cat(&parts, 0).unwrap().to_vec1().unwrap()
}

#[test]
fn maxout_on_2000_images_is_far_above_chance_and_respects_max_norm() {
    let splits = small_mnist();
    // A wider init than pylearn2's 0.005 leaves the initial plateau within a few hundred steps.
    let spec = ModelSpec::mnist(Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![120, 120],
        pieces: 3,
        init_range: 0.05,
        ..Default::default()
    }));
    let model = build(&spec, 1, &Device::Cpu).unwrap();
    let log = train(
        model.as_ref(),
        &splits,
        &small_config(8),
        &Device::Cpu,
        &mut SilentObserver,
    )
    .unwrap();
    assert_eq!(log.epochs.len(), 8);
    let test = evaluate(model.as_ref(), &splits.test, 500, &Device::Cpu).unwrap();
    assert!(
        test.accuracy() > 0.85,
        "test accuracy {} after 8 epochs on 2000 images",
        test.accuracy()
    );
    assert!(log.epochs[7].train_loss < log.epochs[0].train_loss);
    // Every weight row obeys the max-norm bound after training.
    for (name, var) in model.params().vars() {
        if name.ends_with("weight") {
            let norms = var
                .as_tensor()
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .sqrt()
                .unwrap();
            let max = norms.max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(max <= 1.9365 + 1e-4, "{name}: row norm {max}");
        }
    }
}

#[test]
fn the_same_seed_trains_the_same_weights() {
    let mut splits = small_mnist();
    splits.train = splits.train.truncate(Some(300)).unwrap();
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![20], 3));
    let run = |seed: u64| {
        let model = build(&spec, 9, &Device::Cpu).unwrap();
        let mut config = small_config(2);
        config.seed = seed;
        train(
            model.as_ref(),
            &splits,
            &config,
            &Device::Cpu,
            &mut SilentObserver,
        )
        .unwrap();
        flat(model.as_ref())
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6));
}

#[test]
fn early_stopping_restores_the_best_epoch_and_nan_stops_training() {
    let mut splits = small_mnist();
    splits.train = splits.train.truncate(Some(500)).unwrap();
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![20], 2));
    let model = build(&spec, 2, &Device::Cpu).unwrap();
    let mut config = small_config(30);
    config.early_stopping = Some(EarlyStopping { patience: 2 });
    let log = train(
        model.as_ref(),
        &splits,
        &config,
        &Device::Cpu,
        &mut SilentObserver,
    )
    .unwrap();
    let best = log
        .epochs
        .iter()
        .map(|e| e.valid_error.unwrap())
        .fold(f64::INFINITY, f64::min);
    let now = evaluate(model.as_ref(), &splits.valid, 500, &Device::Cpu)
        .unwrap()
        .error;
    assert!(
        (now - best).abs() < 1e-9,
        "restored valid error {now}, best {best}"
    );
    assert_eq!(log.epochs[log.best_epoch - 1].valid_error.unwrap(), best);
    if log.stopped_by == "early-stopping" {
        assert_eq!(log.epochs.len(), log.best_epoch + 2);
    }

    // An absurd learning rate without max-norm overflows: a clear error, not NaN weights.
    let spec = ModelSpec::new(
        Arch::Mlp(gauntlet_models::MlpSpec {
            hidden: vec![32],
            activation: gauntlet_models::Activation::Relu,
            ..Default::default()
        }),
        [1, 28, 28],
        10,
    );
    let model = build(&spec, 2, &Device::Cpu).unwrap();
    let mut config = small_config(3);
    config.optimizer = OptimizerConfig::Sgd {
        lr: 1e30,
        momentum: 0.0,
        final_momentum: None,
        momentum_saturate: 1,
        lr_decay: 1.0,
        min_lr: 0.0,
    };
    let err = train(
        model.as_ref(),
        &splits,
        &config,
        &Device::Cpu,
        &mut SilentObserver,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("diverged") && err.contains("epoch 1"), "{err}");
}

#[test]
fn fgsm_adversarial_training_beats_the_baseline_under_fgsm() {
    use gauntlet_attacks::Norm;
    use gauntlet_train::Regularizer;
    let splits = small_mnist();
    let spec = ModelSpec::mnist(Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![100, 100],
        pieces: 3,
        init_range: 0.05,
        ..Default::default()
    }));
    let run = |regularizer: Regularizer| {
        let model = build(&spec, 1, &Device::Cpu).unwrap();
        let mut config = small_config(5);
        config.regularizer = regularizer;
        config.adversarial_validation = Some(gauntlet_train::AdversarialValidation {
            p: Norm::Linf,
            eps: 0.1,
            n: 500,
        });
        let log = train(
            model.as_ref(),
            &splits,
            &config,
            &Device::Cpu,
            &mut SilentObserver,
        )
        .unwrap();
        let last = log.epochs.last().unwrap();
        let (single, pgd) = (last.valid_adv_error.unwrap(), last.valid_pgd_error.unwrap());
        // The per-epoch PGD check is the stronger attack on the same images.
        assert!(
            pgd + 0.02 >= single,
            "PGD-10 error {pgd} below single-step error {single}"
        );
        single
    };
    let baseline = run(Regularizer::None);
    let adversarial = run(Regularizer::Lp {
        p: Norm::Linf,
        eps: 0.1,
        alpha: 0.5,
        labels: Default::default(),
        perturb_mode: Default::default(),
        clip: false,
    });
    assert!(
        adversarial + 0.15 < baseline,
        "FGSM(0.1) validation error: baseline {baseline}, adversarially trained {adversarial}"
    );
}

#[test]
fn lp_with_alpha_one_is_plain_training() {
    use gauntlet_attacks::Norm;
    use gauntlet_train::Regularizer;
    let splits = small_mnist();
    let batch = splits.train.slice(0, 20).unwrap();
    let model = build(
        &ModelSpec::mnist(Arch::maxout_mlp(vec![10], 2)),
        1,
        &Device::Cpu,
    )
    .unwrap();
    let plain = Regularizer::None
        .step(model.as_ref(), &batch.images, &batch.labels, 4)
        .unwrap();
    let lp = Regularizer::Lp {
        p: Norm::L2,
        eps: 1.0,
        alpha: 1.0,
        labels: Default::default(),
        perturb_mode: Default::default(),
        clip: false,
    }
    .step(model.as_ref(), &batch.images, &batch.labels, 4)
    .unwrap();
    assert_eq!(plain.loss, lp.loss);
    for (name, var) in model.params().vars() {
        let a = plain
            .grads
            .get(var.as_tensor())
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = lp
            .grads
            .get(var.as_tensor())
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-7),
            "{name}"
        );
    }
}

#[test]
fn training_stops_once_the_objective_reaches_its_target() {
    let mut splits = small_mnist();
    splits.train = splits.train.truncate(Some(300)).unwrap();
    let model = build(
        &ModelSpec::mnist(Arch::maxout_mlp(vec![20], 2)),
        2,
        &Device::Cpu,
    )
    .unwrap();
    let mut config = small_config(5);
    // Any first epoch's objective is below 100: the run must stop after it.
    config.stop_at_train_loss = Some(100.0);
    let log = train(
        model.as_ref(),
        &splits,
        &config,
        &Device::Cpu,
        &mut SilentObserver,
    )
    .unwrap();
    assert_eq!(
        (log.epochs.len(), log.stopped_by.as_str()),
        (1, "train-loss-target")
    );
    config.stop_at_train_loss = Some(0.0);
    let log = train(
        model.as_ref(),
        &splits,
        &config,
        &Device::Cpu,
        &mut SilentObserver,
    )
    .unwrap();
    assert_eq!((log.epochs.len(), log.stopped_by.as_str()), (5, "epochs"));
}

/// Determinism: the same seed and thread count give the same weights bit for bit, at one
/// thread and at two (where each step's batch is split into one shard per thread). Across
/// thread counts a model without dropout trains to the same weights up to rounding; with
/// dropout the second shard draws other masks.
#[test]
fn training_is_bitwise_repeatable_at_one_and_two_threads() {
    use gauntlet_models::CnnSpec;
    let mut splits = small_mnist();
    splits.train = splits.train.truncate(Some(640)).unwrap();
    let maxout = ModelSpec::mnist(Arch::maxout_mlp(vec![40, 40], 3));
    let cnn = ModelSpec::mnist(Arch::Cnn(CnnSpec {
        layers: vec![
            gauntlet_models::CnnLayer {
                channels: 4,
                kernel: 5,
                pad: 0,
                pool: 2,
                pool_stride: 2,
            },
            gauntlet_models::CnnLayer {
                channels: 8,
                kernel: 5,
                pad: 0,
                pool: 2,
                pool_stride: 2,
            },
        ],
        ..CnnSpec::default()
    }));
    let run = |spec: &ModelSpec, threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let model = build(spec, 4, &Device::Cpu).unwrap();
            let mut config = small_config(1);
            config.batch_size = 64;
            train(
                model.as_ref(),
                &splits,
                &config,
                &Device::Cpu,
                &mut SilentObserver,
            )
            .unwrap();
            flat(model.as_ref())
        })
    };
    for spec in [&maxout, &cnn] {
        let kind = spec.arch.kind();
        for threads in [1, 2] {
            assert_eq!(
                run(spec, threads),
                run(spec, threads),
                "{kind}, {threads} threads"
            );
        }
    }
    let (one, two) = (run(&cnn, 1), run(&cnn, 2));
    let worst = one
        .iter()
        .zip(&two)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "cnn: 1 and 2 threads differ by up to {worst}");
    assert_ne!(run(&maxout, 1), run(&maxout, 2), "dropout masks per shard");
}
