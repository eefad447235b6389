//! No silent wrong answer and no lost file (issue 23): colliding output names are refused at
//! plan time, a job whose output would not read back fails or is redone, orphaned temporary
//! files go, one run at a time per results folder, and the data files are in the cache key.

use std::path::{Path, PathBuf};

use gauntlet_suite::lock::lock_results;
use gauntlet_suite::record::{JobFile, NoiseOutput};
use gauntlet_suite::runner::storable_job_json;
use gauntlet_suite::{plan_suite, prune, run_suite, JobKind, JobStatus, RunOptions, Suite};

use crate::reliability::MINI;
use crate::{mnist_dir, write_suite};

fn options(root: &Path) -> RunOptions {
    RunOptions {
        results_root: root.to_path_buf(),
        ..RunOptions::default()
    }
}

/// The id of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn per_example_file_names_that_would_collide_are_refused_at_plan_time() {
    // Model `a` × attack `x-y` and model `a-x` × attack `y` would both be a-x-y.csv.
    let text = MINI.replacen("name = \"m\"", "name = \"a\"", 1).replacen(
        "[[attack]]\nname = \"fgsm\"",
        "[[model]]\nname = \"a-x\"\nlike = \"a\"\n\n[[attack]]\nname = \"x-y\"",
        1,
    )
        + "\n[[attack]]\nname = \"y\"\nkind = \"fast-gradient\"\nnorm = \"inf\"\neps = [0.1]\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "clash.toml", &text);
    // What --dry-run calls first: the plan itself is refused.
    let message = plan_suite(&path, None).unwrap_err().to_string();
    assert!(
        message.contains("clash.toml")
            && message.contains("model `a-x` with attack `y` and model `a` with attack `x-y` would both write per-example/a-x-y.csv"),
        "{message}"
    );
}

#[test]
fn a_job_output_holding_nan_is_refused_instead_of_stored_as_null() {
    let record: serde_json::Value = serde_json::json!({
        "sigma": 0.1, "clip": true, "seed": 1, "n": 10, "correct": 5, "accuracy": 0.5,
        "ci_low": 0.2, "ci_high": 0.8, "error": 0.5, "seconds": 0.0
    });
    let mut file: JobFile<NoiseOutput> = JobFile {
        id: "noise/m".into(),
        kind: JobKind::Noise,
        key: "k".into(),
        code_version: "v".into(),
        spec: serde_json::Value::Null,
        inputs: vec![],
        seconds: 1.0,
        output: NoiseOutput {
            model: "m".into(),
            records: vec![serde_json::from_value(record.clone()).unwrap()],
        },
    };
    let path = Path::new("jobs/noise-k/job.json");
    storable_job_json(path, &file).unwrap();
    file.output.records[0].accuracy = f64::NAN;
    let message = storable_job_json(path, &file).unwrap_err().to_string();
    assert!(
        message.contains("jobs/noise-k/job.json") && message.contains("non-finite number"),
        "{message}"
    );
    file.output.records[0].accuracy = f64::INFINITY;
    assert!(storable_job_json(path, &file).is_err());
}

