//! A training run stopped after some epochs and resumed from its saved state ends with the
//! same weights, bit for bit, and the same log (timings aside) as one never interrupted.

use std::path::Path;

use candle_core::Device;
use gauntlet_attacks::Norm;
use gauntlet_data::{load, DataConfig, DatasetName, Splits};
use gauntlet_models::{build, Arch, Classifier, MaxoutMlpSpec, ModelSpec};
use gauntlet_train::{
    train, train_resumable, EarlyStopping, EpochRecord, Error, Observer, OptimizerConfig,
    Regularizer, TrainConfig, TrainLog,
};

fn splits() -> Splits {
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.train_limit = Some(400);
    config.valid_limit = Some(200);
    config.test_limit = Some(10);
    load(&config).unwrap()
}

/// A Maxout MLP with pylearn2's dropout, so masks drawn per epoch and batch matter.
fn model() -> Box<dyn Classifier> {
    let spec = ModelSpec::mnist(Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![16],
        pieces: 2,
        init_range: 0.05,
        ..MaxoutMlpSpec::default()
    }));
    build(&spec, 5, &Device::Cpu).unwrap()
}

/// Momentum rising over epochs, a per-step learning-rate decay, FGSM-style adversarial
/// training and early stopping: every piece of state a resume must restore.
fn sgd_config() -> TrainConfig {
    TrainConfig {
        epochs: 4,
        batch_size: 50,
        optimizer: OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.5,
            final_momentum: Some(0.9),
            momentum_saturate: 3,
            lr_decay: 1.01,
            min_lr: 0.0,
        },
        early_stopping: Some(EarlyStopping { patience: 10 }),
        regularizer: Regularizer::Lp {
            p: Norm::Linf,
            eps: 0.1,
            alpha: 0.5,
            labels: Default::default(),
            perturb_mode: Default::default(),
            clip: false,
        },
        seed: 9,
        ..TrainConfig::default()
    }
}

fn weights(model: &dyn Classifier) -> Vec<(String, Vec<u32>)> {
    model
        .params()
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let bits = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (n, bits.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

/// The log with wall times zeroed: they are the only fields allowed to differ.
fn untimed(log: &TrainLog) -> TrainLog {
    let mut log = log.clone();
    for e in &mut log.epochs {
        e.seconds = 0.0;
        e.examples_per_second = 0.0;
    }
    log
}

/// Stops after `stop_after` epochs (a simulated kill) and records what it saw.
#[derive(Default)]
struct Recorder {
    stop_after: Option<usize>,
    epochs: Vec<usize>,
    resumed: Option<usize>,
}

impl Observer for Recorder {
    fn epoch_done(&mut self, record: &EpochRecord) {
        self.epochs.push(record.epoch);
    }
    fn resumed(&mut self, epoch: usize) {
        self.resumed = Some(epoch);
    }
    fn should_stop(&mut self) -> bool {
        self.stop_after == self.epochs.last().copied()
    }
}

/// Trains uninterrupted, then stopped after `stop_after` epochs and resumed; checks both end
/// alike and the resumed run redid no finished epoch.
fn check_resume(config: &TrainConfig, stop_after: usize) {
    let data = splits();
    let dir = tempfile::tempdir().unwrap();
    let whole = model();
    let mut seen = Recorder::default();
    let full_log = train(whole.as_ref(), &data, config, &Device::Cpu, &mut seen).unwrap();
    assert_eq!(seen.epochs, (1..=config.epochs).collect::<Vec<_>>());

    let state = dir.path().join("state.safetensors");
    let first = model();
    let mut stopper = Recorder {
        stop_after: Some(stop_after),
        ..Recorder::default()
    };
    let err = train_resumable(
        first.as_ref(),
        &data,
        config,
        &Device::Cpu,
        &mut stopper,
        &state,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Interrupted { epoch } if epoch == stop_after),
        "{err}"
    );
    assert!(state.is_file());

    // A new process: a freshly built model, the same configuration, the saved state.
    let second = model();
    let mut rest = Recorder::default();
    let log = train_resumable(
        second.as_ref(),
        &data,
        config,
        &Device::Cpu,
        &mut rest,
        &state,
    )
    .unwrap();
    assert_eq!(rest.resumed, Some(stop_after));
    assert_eq!(
        rest.epochs,
        (stop_after + 1..=config.epochs).collect::<Vec<_>>(),
        "only the epochs not yet done run again"
    );
    assert_eq!(untimed(&log), untimed(&full_log));
    assert!(
        weights(second.as_ref()) == weights(whole.as_ref()),
        "resumed weights differ from the uninterrupted run's"
    );
}

#[test]
fn sgd_with_schedules_dropout_adversarial_steps_and_early_stopping_resumes_exactly() {
    check_resume(&sgd_config(), 2);
}

#[test]
fn adam_resumes_exactly() {
    let config = TrainConfig {
        optimizer: OptimizerConfig::Adam {
            lr: 0.003,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        regularizer: Regularizer::None,
        early_stopping: None,
        epochs: 3,
        ..sgd_config()
    };
    check_resume(&config, 1);
}

#[test]
fn a_state_of_another_run_or_a_damaged_one_is_refused_by_name() {
    let data = splits();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.safetensors");
    let config = TrainConfig {
        epochs: 1,
        regularizer: Regularizer::None,
        ..sgd_config()
    };
    let net = model();
    let mut observer = Recorder::default();
    train_resumable(
        net.as_ref(),
        &data,
        &config,
        &Device::Cpu,
        &mut observer,
        &state,
    )
    .unwrap();

    let other = TrainConfig {
        seed: 10,
        ..config.clone()
    };
    let message = resume_error(&other, &state);
    assert!(message.contains("different training run"), "{message}");

    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let message = resume_error(&config, &state);
    assert!(message.contains("not a training state file") || message.contains("tensor"));

    std::fs::write(&state, b"").unwrap();
    let message = resume_error(&config, &state);
    assert!(message.contains("not a training state file"), "{message}");
}

/// The error of resuming a fresh model from `state` under `config`; it must name the file.
fn resume_error(config: &TrainConfig, state: &Path) -> String {
    let net = model();
    let err = train_resumable(
        net.as_ref(),
        &splits(),
        config,
        &Device::Cpu,
        &mut Recorder::default(),
        state,
    )
    .unwrap_err();
    assert!(matches!(err, Error::State { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("state.safetensors"), "{message}");
    message
}
