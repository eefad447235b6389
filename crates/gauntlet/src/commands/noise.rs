//! `gauntlet noise`: accuracy under additive Gaussian noise, clipped to [0, 1] and not.

use anyhow::{Context, Result};
use gauntlet_attacks::gaussian_noise;

use crate::args::NoiseArgs;
use crate::commands::eval::load;
use crate::output::{write_csv, write_json};

pub fn run(args: NoiseArgs) -> Result<()> {
    super::check_budgets("--sigma", &args.sigma)?;
    let loaded = load(&args.data)?;
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
    write_json(&loaded.out.join("noise.json"), &records)?;
    write_csv(&loaded.out.join("noise.csv"), &records)?;
    println!("wrote {}/noise.json and .csv", loaded.out.display());
    Ok(())
}