#[test]
fn an_unbounded_l2_attack_fails_with_a_clear_error_every_time_not_a_jammed_job() {
    // ε = 1e308 in L2 without clipping: the perturbation and logits overflow.
    let text = MINI.replacen(
        "name = \"fgsm\"\nkind = \"fast-gradient\"\nnorm = \"inf\"\neps = [0.1]",
        "name = \"huge\"\nkind = \"fast-gradient\"\nnorm = 2\neps = [1e308]\nclip = false",
        1,
    );
    assert!(text.contains("1e308"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "huge.toml", &text);
    let root = dir.path().join("results");
    for _ in 0..2 {
        let message = run_suite(&path, &options(&root)).unwrap_err().to_string();
        assert!(
            message.contains("attack/m/huge")
                && (message.contains("non-finite") || message.contains("no accuracy")),
            "{message}"
        );
    }
}

#[test]
fn job_folders_that_do_not_read_back_are_rerun_and_temp_files_of_dead_writers_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "mini.toml", MINI);
    let root = dir.path().join("results");
    let first = run_suite(&path, &options(&root)).unwrap();
    let out = root.join("mini");
    let clean = std::fs::read(out.join("results.json")).unwrap();
    let dir_of = |id: &str| first.jobs.iter().find(|j| j.id == id).unwrap().dir.clone();

    // A `null` where a number belongs (what an old gauntlet wrote for NaN): the syntax and
    // key are fine, the output does not read back; so is an attack job without examples.csv.
    let noise = dir_of("noise/m").join("job.json");
    let text = std::fs::read_to_string(&noise).unwrap();
    let nulled = text.replacen("\"accuracy\": ", "\"accuracy\": null, \"was\": ", 1);
    assert_ne!(nulled, text);
    std::fs::write(&noise, nulled).unwrap();
    std::fs::remove_file(dir_of("attack/m/fgsm").join("examples.csv")).unwrap();
    let plan = plan_suite(&path, None).unwrap().1;
    let dry = run_suite(
        &path,
        &RunOptions {
            dry_run: true,
            ..options(&root)
        },
    )
    .unwrap();
    assert_eq!(dry.count(JobStatus::Pending), 2, "{:?}", dry.jobs);
    let again = run_suite(&path, &options(&root)).unwrap();
    let ran: Vec<&str> = again
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Ran)
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(ran, ["attack/m/fgsm", "noise/m"]);
    assert_eq!(std::fs::read(out.join("results.json")).unwrap(), clean);

    // Temporary files of writers killed during aggregation, outside the job folders too.
    let dead = dead_pid();
    let orphans: Vec<PathBuf> = [
        format!("per-example/.m-fgsm.csv.{dead}.tmp"),
        format!("models/.m.safetensors.{dead}.tmp"),
        format!(".results.json.{dead}.tmp"),
    ]
    .iter()
    .map(|f| out.join(f))
    .collect();
    let live = out.join(format!("per-example/.other.csv.{}.tmp", std::process::id()));
    let plant = || {
        for f in orphans.iter().chain([&live]) {
            std::fs::write(f, b"half").unwrap();
        }
    };
    plant();
    let report = prune(&out, &plan, false).unwrap();
    let mut expected = orphans.clone();
    expected.sort();
    assert_eq!(report.orphan_temps, expected);
    assert!(orphans.iter().all(|f| !f.exists()) && live.exists());
    plant();
    run_suite(&path, &options(&root)).unwrap();
    assert!(
        orphans.iter().all(|f| !f.exists()),
        "the next run removes them"
    );
    assert!(live.exists(), "a running writer's file is kept");
    std::fs::remove_file(live).unwrap();

    // One run at a time: a second one fails at once, naming the first.
    let held = lock_results(&out, false).unwrap();
    let message = run_suite(&path, &options(&root)).unwrap_err().to_string();
    assert!(
        message.contains(&format!(
            "in use by gauntlet process {}",
            std::process::id()
        )),
        "{message}"
    );
    drop(held);
    run_suite(&path, &options(&root)).unwrap();
}

#[test]
fn the_data_files_are_in_the_cache_key_and_in_results_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(mnist_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().ends_with(".gz") {
            std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
        }
    }
    let path = write_suite(dir.path(), "mini.toml", MINI);
    let root = dir.path().join("results");
    let opts = RunOptions {
        data_dir: Some(data.clone()),
        ..options(&root)
    };
    let suite = Suite::load(&path, Some(&data)).unwrap();
    let t10k = suite
        .data_files
        .iter()
        .find(|f| f.file == "t10k-images-idx3-ubyte.gz")
        .expect("the test images are listed");
    // The official file's SHA-256 (data/mnist/README.md, ../shared/data/README.md).
    assert_eq!(
        t10k.sha256,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    );
    run_suite(&path, &opts).unwrap();
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("mini/results.json")).unwrap()).unwrap();
    assert_eq!(results["data_files"].as_array().unwrap().len(), 4);

    // Other test labels in the same folder: no job's result is reused.
    let labels = data.join("t10k-labels-idx1-ubyte.gz");
    let mut values = gauntlet_data::load_idx_labels(&labels, 10).unwrap();
    values.swap(0, 1);
    let mut raw = [0x0801u32, values.len() as u32]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    raw.extend(values);
    std::fs::remove_file(&labels).unwrap();
    std::fs::write(data.join("t10k-labels-idx1-ubyte"), raw).unwrap();
    let dry = run_suite(
        &path,
        &RunOptions {
            dry_run: true,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(dry.count(JobStatus::Cached), 0, "{:?}", dry.jobs);
}
