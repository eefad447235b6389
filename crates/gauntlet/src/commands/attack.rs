//! `gauntlet attack`: robust accuracy of a checkpoint under an attack at several ε, with
//! per-example outcomes and the gradient-masking checks.

use anyhow::{anyhow, Context, Result};
use gauntlet_attacks::{
    evaluate_attack, evaluate_attack_detailed, masking_checks, unbounded_eps, Apgd, Attack,
    AttackKind, AttackLoss, AttackRecord, AutoAttack, AutoVersion, FastGradient, MaskingRules,
    Norm, Pgd, RandomNoise, Randomized, Square, StepSize, TargetSelection, Targeted,
};
use serde::Serialize;

use crate::args::{AttackArgs, AttackOptions};
use crate::commands::eval::{load, Loaded};
use crate::output::{write_csv, write_json};

/// Examples the masking checks attack at an unbounded ε (a subset keeps them cheap).
const CHECK_SUBSET: usize = 500;

/// The attack the options describe, with its norm parsed and checked, aimed at targets when
/// `--targeted` is given.
pub fn build_attack(args: &AttackOptions) -> Result<Box<dyn Attack>> {
    let attack = untargeted_attack(args)?;
    let Some(targeted) = &args.targeted else {
        return Ok(attack);
    };
    if args.attack == "auto" || args.target_classes.is_some() {
        return Err(anyhow!(
            "--targeted does not apply to --attack auto or --target-classes (APGD-T picks its own targets)"
        ));
    }
    let selection = match targeted.as_str() {
        "random" => TargetSelection::Random { seed: args.seed },
        "least-likely" => TargetSelection::LeastLikely,
        other => match other.strip_prefix("class=").map(str::parse::<u32>) {
            Some(Ok(class)) => TargetSelection::Class(class),
            _ => {
                return Err(anyhow!(
                    "unknown --targeted `{other}`, expected random, least-likely or class=N"
                ))
            }
        },
    };
    Ok(Box::new(Targeted::new(attack, selection)))
}

/// The attack the options describe, untargeted.
fn untargeted_attack(args: &AttackOptions) -> Result<Box<dyn Attack>> {
    let norm: Norm = args
        .norm
        .parse()
        .map_err(|e| anyhow!("--norm `{}`: {e}", args.norm))?;
    let kind = args.attack.as_str();
    // Options that only some attacks take: (flag, given, attacks).
    let options: [(&str, bool, &[&str]); 5] = [
        (
            "--target-classes",
            args.target_classes.is_some(),
            &["apgd", "auto"],
        ),
        ("--n-queries", args.n_queries.is_some(), &["square", "auto"]),
        ("--rand", args.rand, &["auto"]),
        ("--eot-draws", args.eot_draws.is_some(), &["apgd", "auto"]),
        ("--steps", args.steps.is_some(), &["pgd", "apgd", "auto"]),
    ];
    for (flag, given, kinds) in options {
        if given && !kinds.contains(&kind) {
            return Err(anyhow!(
                "{flag} applies to --attack {}, not {kind}",
                kinds.join(" or ")
            ));
        }
    }
    for (flag, value) in [
        ("--steps", args.steps),
        ("--restarts", Some(args.restarts)),
        ("--target-classes", args.target_classes),
        ("--n-queries", args.n_queries),
        ("--eot-draws", args.eot_draws),
    ] {
        if value == Some(0) {
            let what = if matches!(flag, "--steps" | "--restarts") {
                "--steps and --restarts"
            } else {
                flag
            };
            return Err(anyhow!("{what} must be at least 1, got {flag} 0"));
        }
    }
    let loss = match args.loss.as_str() {
        "ce" | "cross-entropy" => AttackLoss::CrossEntropy,
        "margin" | "cw" => AttackLoss::Margin,
        "dlr" => AttackLoss::Dlr,
        other => {
            return Err(anyhow!(
                "unknown --loss `{other}`, expected ce, margin or dlr"
            ))
        }
    };
    match kind {
        "fast-gradient" | "fgsm" | "fgm" => {
            let mut attack = FastGradient::new(norm);
            attack.clip = !args.no_clip;
            Ok(Box::new(attack))
        }
        "pgd" => {
            let mut pgd = Pgd::new(norm);
            pgd.steps = args.steps.unwrap_or(pgd.steps);
            pgd.restarts = args.restarts;
            pgd.random_start = !args.no_random_start;
            pgd.clip = !args.no_clip;
            pgd.seed = args.seed;
            pgd.loss = loss;
            if let Some(step) = args.step_size {
                if !(step.is_finite() && step > 0.0) {
                    return Err(anyhow!("--step-size must be finite and > 0, got {step}"));
                }
                pgd.step_size = StepSize::Absolute(step);
            }
            Ok(Box::new(pgd))
        }
        "apgd" => {
            let defaults = Apgd::new(norm);
            Ok(Box::new(Apgd {
                steps: args.steps.unwrap_or(defaults.steps),
                restarts: args.restarts,
                loss,
                target_classes: args.target_classes,
                eot_draws: args.eot_draws.unwrap_or(defaults.eot_draws),
                random_start: !args.no_random_start,
                clip: !args.no_clip,
                seed: args.seed,
                ..defaults
            }))
        }
        "square" => {
            if !matches!(norm, Norm::Linf | Norm::L2) {
                return Err(anyhow!(
                    "--attack square supports --norm inf and 2, got {norm}"
                ));
            }
            let defaults = Square::new(norm);
            Ok(Box::new(Square {
                n_queries: args.n_queries.unwrap_or(defaults.n_queries),
                restarts: args.restarts,
                seed: args.seed,
                ..defaults
            }))
        }
        "auto" => {
            if args.eot_draws.is_some() && !args.rand {
                return Err(anyhow!("--eot-draws applies to --attack auto with --rand"));
            }
            let defaults = AutoAttack::new(norm);
            Ok(Box::new(
                AutoAttack {
                    version: if args.rand {
                        AutoVersion::Rand
                    } else {
                        AutoVersion::Standard
                    },
                    steps: args.steps.unwrap_or(defaults.steps),
                    target_classes: args.target_classes.unwrap_or(defaults.target_classes),
                    n_queries: args.n_queries.unwrap_or(defaults.n_queries),
                    eot_draws: args.eot_draws.unwrap_or(defaults.eot_draws),
                    seed: args.seed,
                    ..defaults
                }
                .ensemble(),
            ))
        }
        other => Err(anyhow!(
            "unknown --attack `{other}`, expected fast-gradient, pgd, apgd, square or auto"
        )),
    }
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
    noise.seed = args.attack.seed;
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
    let attack = build_attack(&args.attack)?;
    let mut loaded = load(&args.data)?;
    if args.randomized {
        loaded.model = Box::new(Randomized::new(loaded.model, args.attack.seed));
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
