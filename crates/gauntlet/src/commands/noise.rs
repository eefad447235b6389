//! `gauntlet noise`: accuracy under additive Gaussian noise, clipped to [0, 1] and not.

use anyhow::{Context, Result};
use gauntlet_attacks::gaussian_noise;

use crate::args::NoiseArgs;
use crate::commands::eval::load;
use crate::commands::single::{self, SingleResults};
use crate::output::write_json;
use gauntlet_suite::record::NoiseRow;

pub fn run(args: NoiseArgs) -> Result<()> {
    super::check_budgets("--sigma", &args.sigma)?;
    let loaded = load(&args.data)?;
    let batch = args.data.test.batch_size;
    let model = single::model_result(
        &args.data.model,
        loaded.model.as_ref(),
        &loaded.test,
        batch,
        args.seed,
    )?;
    let mut records = Vec::new();
    for clip in [false, true] {
        records.extend(
            gaussian_noise(
                loaded.model.as_ref(),
                &loaded.test.images,
                &loaded.test.labels,
                &args.sigma,
                clip,
                args.seed,
                args.data.test.batch_size,
            )
            .with_context(|| format!("evaluating {}", args.data.model.display()))?,
        );
    }
    let single = SingleResults {
        name: "noise".into(),
        seed: args.seed,
        noise: records
            .iter()
            .map(|r| NoiseRow {
                model: model.name.clone(),
                record: r.record.clone(),
            })
            .collect(),
        models: vec![model],
        robustness: vec![],
        transfer: vec![],

        security_curves: vec![],
        masking: vec![],
    };
    let results = single.results(&loaded.data, batch)?;
    single.write(&loaded.out, &results)?;
    write_json(&loaded.out.join("noise.json"), &records)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "Gaussian noise on {} ({} test images)",
        args.data.model.display(),
        loaded.test.len()
    );
    println!(
        "{:>8}  {:>7}  {:>9}  {:>17}",
        "sigma", "clipped", "accuracy", "95% interval"
    );
    for r in &records {
        println!(
            "{:>8}  {:>7}  {:>8.2}%  [{:>6.2}%, {:>6.2}%]",
            r.sigma,
            r.clip,
            100.0 * r.accuracy,
            100.0 * r.ci_low,
            100.0 * r.ci_high
        );
    }
    println!(
        "wrote {0}/results.json and {0}/noise.csv (and noise.json, the records)",
        loaded.out.display()
    );
    Ok(())
}
