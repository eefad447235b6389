//! Aggregation: reads the outputs of a plan's jobs (and nothing else) and writes
//! `results.json`, `robustness.csv`, `noise.csv`, `transfer.csv`, `training.csv`,
//! `timings.csv` (every wall time, so the other files are identical from run to run),
//! `per-example/<model>-<attack>.csv`, `models/<model>.safetensors` (+ `.json`),
//! `perturbations.json` and `logit_sweep.json` (from the visuals job), `predictions.csv`
//! (from the predict jobs),
//! `suite.resolved.json` and `plan.json` into the results folder. The layout is documented in
//! docs/results.md.

use std::path::{Path, PathBuf};

use gauntlet_attacks::{masking_checks, wilson_interval, MaskingRules};
use gauntlet_models::io::write_atomic;
use serde::Serialize;
use sha2::{Digest, Sha256};

use gauntlet_results::{
    Envelope, Lp, MinNormExample, NOISE_COLUMNS, OPTIMALITY_COLUMNS, ROBUSTNESS_COLUMNS,
    SECURITY_CURVE_COLUMNS, TRANSFER_COLUMNS,
};

use crate::record::{
    AttackOutput, CraftOutput, EvalSettings, JobFile, MaskingEntry, ModelResult, NoiseOutput,
    NoiseRow, PredictOutput, Results, RobustnessRow, ScoreOutput, SecurityCurveRow, TimingRow,
    TrainOutput, TrainingRow, SCHEMA_VERSION,
};
use crate::runner::{
    read_job, write_csv, write_json, write_table, DISTANCES_FILE, EXAMPLES_FILE, MODEL_FILE,
};
use crate::visuals::{VisualsOutput, LOGIT_SWEEP_FILE, PERTURBATIONS_FILE};
use crate::{Error, JobKind, Plan, Result, Suite, Task, CODE_VERSION};

/// One line of `plan.json`.
#[derive(Serialize)]
struct PlannedJob<'a> {
    id: &'a str,
    kind: JobKind,
    key: &'a str,
    dir: String,
    inputs: Vec<&'a str>,
    done: bool,
}

