//! Whole runs of the tiny suite: caching, reruns after edits, result files, sharding.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gauntlet_suite::record::{NoiseRow, Results, RobustnessRow, TrainingRow, TransferRow};
use gauntlet_suite::{merge_suite, run_suite, JobStatus, RunOptions, RunSummary, Stage};

use crate::{write_suite, TINY, TINY_JOBS};

fn options(root: &Path) -> RunOptions {
    RunOptions {
        results_root: root.to_path_buf(),
        ..RunOptions::default()
    }
}

fn statuses(summary: &RunSummary) -> BTreeSet<JobStatus> {
    summary.jobs.iter().map(|j| j.status).collect()
}

pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `results.json` without wall times, which differ between runs.
fn results_without_times(dir: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, _| !(k.contains("seconds")));
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(dir.join("results.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    strip(&mut value);
    value
}

#[test]
fn a_run_writes_every_result_and_a_rerun_redoes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "tiny.toml", TINY);
    let root = dir.path().join("results");

    let dry = run_suite(
        &path,
        &RunOptions {
            dry_run: true,
            ..options(&root)
        },
    )
    .unwrap();
    assert_eq!(dry.count(JobStatus::Pending), TINY_JOBS);
    assert!(!root.exists(), "a dry run writes nothing");

    let first = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(first.executed(), TINY_JOBS, "{:?}", first.jobs);
    assert!(first.is_complete());
    let out = root.join("tiny");
    assert_eq!(first.results_dir, out);

    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        (results.schema_version, results.suite.as_str()),
        (1, "tiny")
    );
    assert_eq!(results.models.len(), 2);
    assert!(results.missing.is_empty());
    // 2 models × (2 + 1 + 1) ε; 2 models × 2 σ; 2 sources × 2 targets.
    assert_eq!(results.robustness.len(), 8);
    assert_eq!(results.noise.len(), 4);
    assert_eq!(results.transfer.len(), 4);
    for m in &results.models {
        assert_eq!(m.test_n, 100);
        assert!(m.test_error < 0.9, "{m:?}");
        assert!(out.join(&m.checkpoint).is_file());
    }
    for e in &results.robustness {
        assert_eq!(e.n, 100);
        assert!(e.ci_low <= e.adversarial_accuracy && e.adversarial_accuracy <= e.ci_high);
        assert!(e.max_perturbation <= e.eps * (1.0 + 1e-5), "{:?}", e);
    }
    // White-box transfer (source = target) equals the white-box fgsm record at that ε.
    for t in results.transfer.iter().filter(|t| t.source == t.target) {
        let white = results
            .robustness
            .iter()
            .find(|e| e.model == t.source && e.attack == "fgsm" && e.eps == t.eps)
            .unwrap();
        assert_eq!(t.adversarial_correct, white.adversarial_correct, "{t:?}");
    }

    let robustness: Vec<RobustnessRow> = read_csv(&out.join("robustness.csv"));
    assert_eq!(
        robustness,
        results
            .robustness
            .iter()
            // The CSV has the scalar columns only (the resolved spec and the queries are
            // results.json's).
            .map(|e| {
                let mut row = RobustnessRow {
                    spec: serde_json::Value::Null,
                    ..e.clone()
                };
                assert!(row.record.queries.is_some(), "{e:?}");
                row.record.queries = None;
                row
            })
            .collect::<Vec<_>>()
    );
    let noise: Vec<NoiseRow> = read_csv(&out.join("noise.csv"));
    assert_eq!(noise.len(), 4);
    let transfer: Vec<TransferRow> = read_csv(&out.join("transfer.csv"));
    assert_eq!(transfer.len(), 4);
    let training: Vec<TrainingRow> = read_csv(&out.join("training.csv"));
    assert_eq!(
        training
            .iter()
            .map(|r| r.model.as_str())
            .collect::<Vec<_>>(),
        ["base", "fgsm-trained"]
    );
    assert!(out.join("per-example/base-pgd.csv").is_file());
    assert!(out.join("models/fgsm-trained.json").is_file());

    let again = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(again.executed(), 0);
    assert_eq!(again.count(JobStatus::Cached), TINY_JOBS);

    // Editing one attack reruns that attack's jobs only.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("eps = [1.0]", "eps = [1.0, 2.0]"),
    )
    .unwrap();
    let edited = run_suite(&path, &options(&root)).unwrap();
    let ran: Vec<&str> = edited
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Ran)
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(ran, ["attack/base/fgm-l2", "attack/fgsm-trained/fgm-l2"]);
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.robustness.len(), 10);

    // A job killed before writing its job.json is redone, and nothing else.
    let victim = edited.jobs.iter().find(|j| j.id == "noise/base").unwrap();
    std::fs::remove_file(victim.dir.join("job.json")).unwrap();
    let resumed = run_suite(&path, &options(&root)).unwrap();
    let ran: Vec<&str> = resumed
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Ran)
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(ran, ["noise/base"]);
}

