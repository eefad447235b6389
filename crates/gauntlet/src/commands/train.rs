//! `gauntlet train`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use gauntlet_data::{DataConfig, DatasetName};
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{
    build_fitted, checkpoint, Arch, CnnSpec, ConvMaxoutSpec, MaxoutMlpSpec, MlpSpec, ModelSpec,
};
use gauntlet_suite::runner::TRAIN_STATE_FILE;
use gauntlet_suite::INIT_STREAM;
use gauntlet_train::{
    evaluate, train_resumable, OptimizerConfig, Regularizer, TrainConfig, TrainLog,
};
use serde::Serialize;

use crate::args::TrainArgs;
use crate::config::{ModelEntry, RunConfig};
use crate::device;
use crate::output::{write_csv, write_json};
use crate::progress::TrainProgress;

/// What `summary.json` holds.
#[derive(Serialize)]
struct Summary<'a> {
    name: &'a str,
    dataset: DatasetName,
    arch: &'a str,
    n_params: usize,
    best_epoch: usize,
    epochs_run: usize,
    train_seconds: f64,
    valid_error: Option<f64>,
    test_error: f64,
    test_loss: f64,
    test_n: usize,
    config: &'a RunConfig,
}

fn arch_from_name(name: &str) -> Result<Arch> {
    Ok(match name {
        "maxout-mlp" => Arch::MaxoutMlp(MaxoutMlpSpec::default()),
        "mlp" => Arch::Mlp(MlpSpec::default()),
        "conv-maxout" => Arch::ConvMaxout(ConvMaxoutSpec::default()),
        "cnn" => Arch::Cnn(CnnSpec::default()),
        other => {
            return Err(anyhow!(
                "unknown --arch `{other}`, expected maxout-mlp, mlp, conv-maxout or cnn"
            ))
        }
    })
}

/// The configuration file (if any) with the flags applied on top.
fn resolve(args: &TrainArgs) -> Result<RunConfig> {
    let mut config = match &args.config {
        Some(path) => RunConfig::from_file(path)?,
        None => {
            let arch = arch_from_name(args.arch.as_deref().unwrap_or("maxout-mlp"))?;
            RunConfig {
                name: arch.kind().to_string(),
                seed: 1,
                data: DataConfig::new(DatasetName::Mnist),
                model: ModelEntry {
                    arch,
                    preprocess: Default::default(),
                },
                train: TrainConfig::default(),
            }
        }
    };
    if args.config.is_some() {
        if let Some(arch) = &args.arch {
            config.model.arch = arch_from_name(arch)?;
        }
    }
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    // It names the output folder: checked before any data is read or step run.
    gauntlet_train::check_file_name(&config.name).map_err(|e| {
        match (&args.name, &args.config) {
            (Some(_), _) => anyhow!("--name: {e}"),
            (None, Some(path)) => anyhow!("{}: name: {e}", path.display()),
            (None, None) => anyhow!("name: {e}"),
        }
    })?;
    if let Some(dataset) = &args.dataset {
        config.data.dataset = dataset
            .parse()
            .map_err(|e: String| anyhow!("--dataset: {e}"))?;
    }
    if let Some(dir) = &args.common.data_dir {
        config.data.dir = Some(dir.clone());
    }
    config.data.train_limit = args.train_limit.or(config.data.train_limit);
    config.data.test_limit = args.test_limit.or(config.data.test_limit);
    config.data.valid_size = args.valid_size.or(config.data.valid_size);
    config.seed = args.seed.unwrap_or(config.seed);
    config.train.epochs = args.epochs.unwrap_or(config.train.epochs);
    config.train.batch_size = args.batch_size.unwrap_or(config.train.batch_size);
    if let Some(new_lr) = args.lr {
        match &mut config.train.optimizer {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr = new_lr,
        }
    }
    config.train.seed = config.seed;
    if let Some(dir) = &args.continue_from {
        // A stop target the recipe sets itself is kept.
        let own_target = config.train.stop_at_train_loss;
        config.train = config
            .train
            .second_stage(&first_stage_log(dir)?)
            .with_context(|| format!("continuing {}", dir.display()))?;
        config.train.stop_at_train_loss = own_target.or(config.train.stop_at_train_loss);
    }
    config.train.validate().context("training settings")?;
    Ok(config)
}