/// Writes the aggregated files; returns their paths.
pub fn aggregate(suite: &Suite, plan: &Plan, results_dir: &Path) -> Result<Vec<PathBuf>> {
    let jobs_dir = results_dir.join("jobs");
    let dir_of = |i: usize| jobs_dir.join(plan.jobs[i].dir_name());
    let done =
        |i: usize| crate::cache::is_finished(&dir_of(i), &plan.jobs[i].key, plan.jobs[i].kind);
    let mut written = Vec::new();

    let mut models = Vec::new();
    let mut training = Vec::new();
    let mut robustness = Vec::new();
    let mut noise = Vec::new();
    let mut transfer = Vec::new();
    let mut curves = Vec::new();
    // (model, attack, method, norm, per-example distances) of every minimum-norm job.
    let mut searches = Vec::new();
    let mut masking = Vec::new();
    let mut missing = Vec::new();
    let mut timings = Vec::new();
    let mut per_model_records = vec![Vec::new(); suite.models.len()];
    let mut visuals_done = false;
    // (test examples, correct) of each model's training job, and its predict job's output.
    let mut test_counts = vec![None; suite.models.len()];
    let mut predicted: Vec<(usize, PredictOutput)> = Vec::new();

    for (i, job) in plan.jobs.iter().enumerate() {
        if !done(i) {
            missing.push(job.id.clone());
            continue;
        }
        let dir = dir_of(i);
        let job_seconds = read_job::<serde::de::IgnoredAny>(&dir)?.seconds;
        timings.push(TimingRow::new(&job.id, "job", job_seconds));
        match job.task {
            Task::Train { model } => {
                let def = &suite.models[model];
                let file: JobFile<TrainOutput> = read_job(&dir)?;
                let out = file.output;
                let checkpoint = format!("models/{}.safetensors", def.name);
                let bytes = copy(&dir.join(MODEL_FILE), &results_dir.join(&checkpoint))?;
                let checkpoint_sha256 = format!("{:x}", Sha256::digest(&bytes));
                let spec_file = format!("models/{}.json", def.name);
                copy(&dir.join("model.json"), &results_dir.join(&spec_file))?;
                written.push(results_dir.join(&checkpoint));
                let correct = out.test.correct();
                test_counts[model] = Some((out.test.n, correct));
                let (test_ci_low, test_ci_high) = wilson_interval(correct, out.test.n);
                training.extend(
                    out.log
                        .epochs
                        .iter()
                        .map(|e| TrainingRow::new(&def.name, e)),
                );
                // From the log: files written before train_seconds counted resumed runs' epochs.
                timings.push(TimingRow::new(
                    &job.id,
                    "training",
                    out.log.training_seconds(),
                ));
                timings.extend(out.log.epochs.iter().map(|e| TimingRow {
                    examples_per_second: Some(e.examples_per_second),
                    ..TimingRow::new(&job.id, format!("epoch {}", e.epoch), e.seconds)
                }));
                models.push(ModelResult {
                    name: def.name.clone(),
                    seed: def.seed,
                    group: def.group.clone(),
                    arch: def.spec.arch.kind().to_string(),
                    spec: def.spec.clone(),
                    train: out.train.clone().unwrap_or_else(|| def.train.clone()),
                    n_params: out.n_params,
                    best_epoch: out.log.best_epoch,
                    epochs_run: out.log.epochs.len(),
                    stopped_by: out.log.stopped_by.clone(),
                    test_n: out.test.n,
                    test_error: out.test.error,
                    test_loss: out.test.loss,
                    test_ci_low,
                    test_ci_high,
                    checkpoint,
                    checkpoint_sha256,
                    job: job.key.clone(),
                    continues: def.continues.map(|s| suite.models[s].name.clone()),
                    source: def.external.as_ref().map(|e| e.path.display().to_string()),
                    source_sha256: def.external.as_ref().map(|e| e.sha256.clone()),
                });
            }
            Task::Attack { model, attack } => {
                let (def, attack_def) = (&suite.models[model], &suite.attacks[attack]);
                let file: JobFile<AttackOutput> = read_job(&dir)?;
                let spec =
                    serde_json::to_value(&attack_def.method).expect("attack specs serialize");
                for r in &file.output.records {
                    timings.push(TimingRow::new(&job.id, format!("eps {}", r.eps), r.seconds));
                    robustness.push(RobustnessRow {
                        model: def.name.clone(),
                        attack: attack_def.name.clone(),
                        record: r.record.clone(),
                        seed: def.seed,
                        spec: spec.clone(),
                        eps_written: attack_def.written(r.eps),
                    });
                }
                per_model_records[model].extend(file.output.records);
                let examples = results_dir
                    .join("per-example")
                    .join(format!("{}-{}.csv", def.name, attack_def.name));
                copy(&dir.join(EXAMPLES_FILE), &examples)?;
                if let Some(curve) = file.output.curve {
                    timings.push(TimingRow::new(&job.id, "search", curve.seconds));
                    let path = dir.join(DISTANCES_FILE);
                    let examples: Vec<MinNormExample> = read_table(&path)?;
                    searches.push((
                        model,
                        attack_def.name.clone(),
                        curve.method.clone(),
                        curve.norm,
                        examples,
                    ));
                    curves.push(SecurityCurveRow {
                        model: def.name.clone(),
                        attack: attack_def.name.clone(),
                        curve: curve.record,
                    });
                    let distances = results_dir
                        .join("per-example")
                        .join(format!("{}-{}-distances.csv", def.name, attack_def.name));
                    copy(&dir.join(DISTANCES_FILE), &distances)?;
                }
            }
            Task::Noise { model } => {
                let file: JobFile<NoiseOutput> = read_job(&dir)?;
                timings.extend(
                    file.output
                        .records
                        .iter()
                        .map(|r| TimingRow::new(&job.id, format!("sigma {}", r.sigma), r.seconds)),
                );
                noise.extend(file.output.records.iter().map(|r| NoiseRow {
                    model: suite.models[model].name.clone(),
                    record: r.record.clone(),
                }));
            }
            Task::Craft { .. } => {
                // Read to check it parses; its content reaches the results through the scores.
                let _: JobFile<CraftOutput> = read_job(&dir)?;
            }
            Task::Score { .. } => {
                let file: JobFile<ScoreOutput> = read_job(&dir)?;
                timings.push(TimingRow::new(&job.id, "scoring", file.output.seconds));
                transfer.push(file.output.record);
            }
            Task::Predict { model } => {
                let out = read_job::<PredictOutput>(&dir)?.output;
                // The same model on the same images: anything else is a damaged cache.
                if out.predictions.len() != out.labels.len() {
                    return Err(Error::invalid(
                        &dir,
                        "predictions",
                        format!(
                            "{} predictions for {} labels",
                            out.predictions.len(),
                            out.labels.len()
                        ),
                    ));
                }
                let counted = (out.labels.len(), out.labels.len() - out.errors());
                if let Some(expected) = test_counts[model] {
                    if counted != expected {
                        return Err(Error::invalid(
                            &dir,
                            "predictions",
                            format!(
                                "{} of {} test examples correct, but the training job of `{}` counted {} of {}",
                                counted.1, counted.0, suite.models[model].name, expected.1, expected.0
                            ),
                        ));
                    }
                }
                predicted.push((model, out));
            }
            Task::Visuals => {
                let _: JobFile<VisualsOutput> = read_job(&dir)?;
                for name in [PERTURBATIONS_FILE, LOGIT_SWEEP_FILE] {
                    copy(&dir.join(name), &results_dir.join(name))?;
                    written.push(results_dir.join(name));
                }
                visuals_done = true;
            }
        }
    }
    if !visuals_done {
        // Pictures of an earlier run's models would pass for these ones.
        for name in [PERTURBATIONS_FILE, LOGIT_SWEEP_FILE] {
            let path = results_dir.join(name);
            if path.is_file() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    for (model, records) in per_model_records.iter().enumerate() {
        let spec = &suite.models[model].spec;
        let rules = MaskingRules::new(spec.input_dim()).with_classes(spec.n_classes);
        masking.extend(
            masking_checks(records, &rules)
                .into_iter()
                .map(|flag| MaskingEntry {
                    model: suite.models[model].name.clone(),
                    flag,
                }),
        );
    }

    write_table(
        &results_dir.join("robustness.csv"),
        &robustness,
        ROBUSTNESS_COLUMNS,
    )?;
    write_table(&results_dir.join("noise.csv"), &noise, NOISE_COLUMNS)?;
    write_table(
        &results_dir.join("transfer.csv"),
        &transfer,
        TRANSFER_COLUMNS,
    )?;
    // Each model and norm with a minimum-norm attack: the envelope over them.
    let mut optimality = Vec::new();
    for (model, def) in suite.models.iter().enumerate() {
        let mut norms: Vec<Lp> = Vec::new();
        for (m, _, _, norm, _) in &searches {
            if *m == model && !norms.contains(norm) {
                norms.push(*norm);
            }
        }
        for norm in norms {
            let attacks: Vec<(String, String, &[MinNormExample])> = searches
                .iter()
                .filter(|(m, _, _, p, _)| *m == model && *p == norm)
                .map(|(_, attack, method, _, e)| (attack.clone(), method.clone(), e.as_slice()))
                .collect();
            let envelope = Envelope::new(def.name.clone(), norm, &attacks)
                .map_err(|message| Error::invalid(results_dir, "optimality", message))?;
            optimality.push(envelope);
        }
    }
    let rows: Vec<_> = optimality.iter().flat_map(Envelope::rows).collect();
    if !rows.is_empty() {
        let path = results_dir.join("optimality.csv");
        write_table(&path, &rows, OPTIMALITY_COLUMNS)?;
        written.push(path);
    }
    let points: Vec<_> = curves
        .iter()
        .flat_map(SecurityCurveRow::point_rows)
        .collect();
    if !points.is_empty() {
        let path = results_dir.join("security-curves.csv");
        write_table(&path, &points, SECURITY_CURVE_COLUMNS)?;
        written.push(path);
    }
    let path = results_dir.join("predictions.csv");
    if suite.predictions {
        write_predictions(&path, suite, &predicted)?;
        written.push(path);
    } else if path.is_file() {
        // An earlier run's predictions would pass for these models'.
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    write_csv(&results_dir.join("training.csv"), &training)?;
    write_csv(&results_dir.join("timings.csv"), &timings)?;
    for name in [
        "robustness.csv",
        "noise.csv",
        "transfer.csv",
        "training.csv",
        "timings.csv",
    ] {
        written.push(results_dir.join(name));
    }
    let report = crate::references::section(&suite.report, &models, &robustness, &transfer, &noise);
    let results = Results {
        schema_version: SCHEMA_VERSION,
        suite: suite.name.clone(),
        gauntlet_version: env!("CARGO_PKG_VERSION").to_string(),
        code_version: CODE_VERSION.to_string(),
        seed: suite.seed,
        data: suite.data_identity(),
        data_files: suite.data_files.clone(),
        eval: EvalSettings {
            test_limit: suite.eval.test_limit,
            batch_size: suite.eval.batch_size,
        },
        models,
        robustness,
        noise,
        transfer,
        security_curves: curves,
        optimality,
        masking,
        missing,
        report,
    };
    let planned: Vec<PlannedJob<'_>> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, job)| PlannedJob {
            id: &job.id,
            kind: job.kind,
            key: &job.key,
            dir: format!("jobs/{}", job.dir_name()),
            inputs: job
                .inputs
                .iter()
                .map(|&k| plan.jobs[k].id.as_str())
                .collect(),
            done: done(i),
        })
        .collect();
    for (name, value) in [
        ("results.json", serde_json::to_value(&results)),
        ("suite.resolved.json", serde_json::to_value(suite)),
        ("plan.json", serde_json::to_value(&planned)),
    ] {
        let path = results_dir.join(name);
        let value = value.map_err(|error| Error::Json {
            path: path.clone(),
            error,
        })?;
        write_json(&path, &value)?;
        written.push(path);
    }
    Ok(written)
}

/// `predictions.csv`: `index`, `label` and one column per model (in suite order) with its
/// class for each test example.
fn write_predictions(
    path: &Path,
    suite: &Suite,
    predicted: &[(usize, PredictOutput)],
) -> Result<()> {
    let fail = |e: csv::Error| Error::invalid(path, "file", format!("cannot write: {e}"));
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["index".to_string(), "label".to_string()];
    header.extend(predicted.iter().map(|(m, _)| suite.models[*m].name.clone()));
    writer.write_record(&header).map_err(fail)?;
    let labels = predicted
        .first()
        .map_or(&[][..], |(_, o)| o.labels.as_slice());
    for (i, label) in labels.iter().enumerate() {
        let mut row = vec![i.to_string(), label.to_string()];
        for (m, out) in predicted {
            if out.labels.get(i) != Some(label) {
                return Err(Error::invalid(
                    path,
                    "labels",
                    format!(
                        "the predict jobs of `{}` and `{}` saw different test labels",
                        suite.models[predicted[0].0].name, suite.models[*m].name
                    ),
                ));
            }
            row.push(out.predictions[i].to_string());
        }
        writer.write_record(&row).map_err(fail)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::invalid(path, "file", format!("cannot write: {e}")))?;
    write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

/// The rows of a CSV file a job wrote.
fn read_table<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| Error::invalid(path, "file", format!("cannot read this CSV file: {e}")))?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(|e| Error::invalid(path, "row", format!("malformed row: {e}")))
}

/// Copies `from` to `to` atomically; returns the bytes copied.
fn copy(from: &Path, to: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    write_atomic(to, &bytes).map_err(|e| Error::io(to, e))?;
    Ok(bytes)
}