#[test]
fn shards_then_merge_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "tiny.toml", TINY);
    let whole_root = dir.path().join("whole");
    let whole = run_suite(
        &path,
        &RunOptions {
            jobs: 2,
            ..options(&whole_root)
        },
    )
    .unwrap();
    assert_eq!(whole.executed(), TINY_JOBS);

    let sharded_root: PathBuf = dir.path().join("sharded");
    let mut ran = 0;
    // One pass per stage, each shard in turn, as a job array would run them.
    for stage in Stage::ALL {
        for index in 0..2 {
            let opts = RunOptions {
                shard: Some((index, 2)),
                stage: Some(stage),
                ..options(&sharded_root)
            };
            let summary = run_suite(&path, &opts).unwrap();
            assert!(
                !statuses(&summary).contains(&JobStatus::Blocked),
                "{:?}",
                summary.jobs
            );
            assert!(summary.written.is_empty(), "a shard does not aggregate");
            ran += summary.executed();
        }
    }
    assert_eq!(ran, TINY_JOBS, "every job ran in exactly one shard");
    let merged = merge_suite(&path, &options(&sharded_root)).unwrap();
    assert!(merged.is_complete());
    assert_eq!(
        results_without_times(&whole_root.join("tiny")),
        results_without_times(&sharded_root.join("tiny"))
    );
    for name in ["perturbations.json", "logit_sweep.json"] {
        let read = |root: &Path| std::fs::read(root.join("tiny").join(name)).unwrap();
        assert_eq!(read(&whole_root), read(&sharded_root), "{name}");
    }
    // Without stages, a shard runs what it can and reports the rest as blocked.
    let eager_root = dir.path().join("eager");
    let first = run_suite(
        &path,
        &RunOptions {
            shard: Some((0, 2)),
            ..options(&eager_root)
        },
    )
    .unwrap();
    let second = run_suite(
        &path,
        &RunOptions {
            shard: Some((1, 2)),
            ..options(&eager_root)
        },
    )
    .unwrap();
    // The training jobs ran in whichever shard owns them (both may belong to one).
    assert!(first.executed() + second.executed() >= 2);
    let blocked = first.count(JobStatus::Blocked) + second.count(JobStatus::Blocked);
    let third = run_suite(&path, &options(&eager_root)).unwrap();
    assert!(third.is_complete());
    assert_eq!(
        first.executed() + second.executed() + third.executed(),
        TINY_JOBS
    );
    assert!(third.executed() <= blocked);
}

#[test]
fn a_bad_shard_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "tiny.toml", TINY);
    let err = run_suite(
        &path,
        &RunOptions {
            shard: Some((2, 2)),
            ..options(dir.path())
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("2/2"), "{err}");
}

