//! `gauntlet attack`: robust accuracy of a checkpoint under an attack at several ε, with
//! per-example outcomes and the gradient-masking checks.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use gauntlet_attacks::{
    evaluate_attack, evaluate_attack_keeping, evaluate_min_norm, masking_checks, unbounded_eps,
    Attack, AttackConfig, AttackKind, AttackRecord, ExampleOutcome, FastGradient, MaskingRules,
    RandomNoise, Randomized, SecurityCurve, Timed,
};
use gauntlet_models::io::write_atomic;
use gauntlet_models::ModelSpec;
use gauntlet_suite::record::{RobustnessRow, SecurityCurveRow};
use serde::Serialize;

use crate::args::{AttackArgs, AttackFlags};
use crate::commands::eval::{load, Loaded};
use crate::commands::single::{self, SingleResults};
use crate::output::{write_csv, write_json};

/// Examples the masking checks attack at an unbounded ε (a subset keeps them cheap).
const CHECK_SUBSET: usize = 500;

/// The attack the flags describe, checked against `model` (its classes and input shape).
pub fn build_attack(flags: &AttackFlags, model: &ModelSpec) -> Result<AttackConfig> {
    flags
        .options()
        // --seed seeds the checks' noise baseline too: the default of every method, so never
        // refused as a key that does not apply.
        .resolve(flags.seed, model.n_classes, &model.input)
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

fn print_records(title: &str, records: &[Timed<AttackRecord>]) {
    println!("{title}");
    println!(
        "{:>8}  {:>9}  {:>9}  {:>19}  {:>10}  {:>8}",
        "eps", "clean", "robust", "95% interval", "max |d|", "seconds"
    );
    for r in records {
        println!(
            "{:>8}  {:>8.2}%  {:>8.2}%  [{:>6.2}%, {:>6.2}%]  {:>10.4}  {:>8.2}",
            r.eps,
            100.0 * r.clean_accuracy,
            100.0 * r.adversarial_accuracy,
            100.0 * r.ci_low,
            100.0 * r.ci_high,
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

fn print_curve(curve: &Timed<SecurityCurve>) {
    let median = match curve.median_distance {
        Some(d) => format!("{d:.4}"),
        None => "not reached (most examples not broken)".into(),
    };
    let passes = curve
        .queries
        .map(|q| {
            format!(
                ", {:.0} forward and {:.0} backward passes per example",
                q.forward, q.backward
            )
        })
        .unwrap_or_default();
    println!(
        "{}: broke {} of the {} examples correct clean (of {}) in {:.2} s{passes}; median minimal {} distance {median}",
        curve.method, curve.found, curve.clean_correct, curve.n, curve.seconds, curve.norm
    );
    // The curve at ten evenly spaced quantiles of the distances found.
    let points = &curve.points;
    if points.len() > 1 {
        println!("{:>10}  {:>9}  {:>19}", "eps", "robust", "95% interval");
        let shown = 10.min(points.len());
        for k in 0..shown {
            let p = &points[k * (points.len() - 1) / (shown - 1).max(1)];
            println!(
                "{:>10.4}  {:>8.2}%  [{:>6.2}%, {:>6.2}%]",
                p.eps,
                100.0 * p.robust_accuracy,
                100.0 * p.ci_low,
                100.0 * p.ci_high
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
    eps: &[f64],
) -> Result<Vec<Timed<AttackRecord>>> {
    let (model, test, batch) = (
        loaded.model.as_ref(),
        &loaded.test,
        args.data.test.batch_size,
    );
    let norm = attack.norm();
    let mut records = Vec::new();
    if eps.is_empty() {
        return Ok(records);
    }
    let iterative = matches!(attack.kind(), AttackKind::Iterative | AttackKind::Ensemble);
    if attack.kind() == AttackKind::Iterative {
        let mut single = FastGradient::new(norm);
        single.clip = !args.attack.no_clip;
        records.extend(evaluate_attack(
            model,
            &single,
            &test.images,
            &test.labels,
            eps,
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
        eps,
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
    let eps: Vec<f64> = args.eps.iter().map(|b| b.value).collect();
    // A minimum-norm attack gives every ε from one search: its budgets are optional.
    if !(eps.is_empty() && args.attack.attack.is_min_norm() && args.attack.targeted.is_none()) {
        super::check_budgets("--eps", &eps).map_err(|e| {
            if eps.is_empty() {
                anyhow!("{e} (only the untargeted minimum-norm attacks fmn, ddn, deepfool and cw run without)")
            } else {
                e
            }
        })?;
    }
    // Before any work: a wrong name would otherwise be found after the whole attack.
    if let Some(path) = &args.save_adversarials {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(anyhow!(
                "--save-adversarials {}: expected a .safetensors file",
                path.display()
            ));
        }
    }
    let mut loaded = load(&args.data)?;
    let config = build_attack(&args.attack, loaded.model.spec())?;
    let attack = config.build();
    let model_path = &args.data.model;
    let batch = args.data.test.batch_size;
    // The clean pass first: a broken model stops here, before any attack runs.
    let model = single::model_result(
        model_path,
        loaded.model.as_ref(),
        &loaded.test,
        batch,
        args.attack.seed,
    )?;
    if args.randomized {
        loaded.model = Box::new(Randomized::new(loaded.model, args.attack.seed));
    }
    let keep = args.save_adversarials.is_some();
    let (records, examples, adversarials, min_norm) = match attack.min_norm() {
        Some(search) => {
            let run = evaluate_min_norm(
                loaded.model.as_ref(),
                search,
                &loaded.test.images,
                &loaded.test.labels,
                &eps,
                batch,
                keep,
            )
            .with_context(|| format!("attacking {}", model_path.display()))?;
            let curve = (run.curve, run.examples);
            (run.records, run.outcomes, run.adversarials, Some(curve))
        }
        None => {
            let (records, examples, adversarials) = evaluate_attack_keeping(
                loaded.model.as_ref(),
                attack.as_ref(),
                &loaded.test.images,
                &loaded.test.labels,
                &eps,
                batch,
                keep,
            )
            .with_context(|| format!("attacking {}", model_path.display()))?;
            (records, examples, adversarials, None)
        }
    };
    let say = !args.json;
    if say {
        print_records(
            &format!(
                "{} on {} ({} test images)",
                attack.name(),
                model_path.display(),
                loaded.test.len()
            ),
            &records,
        );
    }
    let out = &loaded.out;
    let stem = attack.name();
    let per_example = out
        .join("per-example")
        .join(format!("{}-{stem}.csv", model.name));
    write_csv(&per_example, &examples)?;
    if let Some((curve, distances)) = &min_norm {
        if say {
            print_curve(curve);
        }
        write_csv(
            &out.join("per-example")
                .join(format!("{}-{stem}-distances.csv", model.name)),
            distances,
        )?;
    }
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
        if say {
            println!("examples broken by each member (after the members before it):");
            for m in &members {
                println!("  eps {:>8}  {:<20} {}", m.eps, m.member, m.broken);
            }
        }
        write_csv(&out.join("members.csv"), &members)?;
    }

    let mut flags = Vec::new();
    if !args.no_checks {
        let mut all = records.to_vec();
        let extra = masking_records(&args, attack.as_ref(), &loaded, &eps)?;
        all.extend(extra.iter().cloned());
        let spec = loaded.model.spec();
        let rules = MaskingRules::new(spec.input_dim()).with_classes(spec.n_classes);
        flags = masking_checks(&all, &rules);
        if say {
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
        }
        // The extra runs behind the checks (single step, noise, unbounded ε).
        write_json(&out.join("masking-runs.json"), &extra)?;
    }
    let spec = serde_json::to_value(&config)?;
    let robustness = records
        .iter()
        .map(|r| RobustnessRow {
            model: model.name.clone(),
            attack: stem.clone(),
            record: r.record.clone(),
            seed: model.seed,
            spec: spec.clone(),
            eps_written: args
                .eps
                .iter()
                .find(|b| b.value == r.eps)
                .and_then(|b| b.written.clone()),
        })
        .collect();
    let security_curves = min_norm
        .iter()
        .map(|(curve, _)| SecurityCurveRow {
            model: model.name.clone(),
            attack: stem.clone(),
            curve: curve.record.clone(),
        })
        .collect();
    let single = SingleResults {
        name: format!("attack-{stem}"),
        seed: args.attack.seed,
        models: vec![model],
        robustness,
        noise: vec![],
        transfer: vec![],
        security_curves,
        masking: flags,
    };
    let results = single.results(&loaded.data, batch)?;
    single.write(out, &results)?;
    if let Some(path) = &args.save_adversarials {
        save_adversarials(path, &loaded, &eps, &adversarials, &examples)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "wrote {0}/results.json, {0}/robustness.csv and {1}",
            out.display(),
            per_example.display()
        );
        if min_norm.is_some() {
            println!(
                "wrote {}/security-curves.csv and the per-example distances",
                out.display()
            );
        }
        if let Some(path) = &args.save_adversarials {
            println!("wrote the adversarial images to {}", path.display());
        }
    }
    Ok(())
}

/// The adversarial images in one safetensors file, for another framework to re-check:
/// `x_adv` `[n_eps, n, C, H, W]` f32, `x` (the clean images) `[n, C, H, W]`, `eps` `[n_eps]`
/// f64, `index` `[n]` (positions in the test split), `label` `[n]` and `adv_pred`
/// `[n_eps, n]` (this model's predictions, as the per-example file records them), i64.
fn save_adversarials(
    path: &Path,
    loaded: &Loaded,
    eps: &[f64],
    adversarials: &[Tensor],
    examples: &[ExampleOutcome],
) -> Result<()> {
    let cpu = Device::Cpu;
    let n = loaded.test.len();
    let ints = |values: Vec<i64>, shape: &[usize]| Tensor::from_vec(values, shape, &cpu);
    let tensors: Vec<(&str, Tensor)> = vec![
        ("x_adv", Tensor::stack(adversarials, 0)?.to_device(&cpu)?),
        ("x", loaded.test.images.to_device(&cpu)?),
        ("eps", Tensor::new(eps, &cpu)?),
        ("index", ints((0..n as i64).collect(), &[n])?),
        (
            "label",
            ints(examples[..n].iter().map(|e| e.label as i64).collect(), &[n])?,
        ),
        (
            "adv_pred",
            ints(
                examples.iter().map(|e| e.adv_pred as i64).collect(),
                &[eps.len(), n],
            )?,
        ),
    ];
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| anyhow!("serialising {}: {e}", path.display()))?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
