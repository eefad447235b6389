//! `gauntlet attack`: robust accuracy of a checkpoint under an attack at several ε, with
//! per-example outcomes and the gradient-masking checks.

use anyhow::{anyhow, Result};
use gauntlet_attacks::{
    evaluate_attack, evaluate_attack_detailed, masking_checks, unbounded_eps, Attack, AttackKind,
    AttackLoss, AttackRecord, FastGradient, MaskingRules, Norm, Pgd, RandomNoise, StepSize,
};

use crate::args::{AttackArgs, AttackOptions};
use crate::commands::eval::{load, Loaded};
use crate::output::{write_csv, write_json};

/// Examples the masking checks attack at an unbounded ε (a subset keeps them cheap).
const CHECK_SUBSET: usize = 500;

/// The attack the options describe, with its norm parsed and checked.
pub fn build_attack(args: &AttackOptions) -> Result<Box<dyn Attack>> {
    let norm: Norm = args
        .norm
        .parse()
        .map_err(|e| anyhow!("--norm `{}`: {e}", args.norm))?;
    match args.attack.as_str() {
        "fast-gradient" | "fgsm" | "fgm" => {
            let mut attack = FastGradient::new(norm);
            attack.clip = !args.no_clip;
            Ok(Box::new(attack))
        }
        "pgd" => {
            let mut pgd = Pgd::new(norm);
            pgd.steps = args.steps;
            pgd.restarts = args.restarts;
            pgd.random_start = !args.no_random_start;
            pgd.clip = !args.no_clip;
            pgd.seed = args.seed;
            pgd.loss = match args.loss.as_str() {
                "ce" | "cross-entropy" => AttackLoss::CrossEntropy,
                "margin" | "cw" => AttackLoss::Margin,
                other => return Err(anyhow!("unknown --loss `{other}`, expected ce or margin")),
            };
            if let Some(step) = args.step_size {
                if !(step.is_finite() && step > 0.0) {
                    return Err(anyhow!("--step-size must be finite and > 0, got {step}"));
                }
                pgd.step_size = StepSize::Absolute(step);
            }
            if pgd.steps == 0 || pgd.restarts == 0 {
                return Err(anyhow!("--steps and --restarts must be at least 1"));
            }
            Ok(Box::new(pgd))
        }
        other => Err(anyhow!(
            "unknown --attack `{other}`, expected fast-gradient or pgd"
        )),
    }
}

fn print_records(title: &str, records: &[AttackRecord]) {
    println!("{title}");
    println!(
        "{:>8}  {:>9}  {:>9}  {:>19}  {:>10}  {:>8}",
        "eps", "clean", "robust", "95% interval", "max |d|", "seconds"
    );
    for r in records {
        println!(
            "{:>8}  {:>8.2}%  {:>8.2}%  [{:>6.2}%, {:>6.2}%]  {:>10.4}  {:>8.1}",
            r.eps,
            100.0 * r.clean_accuracy,
            100.0 * r.adversarial_accuracy,
            100.0 * r.adversarial_ci_low,
            100.0 * r.adversarial_ci_high,
            r.max_perturbation,
            r.seconds
        );
    }
}

/// The extra evaluations the masking checks compare against: a single step and random noise at
/// the same ε, and the attack itself at an ε covering the whole box (on a subset).
fn masking_records(
    args: &AttackArgs,
    attack: &dyn Attack,
    loaded: &Loaded,
) -> Result<Vec<AttackRecord>> {
    let (model, test, batch) = (
        loaded.model.as_ref(),
        &loaded.test,
        args.data.test.batch_size,
    );
    let norm = attack.norm();
    let mut records = Vec::new();
    if attack.kind() == AttackKind::Iterative {
        let mut single = FastGradient::new(norm);
        single.clip = !args.attack.no_clip;
        records.extend(evaluate_attack(
            model,
            &single,
            &test.images,
            &test.labels,
            &args.eps,
            batch,
        )?);
    }
    let mut noise = RandomNoise::new(norm);
    noise.seed = args.attack.seed;
    records.extend(evaluate_attack(
        model,
        &noise,
        &test.images,
        &test.labels,
        &args.eps,
        batch,
    )?);
    if attack.kind() == AttackKind::Iterative {
        let subset = test.truncate(Some(CHECK_SUBSET))?;
        let big = unbounded_eps(norm, model.spec().input_dim());
        records.extend(evaluate_attack(
            model,
            attack,
            &subset.images,
            &subset.labels,
            &[big],
            batch,
        )?);
    }
    Ok(records)
}

pub fn run(args: AttackArgs) -> Result<()> {
    super::check_budgets("--eps", &args.eps)?;
    let attack = build_attack(&args.attack)?;
    let loaded = load(&args.data)?;
    let (records, examples) = evaluate_attack_detailed(
        loaded.model.as_ref(),
        attack.as_ref(),
        &loaded.test.images,
        &loaded.test.labels,
        &args.eps,
        args.data.test.batch_size,
    )?;
    print_records(
        &format!(
            "{} on {} ({} test images)",
            attack.name(),
            args.data.model.display(),
            loaded.test.len()
        ),
        &records,
    );
    let stem = format!("attack-{}", attack.name());
    write_json(&loaded.out.join(format!("{stem}.json")), &records)?;
    write_csv(&loaded.out.join(format!("{stem}.csv")), &records)?;
    write_csv(&loaded.out.join(format!("{stem}-examples.csv")), &examples)?;

    if !args.no_checks {
        let mut all = records.clone();
        all.extend(masking_records(&args, attack.as_ref(), &loaded)?);
        let flags = masking_checks(&all, &MaskingRules::new(loaded.model.spec().input_dim()));
        println!("gradient-masking checks:");
        for flag in &flags {
            println!(
                "  [{}] {} ({}): {}",
                if flag.passed { "ok" } else { "FLAG" },
                flag.check.name(),
                flag.attack,
                flag.detail
            );
        }
        write_json(&loaded.out.join(format!("{stem}-masking.json")), &flags)?;
        write_json(&loaded.out.join(format!("{stem}-checks.json")), &all)?;
    }
    println!(
        "wrote {}/{stem}.json, .csv and -examples.csv",
        loaded.out.display()
    );
    Ok(())
}