#[test]
fn the_committed_suites_parse() {
    let suites = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../suites");
    let quickstart = suites.join("quickstart.toml");
    let (suite, plan) = gauntlet_suite::plan_suite(&quickstart, Some(&crate::mnist_dir())).unwrap();
    assert_eq!(suite.models.len(), 3);
    assert!(plan.jobs.len() >= 3 + 3 * 3);
}

#[test]
fn a_gradient_penalty_model_trains() {
    // Form A needs CANDLE_GRAD_DO_NOT_DETACH before the thread's first backward pass; the
    // runner sets it, and the trainer refuses to run without it.
    let text = TINY
        .replace(
            "regularizer = { kind = \"lp\", p = \"inf\", eps = 0.1, alpha = 0.5 }",
            "regularizer = { kind = \"gradient-penalty\", p = 2, sigma = 0.1 }",
        )
        .replace("name = \"tiny\"", "name = \"penalty\"");
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "penalty.toml", &text);
    let opts = RunOptions {
        stage: Some(Stage::Train),
        ..options(dir.path())
    };
    let summary = std::thread::spawn(move || run_suite(&path, &opts))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(summary.executed(), 2, "{:?}", summary.jobs);
}

/// Two models of one recipe and seed have one job key, so one job folder: run side by side,
/// the second must find the first's output, not race it for the same training state.
#[test]
fn two_models_of_one_recipe_share_their_jobs_instead_of_racing() {
    let dir = tempfile::tempdir().unwrap();
    let twin = TINY.replace(
        "[[model]]\nname = \"fgsm-trained\"\nlike = \"base\"\nregularizer = { kind = \"lp\", p = \"inf\", eps = 0.1, alpha = 0.5 }",
        "[[model]]\nname = \"twin\"\nlike = \"base\"",
    );
    assert_ne!(twin, TINY);
    let path = write_suite(dir.path(), "tiny.toml", &twin);
    let summary = run_suite(
        &path,
        &RunOptions {
            jobs: 2,
            ..options(&dir.path().join("results"))
        },
    )
    .unwrap();
    assert!(summary.is_complete());
    let rows: Vec<RobustnessRow> = read_csv(&dir.path().join("results/tiny/robustness.csv"));
    let of = |m: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.model == m)
            .map(|r| r.adversarial_accuracy)
            .collect()
    };
    assert!(!of("base").is_empty());
    assert_eq!(of("base"), of("twin"));
}

/// `seeds` makes one model per seed, the same job as an entry with that `seed`; an attack's
/// `models` naming the entry attacks every replicate; `[eval] predictions` writes every
/// model's class per test example, agreeing with its test error.
#[test]
fn seeds_make_replicates_and_predictions_match_the_test_error() {
    let text = r#"
name = "seeds"
seed = 3
data = { dataset = "mnist", dir = "{data}", train-limit = 300, valid-size = 1000, valid-limit = 100, test-limit = 100 }

[[model]]
name = "base"
seeds = [1, 2]
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 1, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[model]]
name = "single"
like = "base"
seed = 1

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]
models = ["base"]

[visuals]
enabled = false

