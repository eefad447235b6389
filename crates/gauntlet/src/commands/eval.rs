//! `gauntlet eval`: clean accuracy of a checkpoint; and the checkpoint-plus-test-set loading
//! that every evaluating command shares.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use gauntlet_data::{DataConfig, Dataset, DatasetName};
use gauntlet_models::{checkpoint, Classifier, ModelSpec};
use gauntlet_train::evaluate;

use crate::args::{EvalArgs, EvalDataArgs, TestSetArgs};
use crate::commands::single::{self, SingleResults};
use crate::device;
use crate::output::{write_csv, write_json};

/// A loaded checkpoint with the test images it is evaluated on.
pub struct Loaded {
    pub model: Box<dyn Classifier>,
    pub dataset: DatasetName,
    /// The data set, its folder and limits, as results.json records it.
    pub data: DataConfig,
    pub test: Dataset,
    pub device: Device,
    /// Where result files go.
    pub out: PathBuf,
}

/// The test split a model of `spec` is evaluated on: `dataset` if given, else MNIST (or
/// CIFAR-10 for 3×32×32 inputs); the images must have the model's input shape.
pub fn test_set(
    model_path: &Path,
    spec: &ModelSpec,
    args: &TestSetArgs,
    device: &Device,
) -> Result<(DataConfig, Dataset)> {
    if args.batch_size == 0 {
        return Err(anyhow!("--batch-size must be at least 1"));
    }
    let dataset = match &args.dataset {
        Some(name) => name
            .parse()
            .map_err(|e: String| anyhow!("--dataset: {e}"))?,
        None if spec.input == [3, 32, 32] => DatasetName::Cifar10,
        None => DatasetName::Mnist,
    };
    let mut config = DataConfig::new(dataset);
    config.dir = args.common.data_dir.clone();
    config.test_limit = args.test_limit;
    // The test files only: a folder without (or with a damaged copy of) the training files will do.
    let test = gauntlet_data::load_test(&config)?.test;
    let (c, h, w) = test.image_shape();
    if [c, h, w] != spec.input {
        return Err(anyhow!(
            "{} expects images of shape {:?}, {dataset} has {:?}",
            model_path.display(),
            spec.input,
            [c, h, w]
        ));
    }
    check_classes(model_path, spec, dataset, test.n_classes)?;
    Ok((config, test.to_device(device)?))
}

/// A model must give one logit per class of the data it is evaluated on: an imported model
/// with another head would otherwise be scored against the wrong labels.
pub fn check_classes(
    model_path: &Path,
    spec: &ModelSpec,
    dataset: DatasetName,
    n: usize,
) -> Result<()> {
    if spec.n_classes != n {
        return Err(anyhow!(
            "{} outputs [batch, {}] logits, {dataset} has {n} classes",
            model_path.display(),
            spec.n_classes
        ));
    }
    Ok(())
}

/// The model file at `path`; its errors already name the file.
pub fn load_model(path: &Path, device: &Device) -> Result<Box<dyn Classifier>> {
    Ok(checkpoint::load(path, device)?)
}

pub fn load(args: &EvalDataArgs) -> Result<Loaded> {
    let device = device::open(&args.test.common.device)?;
    let model = load_model(&args.model, &device)?;
    let (data, test) = test_set(&args.model, model.spec(), &args.test, &device)?;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => args
            .model
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    Ok(Loaded {
        model,
        dataset: data.dataset,
        data,
        test,
        device,
        out,
    })
}

pub fn run(args: EvalArgs) -> Result<()> {
    let loaded = load(&args.data)?;
    let res = evaluate(
        loaded.model.as_ref(),
        &loaded.test,
        args.data.test.batch_size,
        &loaded.device,
    )
    .with_context(|| format!("evaluating {}", args.data.model.display()))?;
    println!(
        "{}: {} test accuracy {:.2}% (error {:.2}%, n = {}, mean loss {:.4})",
        args.data.model.display(),
        loaded.dataset,
        100.0 * res.accuracy(),
        100.0 * res.error,
        res.n,
        res.loss
    );
    // results.json's model row, and eval.json's record from it.
    let model = single::described(&args.data.model, loaded.model.as_ref(), &res, 0)?;
    let record = EvalRecord {
        model: args.data.model.display().to_string(),
        dataset: loaded.dataset.to_string(),
        n: res.n,
        correct: res.correct(),
        accuracy: res.accuracy(),
        ci_low: model.test_ci_low,
        ci_high: model.test_ci_high,
        loss: res.loss,
    };
    let (json, csv) = (loaded.out.join("eval.json"), loaded.out.join("eval.csv"));
    write_json(&json, &record)?;
    write_csv(&csv, std::slice::from_ref(&record))?;
    let single = SingleResults {
        name: "eval".into(),
        seed: 0,
        models: vec![model],
        robustness: vec![],
        noise: vec![],
        transfer: vec![],

        security_curves: vec![],
        masking: vec![],
    };
    single.write(
        &loaded.out,
        &single.results(&loaded.data, args.data.test.batch_size)?,
    )?;
    println!(
        "wrote {}, {} and {}",
        json.display(),
        csv.display(),
        loaded.out.join("results.json").display()
    );
    Ok(())
}

/// What `gauntlet eval` writes: the clean accuracy with its Wilson 95% interval.
#[derive(Debug, serde::Serialize)]
struct EvalRecord {
    model: String,
    dataset: String,
    n: usize,
    correct: usize,
    accuracy: f64,
    ci_low: f64,
    ci_high: f64,
    loss: f64,
}
