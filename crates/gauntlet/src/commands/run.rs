//! `gauntlet run` and `gauntlet merge`: benchmark suites.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use gauntlet_suite::{
    merge_suite, run_suite_with, Job, JobReport, JobStatus, RunOptions, RunSummary, Stage,
    SuiteObserver,
};
use gauntlet_train::EpochRecord;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::RunArgs;
use crate::device;

/// An overall bar over the jobs and one line per finished job and epoch.
struct Progress {
    bars: MultiProgress,
    overall: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            bars: MultiProgress::with_draw_target(target),
            overall: Mutex::new(None),
            quiet,
        }
    }

    fn line(&self, text: String) {
        if !self.quiet {
            // Through MultiProgress, so lines do not tear the bar.
            if self.bars.is_hidden() {
                eprintln!("{text}");
            } else {
                let _ = self.bars.println(text);
            }
        }
    }
}

impl SuiteObserver for Progress {
    fn large_work(&self, lines: &[String]) {
        // Printed even with --quiet and --dry-run: this is the estimate to read first.
        for line in lines {
            if self.bars.is_hidden() {
                eprintln!("planned work: {line}");
            } else {
                let _ = self.bars.println(format!("planned work: {line}"));
            }
        }
    }

    fn planned(&self, jobs: &[JobReport]) {
        let todo = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Pending)
            .count();
        let cached = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Cached)
            .count();
        self.line(format!(
            "{} jobs: {todo} to run, {cached} cached",
            jobs.len()
        ));
        let bar = self.bars.add(ProgressBar::new(todo as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "[{elapsed_precise}] [{bar:30}] {pos}/{len} jobs (eta {eta}) {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        *self.overall.lock().expect("not poisoned") = Some(bar);
    }

    fn job_started(&self, job: &Job) {
        if let Some(bar) = self.overall.lock().expect("not poisoned").as_ref() {
            bar.set_message(job.id.clone());
        }
    }

    fn job_finished(&self, job: &Job, seconds: f64) {
        self.line(format!("done {} in {seconds:.1} s", job.id));
        if let Some(bar) = self.overall.lock().expect("not poisoned").as_ref() {
            bar.inc(1);
        }
    }

    fn epoch_done(&self, job: &Job, r: &EpochRecord) {
        let valid = r.valid_error.map_or(String::new(), |e| {
            format!(", valid error {:.2}%", 100.0 * e)
        });
        let adv = r.valid_adv_error.map_or(String::new(), |e| {
            format!(" (adversarial {:.2}%)", 100.0 * e)
        });
        self.line(format!(
            "  {} epoch {}: train loss {:.4}, train error {:.2}%{valid}{adv}, {:.1} s",
            job.id,
            r.epoch,
            r.train_loss,
            100.0 * r.train_error,
            r.seconds
        ));
    }

    fn train_resumed(&self, job: &Job, epoch: usize) {
        self.line(format!("  {} resumed after epoch {epoch}", job.id));
    }
}

fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let parsed = text
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => Err(anyhow!(
            "--shard `{text}`: expected i/n with 0 <= i < n, e.g. 0/2"
        )),
    }
}

/// The headline numbers of a finished suite, read back from its results.json.
fn print_table(results_dir: &Path) -> Result<()> {
    let path = results_dir.join("results.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let results: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let models = results["models"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let width = models
        .iter()
        .filter_map(|m| m["name"].as_str())
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    println!(
        "{:<width$} {:>11}   robust accuracy (attack@eps)",
        "model", "test error"
    );
    for model in models {
        let name = model["name"].as_str().unwrap_or("?");
        let robust: Vec<String> = results["robustness"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["model"].as_str() == Some(name))
            .map(|r| {
                format!(
                    "{}@{}: {:.1}%",
                    r["attack"].as_str().unwrap_or("?"),
                    r["eps"],
                    100.0 * r["adversarial_accuracy"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "{name:<width$} {:>10.2}%   {}",
            100.0 * model["test_error"].as_f64().unwrap_or(f64::NAN),
            robust.join(", ")
        );
    }
    Ok(())
}

fn print_plan(summary: &RunSummary) {
    for job in &summary.jobs {
        let status = match job.status {
            JobStatus::Cached => "cached",
            JobStatus::Pending => "will run",
            JobStatus::Ran => "ran",
            JobStatus::Blocked => "blocked (inputs missing)",
            JobStatus::OtherShard => "other shard",
            JobStatus::OtherStage => "other stage",
        };
        println!("{:<48} {:<10} {status}", job.id, job.key);
    }
}

pub fn run(args: RunArgs, merge_only: bool) -> Result<()> {
    if args.jobs() == 0 {
        return Err(anyhow!("--jobs must be at least 1"));
    }
    let options = RunOptions {
        results_root: args.results.clone(),
        data_dir: args.common.data_dir.clone(),
        device: device::open(&args.common.device)?,
        dry_run: args.dry_run,
        shard: args.shard.as_deref().map(parse_shard).transpose()?,
        stage: args
            .stage
            .as_deref()
            .map(|s| {
                s.parse::<Stage>()
                    .map_err(|e| anyhow!("--stage `{s}`: {e}"))
            })
            .transpose()?,
        jobs: args.jobs(),
    };
    let summary = if merge_only {
        merge_suite(&args.suite, &options)?
    } else {
        run_suite_with(&args.suite, &options, &Progress::new(args.quiet))?
    };
    if args.dry_run {
        print_plan(&summary);
        return Ok(());
    }
    println!(
        "{}: {} jobs ran, {} cached, {} missing; results in {}",
        summary.suite,
        summary.executed(),
        summary.count(JobStatus::Cached),
        summary.missing.len(),
        summary.results_dir.display()
    );
    if summary.written.is_empty() {
        if !summary.missing.is_empty() {
            println!("not yet complete; rerun or `gauntlet merge` once every shard has finished");
        }
        return Ok(());
    }
    print_table(&summary.results_dir)
}