[eval]
batch-size = 40
predictions = true
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "seeds.toml", text);
    let root = dir.path().join("results");
    let summary = run_suite(&path, &options(&root)).unwrap();
    let ids: BTreeSet<&str> = summary.jobs.iter().map(|j| j.id.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "train/base-s1",
        "train/base-s2",
        "train/single",
        "attack/base-s1/fgsm",
        "attack/base-s2/fgsm",
        "predict/base-s1",
        "predict/base-s2",
        "predict/single",
    ]
    .into();
    assert_eq!(ids, expected);
    let key = |id: &str| {
        summary
            .jobs
            .iter()
            .find(|j| j.id == id)
            .unwrap()
            .key
            .clone()
    };
    assert_eq!(key("train/base-s1"), key("train/single"));
    assert_ne!(key("train/base-s1"), key("train/base-s2"));

    let out = root.join("seeds");
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let groups: Vec<(&str, u64, Option<&str>)> = results
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.seed, m.group.as_deref()))
        .collect();
    assert_eq!(
        groups,
        [
            ("base-s1", 1, Some("base")),
            ("base-s2", 2, Some("base")),
            ("single", 1, None)
        ]
    );
    let mut reader = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["index", "label", "base-s1", "base-s2", "single"]);
    let rows: Vec<Vec<u32>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 100);
    for (c, m) in results.models.iter().enumerate() {
        let wrong = rows.iter().filter(|r| r[1] != r[2 + c]).count();
        assert!(
            (wrong as f64 / 100.0 - m.test_error).abs() < 1e-12,
            "{}: {wrong} wrong, test error {}",
            m.name,
            m.test_error
        );
    }
    assert_eq!(
        rows.iter().map(|r| r[0] as usize).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );

    let again = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(again.executed(), 0);

    // Without `predictions` the other jobs stay cached and the stale file goes.
    let path = write_suite(
        dir.path(),
        "seeds.toml",
        &text.replace("predictions = true", ""),
    );
    let without = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(without.executed(), 0);
    assert!(!out.join("predictions.csv").exists());
}

#[test]
fn continue_runs_a_second_stage_on_train_and_valid_from_the_kept_epoch() {
    let text = r#"
name = "stages"
data = { dataset = "mnist", dir = "{data}", train-limit = 300, valid-size = 1000, valid-limit = 100, test-limit = 100 }

[[model]]
name = "first"
seeds = [1, 2]
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 4, batch-size = 50, early-stopping = { patience = 2 }, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5, final-momentum = 0.7, momentum-saturate = 3, lr-decay = 1.01 } }

[[model]]
name = "second"
continue = "first"
train = { epochs = 3 }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]
models = ["second"]

[visuals]
enabled = false
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "stages.toml", text);
    let root = dir.path().join("results");
    let summary = run_suite(&path, &options(&root)).unwrap();
    let ids: Vec<&str> = summary.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "train/first-s1",
            "train/first-s2",
            "continue/second-s1",
            "continue/second-s2",
            "attack/second-s1/fgsm",
            "attack/second-s2/fgsm"
        ]
    );

    let out = root.join("stages");
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let training: Vec<TrainingRow> = read_csv(&out.join("training.csv"));
    let epochs =
        |name: &str| -> Vec<&TrainingRow> { training.iter().filter(|r| r.model == name).collect() };
    let model = |name: &str| results.models.iter().find(|m| m.name == name).unwrap();
    for seed in [1, 2] {
        let (first, second) = (format!("first-s{seed}"), format!("second-s{seed}"));
        let (m1, m2) = (model(&first), model(&second));
        assert_eq!(m2.continues.as_deref(), Some(first.as_str()));
        assert_eq!(m1.continues, None);
        assert_eq!(m2.seed, seed);
        let kept = epochs(&first)[m1.best_epoch - 1];
        assert_eq!(kept.epoch, m1.best_epoch);
        // The kept epoch's rate and momentum, and its objective as the target.
        match &m2.train.optimizer {
            gauntlet_train::OptimizerConfig::Sgd {
                lr,
                momentum,
                final_momentum,
                lr_decay,
                ..
            } => {
                assert_eq!(*lr, kept.lr);
                assert_eq!(Some(*momentum), kept.momentum);
                assert_eq!(*final_momentum, kept.momentum);
                assert_eq!(*lr_decay, 1.01);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m2.train.stop_at_train_loss, Some(kept.train_loss));
        assert_eq!(m2.train.early_stopping, None);
        assert_eq!(m2.train.epochs, 3);
        let rows = epochs(&second);
        assert!(!rows.is_empty() && rows.len() <= 3, "{}", rows.len());
        // One epoch of (300 + 100) / 50 = 8 steps from the kept rate: both splits are trained on.
        let steps = (kept.lr / rows[0].lr).ln() / 1.01f64.ln();
        assert!(
            (steps - 8.0).abs() < 1e-6,
            "{steps} steps in the first epoch"
        );
        assert!(rows.iter().all(|r| r.momentum == kept.momentum));
        assert!(rows.iter().all(|r| r.valid_error.is_none()));
        // It stops on the first stage's objective, at the first epoch that reaches it.
        assert_eq!(m2.stopped_by, "train-loss-target", "{rows:?}");
        assert!(rows.last().unwrap().train_loss <= kept.train_loss);
        assert!(rows[..rows.len() - 1]
            .iter()
            .all(|r| r.train_loss > kept.train_loss));
        assert_eq!(m2.best_epoch, rows.len());
        assert_ne!(m1.checkpoint_sha256, m2.checkpoint_sha256);
    }
    assert_eq!(run_suite(&path, &options(&root)).unwrap().executed(), 0);

    // The first stage's recipe is part of the second's key through its input.
    let changed = write_suite(
        dir.path(),
        "stages.toml",
        &text.replace("lr = 0.1,", "lr = 0.05,"),
    );
    let rerun = run_suite(&changed, &options(&root)).unwrap();
    assert_eq!(rerun.executed(), 6);
}

