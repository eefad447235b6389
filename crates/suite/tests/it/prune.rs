//! `prune`: after an edit, the folders of the old jobs and the temporary files of dead writers
//! go; every job of the current plan stays cached.

use gauntlet_suite::{prune, run_suite, JobStatus, Plan, RunOptions, Suite};

use crate::{write_suite, TINY, TINY_JOBS};

#[test]
fn prune_removes_what_the_plan_no_longer_uses_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("results");
    let options = RunOptions {
        results_root: root.clone(),
        ..RunOptions::default()
    };
    let path = write_suite(dir.path(), "tiny.toml", TINY);
    assert_eq!(run_suite(&path, &options).unwrap().executed(), TINY_JOBS);
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replace("eps = [1.0]", "eps = [1.0, 2.0]");
    std::fs::write(&path, edited).unwrap();
    let summary = run_suite(&path, &options).unwrap();
    assert_eq!(summary.executed(), 2);

    let suite = Suite::load(&path, None).unwrap();
    let plan = Plan::new(&suite);
    let results = root.join("tiny");
    let live_job = summary.jobs[0].dir.clone();
    // A writer that died (no process has this id: it is above Linux's pid_max) and one that runs.
    let dead = live_job.join(".model.safetensors.4294967.tmp");
    let running = live_job.join(format!(".job.json.{}.tmp", std::process::id()));
    std::fs::write(&dead, b"partial").unwrap();
    std::fs::write(&running, b"partial").unwrap();

    let dry = prune(&results, &plan, true).unwrap();
    let names: Vec<String> = dry
        .stale_jobs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("attack-")), "{names:?}");
    assert_eq!(dry.orphan_temps, std::slice::from_ref(&dead));
    assert!(dry.bytes > 0);
    assert!(
        dry.stale_jobs.iter().all(|p| p.exists()),
        "a dry run deletes nothing"
    );

    let done = prune(&results, &plan, false).unwrap();
    assert_eq!(done.stale_jobs, dry.stale_jobs);
    assert!(done.stale_jobs.iter().all(|p| !p.exists()));
    assert!(!dead.exists() && running.exists());
    let after = prune(&results, &plan, true).unwrap();
    assert!(after.stale_jobs.is_empty() && after.orphan_temps.is_empty());

    std::fs::remove_file(&running).unwrap();
    let rerun = run_suite(&path, &options).unwrap();
    assert_eq!(rerun.executed(), 0);
    assert_eq!(rerun.count(JobStatus::Cached), TINY_JOBS);
}
