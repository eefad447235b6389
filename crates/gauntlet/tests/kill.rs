//! Faults with the real binary: `gauntlet run` killed with SIGKILL during training, between
//! jobs and during an evaluation, then rerun, ends with exactly the files of a clean run
//! (timings aside) and never repeats a finished job; two runs of one suite into one results
//! folder at the same time leave the results of one run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gauntlet_suite::reproducible::first_difference;

/// Two models (one adversarially trained), two attacks, noise and transfer on small slices.
const SUITE: &str = r#"
name = "kill"
seed = 4
data = { dataset = "mnist", dir = "{data}", train-limit = 1500, valid-size = 1000, valid-limit = 200, test-limit = 200 }

[[model]]
name = "a"
arch = { kind = "maxout-mlp", units = [32], pieces = 2, init-range = 0.05 }
train = { epochs = 4, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[model]]
name = "b"
like = "a"
regularizer = { kind = "lp", p = "inf", eps = 0.1, alpha = 0.5 }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1, 0.2]

[[attack]]
name = "pgd"
kind = "pgd"
norm = "inf"
eps = [0.1]
steps = 20

[noise]
sigmas = [0.2]

[transfer]
attack = "fgsm"
eps = 0.1

[eval]
batch-size = 50
"#;

/// Longest wait for any one condition: far above what a run of this suite takes.
const PATIENCE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write_suite(dir: &Path) -> PathBuf {
    let path = dir.join("kill.toml");
    let data = repo().join("data/mnist").display().to_string();
    std::fs::write(&path, SUITE.replace("{data}", &data)).unwrap();
    path
}

/// A `gauntlet run` whose stderr lines are collected as they come.
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Run {
    fn start(suite: &Path, root: &Path) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["run", suite.to_str().unwrap(), "--results"])
            .arg(root)
            // One thread per process: the runs share two cores with everything else.
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                sink.lock().unwrap().push(line.unwrap());
            }
        });
        Run {
            child,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `ready` holds, then sends SIGKILL; returns the stderr lines. Panics if the
    /// run ends first.
    fn kill_when(mut self, what: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
        let started = Instant::now();
        while !ready(&self.lines()) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the run ended ({status}) before {what}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(started.elapsed() < PATIENCE, "no {what} in time");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        lines
    }

    /// Waits for the exit, whatever it is; returns its status and the stderr lines.
    fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        (status, lines)
    }

    /// Waits for a normal exit; returns stdout and the stderr lines.
    fn finish(mut self) -> (String, Vec<String>) {
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        assert!(status.success(), "{status}:\n{}", lines.join("\n"));
        (stdout, lines)
    }
}

/// Ids of the jobs a run finished, from its `done <id> in <s> s` lines.
fn done(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("done "))
        .map(|rest| rest.split(" in ").next().unwrap().to_string())
        .collect()
}

fn assert_same_results(got: &Path, clean: &Path) {
    if let Some(difference) = first_difference(got, clean).unwrap() {
        panic!("{difference} (no training state may be left behind)");
    }
}

/// A clean run of [`SUITE`], shared by the tests: the suite file (every run reads the same
/// one, whose path is part of `suite.resolved.json`), the results folder and the job ids.
struct Clean {
    suite: PathBuf,
    results: PathBuf,
    jobs: Vec<String>,
}

fn clean_run() -> &'static Clean {
    static CLEAN: OnceLock<Clean> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let suite = write_suite(&dir);
        let (stdout, lines) = Run::start(&suite, &dir.join("results")).finish();
        let jobs = done(&lines);
        assert!(
            stdout.contains(&format!("{} jobs ran, 0 cached, 0 missing", jobs.len())),
            "{stdout}"
        );
        Clean {
            suite,
            results: dir.join("results/kill"),
            jobs,
        }
    })
}

