//! `gauntlet eval`: clean accuracy of a checkpoint.

use anyhow::{anyhow, Context, Result};
use gauntlet_data::{DataConfig, DatasetName};
use gauntlet_models::checkpoint;
use gauntlet_train::evaluate;

use crate::args::EvalArgs;
use crate::device;

pub fn run(args: EvalArgs) -> Result<()> {
    let device = device::open(&args.common.device)?;
    let model = checkpoint::load(&args.model, &device).with_context(|| format!("loading {}", args.model.display()))?;
    let spec = model.spec();
    let dataset = match &args.dataset {
        Some(name) => name.parse().map_err(|e: String| anyhow!("--dataset: {e}"))?,
        None if spec.input == [3, 32, 32] => DatasetName::Cifar10,
        None => DatasetName::Mnist,
    };
    let mut config = DataConfig::new(dataset);
    config.dir = args.common.data_dir.clone();
    config.test_limit = args.test_limit;
    let splits = gauntlet_data::load(&config)?;
    let (c, h, w) = splits.test.image_shape();
    if [c, h, w] != spec.input {
        return Err(anyhow!(
            "{} expects images of shape {:?}, {dataset} has {:?}",
            args.model.display(),
            spec.input,
            [c, h, w]
        ));
    }
    let res = evaluate(model.as_ref(), &splits.test, args.batch_size, &device)?;
    println!(
        "{}: {dataset} test accuracy {:.2}% (error {:.2}%, n = {}, mean loss {:.4})",
        args.model.display(),
        100.0 * res.accuracy(),
        100.0 * res.error,
        res.n,
        res.loss
    );
    Ok(())
}
