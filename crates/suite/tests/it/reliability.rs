//! Runs that cannot silently lie: the same suite gives byte-identical results, a damaged job
//! folder is redone instead of read, an unwritable results folder is refused before any
//! work, and every out-of-range setting is an error naming its field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gauntlet_suite::reproducible::{first_difference, reproducible_files};
use gauntlet_suite::{run_suite, JobStatus, RunOptions, RunSummary};

use crate::errors::error_of;
use crate::{write_suite, TINY, TINY_JOBS};

/// One model, one attack, noise: a few seconds.
pub const MINI: &str = r#"
name = "mini"
seed = 5
data = { dataset = "mnist", dir = "{data}", train-limit = 300, valid-size = 1000, valid-limit = 100, test-limit = 60 }

[[model]]
name = "m"
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 2, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]

[noise]
sigmas = [0.2]

[eval]
batch-size = 30
"#;

fn options(root: &Path) -> RunOptions {
    RunOptions {
        results_root: root.to_path_buf(),
        ..RunOptions::default()
    }
}

fn ran(summary: &RunSummary) -> Vec<&str> {
    summary
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Ran)
        .map(|j| j.id.as_str())
        .collect()
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    reproducible_files(dir).unwrap()
}

/// Asserts two results folders hold the same files with the same bytes, timings aside.
fn assert_same_files(a: &Path, b: &Path) {
    if let Some(difference) = first_difference(a, b).unwrap() {
        panic!("{difference}");
    }
}

#[test]
fn the_same_suite_and_seeds_give_byte_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "tiny.toml", TINY);
    let first = run_suite(&path, &options(&dir.path().join("a"))).unwrap();
    // Two worker threads: the order jobs run in must not matter either.
    let second = run_suite(
        &path,
        &RunOptions {
            jobs: 2,
            ..options(&dir.path().join("b"))
        },
    )
    .unwrap();
    assert_eq!(
        (first.executed(), second.executed()),
        (TINY_JOBS, TINY_JOBS)
    );
    let (a, b) = (dir.path().join("a/tiny"), dir.path().join("b/tiny"));
    let results = files(&a);
    for name in [
        "results.json",
        "robustness.csv",
        "noise.csv",
        "transfer.csv",
        "training.csv",
        "models/base.safetensors",
    ] {
        assert!(results.contains_key(Path::new(name)), "{name} written");
    }
    assert_same_files(&a, &b);
    // The wall times are all in timings.csv: one row per job at least.
    let timings = std::fs::read_to_string(a.join("timings.csv")).unwrap();
    assert!(timings.starts_with("job,part,seconds,examples_per_second\n"));
    assert!(timings.lines().filter(|l| l.contains(",job,")).count() == TINY_JOBS);
    let robustness = std::fs::read_to_string(a.join("robustness.csv")).unwrap();
    assert!(!robustness.contains("seconds"), "{robustness}");
}

#[test]
fn a_damaged_job_folder_is_redone_not_read_as_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "mini.toml", MINI);
    let root = dir.path().join("results");
    let first = run_suite(&path, &options(&root)).unwrap();
    assert!(first.is_complete(), "{:?}", first.jobs);
    let out = root.join("mini");
    let clean = files(&out);
    let dir_of = |id: &str| first.jobs.iter().find(|j| j.id == id).unwrap().dir.clone();

    // A truncated job.json (written by something that is not atomic) is not a finished job.
    let noise = dir_of("noise/m").join("job.json");
    let text = std::fs::read(&noise).unwrap();
    std::fs::write(&noise, &text[..text.len() / 2]).unwrap();
    // A job.json of another job (another key) is not this job's either.
    let attack = dir_of("attack/m/fgsm").join("job.json");
    let key = &first
        .jobs
        .iter()
        .find(|j| j.id == "attack/m/fgsm")
        .unwrap()
        .key;
    let other = std::fs::read_to_string(&attack)
        .unwrap()
        .replace(key.as_str(), "0000000000000000");
    std::fs::write(&attack, other).unwrap();
    let again = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(ran(&again), ["attack/m/fgsm", "noise/m"]);
    assert_eq!(files(&out), clean);

    // A training job killed while writing its checkpoint: a truncated model, no job.json.
    let train = dir_of("train/m");
    std::fs::remove_file(train.join("job.json")).unwrap();
    let model = train.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let again = run_suite(&path, &options(&root)).unwrap();
    assert_eq!(ran(&again), ["train/m"]);
    assert!(!train.join("train-state.safetensors").exists());
    assert_eq!(files(&out), clean, "the retrained model is the same model");
}

#[test]
fn an_unwritable_results_folder_is_an_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "mini.toml", MINI);
    // A folder under a regular file cannot be created, whoever runs the test (root too).
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let started = std::time::Instant::now();
    let err = run_suite(&path, &options(&blocker.join("results")))
        .unwrap_err()
        .to_string();
    assert!(
        // Where its lock goes, the first thing a run creates.
        err.contains("not-a-folder/results/mini"),
        "names the folder: {err}"
    );
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "refused before training"
    );
}

#[test]
fn a_validation_split_taking_every_example_is_an_empty_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINI.replace("valid-size = 1000", "valid-size = 60000");
    let path = write_suite(dir.path(), "mini.toml", &text);
    let err = run_suite(&path, &options(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("valid-size 60000") && err.contains("no training examples"),
        "{err}"
    );
}

/// Out-of-range settings of [`TINY`]: `(from, to, expected words)`.
#[test]
fn out_of_range_settings_name_their_field() {
    let cases = [
        (
            "name = \"base\"\n",
            "name = \"base\"\nlike = \"base\"\n",
            "`like` cycle: base -> base",
        ),
        ("steps = 3", "steps = 0", "attack `pgd`.steps"),
        (
            "steps = 3",
            "steps = 3\nrestarts = 0",
            "attack `pgd`.restarts",
        ),
        (
            "step-size = { relative-to-eps = 0.5 }",
            "step-size = { relative-to-eps = -0.5 }",
            "attack `pgd`.step-size",
        ),
        (
            "eps = [0.1, 0.2]",
            "eps = [0.1, nan]",
            "attack `fgsm`.eps[1]",
        ),
        ("eps = [0.1, 0.2]", "eps = []", "attack `fgsm`.eps"),
        ("eps = [0.1, 0.2]", "eps = [inf]", "attack `fgsm`.eps[0]"),
        (
            "sigmas = [0.1, 0.3]",
            "sigmas = [0.1, -0.3]",
            "noise.sigmas[1]",
        ),
        ("eps = 0.1\n", "eps = -0.1\n", "transfer.eps[0]"),
        ("train-limit = 500", "train-limit = 0", "data.train-limit"),
        ("test-limit = 100", "test-limit = 0", "data.test-limit"),
        ("batch-size = 50\n", "batch-size = 0\n", "eval.batch-size"),
        ("epochs = 1", "epochs = 0", "model `base`.train"),
        ("units = [16]", "units = [0]", "model `base`.arch"),
        ("lr = 0.1", "lr = -0.1", "model `base`.train"),
        ("momentum = 0.5", "momentum = 1.5", "momentum"),
    ];
    for (from, to, expected) in cases {
        let (_, message) = error_of(from, to);
        assert!(message.contains(expected), "{to:?}: {message}");
    }
}
