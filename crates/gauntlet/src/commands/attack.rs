//! `gauntlet attack`: robust accuracy of a checkpoint under an attack at several ε.

use anyhow::{anyhow, Result};
use gauntlet_attacks::{evaluate_attack, Attack, FastGradient, Norm};

use crate::args::AttackArgs;
use crate::commands::eval::load;
use crate::output::{write_csv, write_json};

fn build_attack(args: &AttackArgs, norm: Norm) -> Result<Box<dyn Attack>> {
    match args.attack.as_str() {
        "fast-gradient" | "fgsm" | "fgm" => {
            let mut attack = FastGradient::new(norm);
            attack.clip = !args.no_clip;
            Ok(Box::new(attack))
        }
        other => Err(anyhow!("unknown --attack `{other}`, expected fast-gradient")),
    }
}

pub fn run(args: AttackArgs) -> Result<()> {
    let norm: Norm = args.norm.parse().map_err(|e| anyhow!("--norm `{}`: {e}", args.norm))?;
    if let Some(bad) = args.eps.iter().find(|e| !(**e >= 0.0 && e.is_finite())) {
        return Err(anyhow!("--eps values must be finite and >= 0, got {bad}"));
    }
    let attack = build_attack(&args, norm)?;
    let loaded = load(&args.data)?;
    let records = evaluate_attack(
        loaded.model.as_ref(),
        attack.as_ref(),
        &loaded.test.images,
        &loaded.test.labels,
        &args.eps,
        args.data.batch_size,
    )?;
    println!("{} on {} ({} test images)", attack.name(), args.data.model.display(), loaded.test.len());
    println!("{:>8}  {:>9}  {:>9}  {:>17}  {:>9}", "eps", "clean", "robust", "95% interval", "max |d|");
    for r in &records {
        println!(
            "{:>8}  {:>8.2}%  {:>8.2}%  [{:>6.2}%, {:>6.2}%]  {:>9.4}",
            r.eps,
            100.0 * r.clean_accuracy,
            100.0 * r.adversarial_accuracy,
            100.0 * r.adversarial_ci_low,
            100.0 * r.adversarial_ci_high,
            r.max_perturbation
        );
    }
    let stem = format!("attack-{}", attack.name());
    write_json(&loaded.out.join(format!("{stem}.json")), &records)?;
    write_csv(&loaded.out.join(format!("{stem}.csv")), &records)?;
    println!("wrote {}/{stem}.json and .csv", loaded.out.display());
    Ok(())
}
