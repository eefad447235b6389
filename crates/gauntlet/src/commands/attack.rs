//! `gauntlet attack`: robust accuracy of a checkpoint under an attack at several ε, with
//! per-example outcomes and the gradient-masking checks.

use anyhow::{anyhow, Context, Result};
use gauntlet_attacks::{
    evaluate_attack, evaluate_attack_detailed, masking_checks, unbounded_eps, Attack, AttackConfig,
    AttackKind, AttackRecord, FastGradient, MaskingRules, RandomNoise, Randomized,
};
use gauntlet_models::ModelSpec;
use serde::Serialize;

use crate::args::{AttackArgs, AttackFlags};
use crate::commands::eval::{load, Loaded};
use crate::output::{write_csv, write_json};

/// Examples the masking checks attack at an unbounded ε (a subset keeps them cheap).
const CHECK_SUBSET: usize = 500;

/// The attack the flags describe, checked against `model` (its classes and input shape).
pub fn build_attack(flags: &AttackFlags, model: &ModelSpec) -> Result<AttackConfig> {
    flags
        .options()
        .resolve(flags.seed(), model.n_classes, &model.input)
        .map_err(|e| anyhow!("{}: {}", AttackFlags::flag(e.key), e.message))
}

/// One ensemble member at one ε (a row of `-members.csv`).
#[derive(Serialize)]
struct MemberRow<'a> {
    eps: f64,
    member: &'a str,
    kind: AttackKind,
    broken: usize,
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
    for r in records {
        if let (Some(aimed), Some(reached)) = (r.targeted_n, r.target_reached) {
            println!(
                "  eps {}: {reached} of {aimed} examples aimed at another class reached their target ({:.2}%)",
                r.eps,
                100.0 * reached as f64 / aimed.max(1) as f64
            );
        }
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
    let iterative = matches!(attack.kind(), AttackKind::Iterative | AttackKind::Ensemble);
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
    noise.seed = args.attack.seed();
    records.extend(evaluate_attack(
        model,
        &noise,
        &test.images,
        &test.labels,
        &args.eps,
        batch,
    )?);
    if iterative {
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
    let mut loaded = load(&args.data)?;
    let attack = build_attack(&args.attack, loaded.model.spec())?.build();
    if args.randomized {
        loaded.model = Box::new(Randomized::new(loaded.model, args.attack.seed()));
    }
    let (records, examples) = evaluate_attack_detailed(
        loaded.model.as_ref(),
        attack.as_ref(),
        &loaded.test.images,
        &loaded.test.labels,
        &args.eps,
        args.data.test.batch_size,
    )
    .with_context(|| format!("attacking {}", args.data.model.display()))?;
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
    // A CSV row holds no list: an ensemble's members go to a table of their own.
    let flat: Vec<AttackRecord> = records
        .iter()
        .map(|r| AttackRecord {
            members: vec![],
            ..r.clone()
        })
        .collect();
    write_csv(&loaded.out.join(format!("{stem}.csv")), &flat)?;
    write_csv(&loaded.out.join(format!("{stem}-examples.csv")), &examples)?;
    let members: Vec<MemberRow> = records
        .iter()
        .flat_map(|r| {
            r.members.iter().map(|m| MemberRow {
                eps: r.eps,
                member: &m.attack,
                kind: m.kind,
                broken: m.broken,
            })
        })
        .collect();
    if !members.is_empty() {
        println!("examples broken by each member (after the members before it):");
        for m in &members {
            println!("  eps {:>8}  {:<20} {}", m.eps, m.member, m.broken);
        }
        write_csv(&loaded.out.join(format!("{stem}-members.csv")), &members)?;
    }

    if !args.no_checks {
        let mut all = records.clone();
        all.extend(masking_records(&args, attack.as_ref(), &loaded)?);
        let spec = loaded.model.spec();
        let rules = MaskingRules::new(spec.input_dim()).with_classes(spec.n_classes);
        let flags = masking_checks(&all, &rules);
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