#[test]
fn killed_runs_resume_redo_no_finished_job_and_end_with_the_clean_results() {
    let clean = clean_run();
    let (suite, all_jobs) = (&clean.suite, &clean.jobs);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("results");
    let jobs_dir = root.join("kill/jobs");
    let state_exists = |_: &[String]| {
        std::fs::read_dir(&jobs_dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("train-state.safetensors").is_file())
        })
    };

    // 1. During training: as soon as the first epoch's state is saved.
    let first = Run::start(suite, &root).kill_when("a saved training state", state_exists);
    // 2. Between jobs: right after the first evaluation job finished.
    let second = Run::start(suite, &root).kill_when("an evaluation job", |lines| {
        done(lines).iter().any(|id| !id.starts_with("train/"))
    });
    // 3. During an evaluation: a moment after the next job finished.
    let third = Run::start(suite, &root).kill_when("another job", |lines| !done(lines).is_empty());
    // 4. To the end.
    let (stdout, fourth) = Run::start(suite, &root).finish();

    // The training job killed in run 1 continued from its saved epoch, not from scratch.
    let resumed: Vec<&String> = second.iter().filter(|l| l.contains(" resumed ")).collect();
    eprintln!("run 2: {resumed:?}");
    let killed_training = first
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("  ").and_then(|l| l.split(" epoch ").next()))
        .expect("run 1 finished an epoch")
        .to_string();
    assert!(
        second
            .iter()
            .any(|l| l.starts_with(&format!("  {killed_training} resumed after epoch "))),
        "{killed_training} resumed:\n{}",
        second.join("\n")
    );
    assert!(
        !second
            .iter()
            .any(|l| l.starts_with(&format!("  {killed_training} epoch 1:"))),
        "epoch 1 of {killed_training} was not trained again"
    );

    // Every job finished exactly once over the four runs: none was repeated.
    let runs = [&first, &second, &third, &fourth];
    let finished: Vec<String> = runs.iter().flat_map(|r| done(r)).collect();
    let unique: BTreeSet<&String> = finished.iter().collect();
    assert_eq!(finished.len(), unique.len(), "a finished job ran again");
    assert_eq!(
        unique,
        all_jobs.iter().collect::<BTreeSet<_>>(),
        "every job finished"
    );
    let per_run: Vec<usize> = runs.iter().map(|r| done(r).len()).collect();
    eprintln!(
        "jobs finished per run: {per_run:?} of {}; run 4: {}",
        all_jobs.len(),
        stdout.lines().next().unwrap_or("")
    );
    assert_same_results(&root.join("kill"), &clean.results);
}

/// The second of two runs started at once on one results folder fails at once, naming the
/// first's process id (the folder's lock); the first's results are those of a run alone.
#[test]
fn two_runs_into_one_results_folder_at_once_leave_the_results_of_one() {
    let clean = clean_run();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("results");
    let a = Run::start(&clean.suite, &root);
    let b = Run::start(&clean.suite, &root);
    let pids = [a.child.id(), b.child.id()];
    let outcomes = [a.wait(), b.wait()];
    let failed: Vec<usize> = (0..2).filter(|&i| !outcomes[i].0.success()).collect();
    assert_eq!(failed.len(), 1, "exactly one run fails: {outcomes:?}");
    let (status, lines) = &outcomes[failed[0]];
    let holder = pids[1 - failed[0]];
    assert_eq!(status.code(), Some(1));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("is in use by gauntlet process {holder}"))),
        "{lines:?}"
    );
    assert_same_results(&root.join("kill"), &clean.results);
}

/// `gauntlet train` killed after its first epoch continues from its saved state when run again
/// and writes the same checkpoint, bit for bit, as a run never interrupted.
#[test]
fn a_killed_training_command_resumes_and_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("data/mnist");
    let train = |out: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
        command
            .args([
                "train",
                "--epochs",
                "4",
                "--train-limit",
                "1500",
                "--valid-size",
                "1000",
            ])
            .args(["--test-limit", "100", "--seed", "7", "--data-dir"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    let first = train(&clean).output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");

    let mut child = train(&killed).spawn().unwrap();
    let state = killed.join("train-state.safetensors");
    let started = Instant::now();
    while !state.is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before its first epoch was saved"
        );
        assert!(started.elapsed() < PATIENCE, "no training state in time");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("model.safetensors").exists(),
        "killed before the end"
    );

    let rerun = train(&killed).output().unwrap();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(rerun.status.success(), "{stderr}");
    assert!(stderr.contains("resumed after epoch"), "{stderr}");
    assert!(
        !state.exists(),
        "the state is removed once the model is saved"
    );
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        read(&killed) == read(&clean),
        "the resumed run's weights differ"
    );
}