/// The training log of an earlier run (its training.json).
fn first_stage_log(dir: &std::path::Path) -> Result<TrainLog> {
    let path = dir.join("training.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let config = resolve(&args)?;
    if matches!(
        config.train.regularizer,
        Regularizer::GradientPenalty { .. }
    ) {
        // Candle reads this once per thread at the first backward pass, and none has run yet;
        // without it second-order gradients are silently wrong (docs/candle-traps.md).
        std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    }
    let device = device::open(&args.common.device)?;
    let out: PathBuf = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&config.name));

    let splits = gauntlet_data::load(&config.data).context("loading the data")?;
    let (c, h, w) = splits.train.image_shape();
    let spec = ModelSpec::new(config.model.arch.clone(), [c, h, w], splits.train.n_classes)
        .with_preprocess(config.model.preprocess);
    let model = match &args.continue_from {
        None => build_fitted(
            &spec,
            derive_seed(config.seed, INIT_STREAM),
            &device,
            &splits.train.images,
        )
        .with_context(|| match &args.config {
            Some(path) => format!("{}: [model]: building the model", path.display()),
            None => "building the model".into(),
        })?,
        Some(dir) => {
            let path = dir.join("model.safetensors");
            let model = checkpoint::load(&path, &device)
                .with_context(|| format!("loading {}", path.display()))?;
            if model.spec() != &spec {
                return Err(anyhow!(
                    "{} is a different model from the one configured: {:?} vs {:?}",
                    path.display(),
                    model.spec().arch,
                    spec.arch
                ));
            }
            model
        }
    };
    // The planned work, so a mistyped epoch count shows before it runs for days.
    let steps_per_epoch = splits.train.len().div_ceil(config.train.batch_size);
    eprintln!(
        "training {} ({}, {} parameters) on {} {} images, validating on {}, {} epochs of {} steps ({} steps in all)",
        config.name,
        spec.arch.kind(),
        model.params().n_scalars(),
        splits.train.len(),
        config.data.dataset,
        splits.valid.len(),
        config.train.epochs,
        steps_per_epoch,
        (config.train.epochs as u128) * steps_per_epoch as u128
    );

    // Created first: an unwritable output folder must not cost a training run.
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Saved after every epoch; a run killed and started again with the same settings and
    // --out continues from its last finished epoch.
    let state = out.join(TRAIN_STATE_FILE);
    let started = Instant::now();
    let mut progress = TrainProgress::new(&config.name, config.train.epochs);
    let log = train_resumable(
        model.as_ref(),
        &splits,
        &config.train,
        &device,
        &mut progress,
        &state,
    )?;
    let train_seconds = started.elapsed().as_secs_f64();
    let test = evaluate(model.as_ref(), &splits.test, 1000, &device)?;

    let model_path = out.join("model.safetensors");
    checkpoint::save(model.as_ref(), &model_path)
        .with_context(|| format!("saving {}", model_path.display()))?;
    write_csv(&out.join("training.csv"), &log.epochs)?;
    write_json(&out.join("training.json"), &log)?;
    let summary = Summary {
        name: &config.name,
        dataset: config.data.dataset,
        arch: spec.arch.kind(),
        n_params: model.params().n_scalars(),
        best_epoch: log.best_epoch,
        epochs_run: log.epochs.len(),
        train_seconds,
        valid_error: log
            .epochs
            .get(log.best_epoch.saturating_sub(1))
            .and_then(|e| e.valid_error),
        test_error: test.error,
        test_loss: test.loss,
        test_n: test.n,
        config: &config,
    };
    write_json(&out.join("summary.json"), &summary)?;
    // Absent when training stopped in its first epoch (a stop target reached).
    match std::fs::remove_file(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", state.display()))?
        }
        _ => {}
    }
    println!(
        "{}: test error {:.2}% ({} of {} wrong), best epoch {} of {}, trained in {:.0} s; wrote {}",
        config.name,
        100.0 * test.error,
        (test.error * test.n as f64).round() as usize,
        test.n,
        log.best_epoch,
        log.epochs.len(),
        train_seconds,
        out.display()
    );
    Ok(())
}