/// Records the order in which jobs start and finish.
#[derive(Default)]
struct Events(std::sync::Mutex<Vec<String>>);

impl gauntlet_suite::SuiteObserver for Events {
    fn job_started(&self, job: &gauntlet_suite::Job) {
        self.0.lock().unwrap().push(format!("start {}", job.id));
    }
    fn job_finished(&self, job: &gauntlet_suite::Job, _seconds: f64) {
        self.0.lock().unwrap().push(format!("end {}", job.id));
    }
}

#[test]
fn a_second_stage_starts_when_its_own_first_stage_ends_not_when_every_first_stage_does() {
    // One short first stage beside one 200 times longer: with two workers, the short model's
    // second stage and attack run while the long one still trains.
    let text = r#"
name = "dataflow"
data = { dataset = "mnist", dir = "{data}", train-limit = 300, valid-size = 1000, valid-limit = 100, test-limit = 100 }

[[model]]
name = "short"
arch = { kind = "maxout-mlp", units = [8], pieces = 2 }
train = { epochs = 1, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[model]]
name = "long"
like = "short"
train = { epochs = 200 }

[[model]]
name = "short2"
continue = "short"
train = { epochs = 1 }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]
models = ["short2"]

[visuals]
enabled = false
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "dataflow.toml", text);
    let root = dir.path().join("results");
    let events = Events::default();
    let summary = gauntlet_suite::run_suite_with(
        &path,
        &RunOptions {
            jobs: 2,
            ..options(&root)
        },
        &events,
    )
    .unwrap();
    assert!(summary.is_complete());
    assert_eq!(summary.executed(), 4);
    let events = events.0.into_inner().unwrap();
    let at = |event: &str| {
        events
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no `{event}` in {events:?}"))
    };
    assert!(
        at("end train/short") < at("start continue/short2"),
        "{events:?}"
    );
    assert!(
        at("end continue/short2") < at("start attack/short2/fgsm"),
        "{events:?}"
    );
    assert!(
        at("end attack/short2/fgsm") < at("end train/long"),
        "{events:?}"
    );

    // One worker keeps plan order: every training job before the second stage.
    let root1 = dir.path().join("results-1");
    let events1 = Events::default();
    gauntlet_suite::run_suite_with(&path, &options(&root1), &events1).unwrap();
    let events1 = events1.0.into_inner().unwrap();
    let starts: Vec<&str> = events1
        .iter()
        .filter_map(|e| e.strip_prefix("start "))
        .collect();
    assert_eq!(
        starts,
        [
            "train/short",
            "train/long",
            "continue/short2",
            "attack/short2/fgsm"
        ]
    );
    // Scheduling changes no output.
    assert_eq!(
        results_without_times(&root.join("dataflow")),
        results_without_times(&root1.join("dataflow"))
    );
}
