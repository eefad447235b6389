//! Running a plan: the on-disk cache, execution on worker threads (each job once its inputs
//! are there), sharding, and progress reporting. Each job writes into its own folder,
//! `results/NAME/jobs/<kind>-<key>/`, every file atomically and `job.json` last; a job whose
//! `job.json` exists is done and is never run again, so a run killed at any point resumes
//! where it stopped, and shards writing into one results folder never collide.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor};
use gauntlet_attacks::{
    craft, evaluate_attack_detailed, evaluate_min_norm, gaussian_noise, predict, score_transfer,
    EnsembleModel,
};
use gauntlet_data::Splits;
use gauntlet_models::io::write_atomic;
use gauntlet_models::layers::derive_seed;
use gauntlet_models::{build_fitted, checkpoint, Classifier};
use gauntlet_train::{evaluate, train_resumable, EpochRecord, TrainConfig, TrainLog};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Digest;

use crate::cache::is_finished;
use crate::record::{
    AttackOutput, CraftOutput, JobFile, NoiseOutput, PredictOutput, ScoreOutput, TrainOutput,
};
use crate::{
    write, Error, Job, JobKind, Plan, Result, Stage, Suite, Task, CODE_VERSION, INIT_STREAM,
};

/// The file whose presence marks a finished job.
pub const JOB_FILE: &str = "job.json";
/// A training job's checkpoint (its spec is beside it as `model.json`).
pub const MODEL_FILE: &str = "model.safetensors";
/// A craft job's adversarial examples.
pub const CRAFTED_FILE: &str = "x_adv.safetensors";
/// An attack job's per-example outcomes.
pub const EXAMPLES_FILE: &str = "examples.csv";
/// A minimum-norm attack job's per-example distances, beside its `examples.csv`.
pub const DISTANCES_FILE: &str = "distances.csv";
/// A training job's resumable state while it runs (deleted once `job.json` is written).
pub const TRAIN_STATE_FILE: &str = "train-state.safetensors";

/// How to run a suite.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Results go to `results_root/<suite name>/` (default `results`).
    pub results_root: PathBuf,
    /// Replaces the suite's `data.dir`.
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    /// Plan and report what is cached without running or writing anything.
    pub dry_run: bool,
    /// `(index, count)`, 0-based: run only this deterministic share of every stage's jobs.
    pub shard: Option<(usize, usize)>,
    /// Run only this stage's jobs (earlier stages must be complete).
    pub stage: Option<Stage>,
    /// Jobs of one stage run on this many threads (default 1).
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            results_root: PathBuf::from("results"),
            data_dir: None,
            device: Device::Cpu,
            dry_run: false,
            shard: None,
            stage: None,
            jobs: 1,
        }
    }
}

/// What happened to a job in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Its output was already there.
    Cached,
    /// It would run (dry run), or was never reached (an earlier job failed).
    Pending,
    /// It ran in this run.
    Ran,
    /// Its inputs are missing (another shard's or another stage's jobs that have not run yet).
    Blocked,
    /// It belongs to another shard.
    OtherShard,
    /// It belongs to a stage this run skips.
    OtherStage,
}

/// One job's line in a [`RunSummary`].
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub id: String,
    pub kind: JobKind,
    pub key: String,
    /// The job's folder.
    pub dir: PathBuf,
    pub status: JobStatus,
    /// Wall time, for jobs that ran.
    pub seconds: Option<f64>,
}

/// The outcome of [`run_suite`] or [`merge_suite`].
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub suite: String,
    pub results_dir: PathBuf,
    /// In plan order (inputs before the jobs that read them).
    pub jobs: Vec<JobReport>,
    /// Aggregated files written (empty for dry runs, sharded and single-stage runs).
    pub written: Vec<PathBuf>,
    /// Ids of jobs without output after the run.
    pub missing: Vec<String>,
}

impl RunSummary {
    pub fn count(&self, status: JobStatus) -> usize {
        self.jobs.iter().filter(|j| j.status == status).count()
    }

    /// Jobs that ran in this run.
    pub fn executed(&self) -> usize {
        self.count(JobStatus::Ran)
    }

    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Receives progress from a run so a front end can draw it; the library never prints.
/// Methods may be called from several threads at once (with `jobs > 1`).
pub trait SuiteObserver: Sync {
    /// The plan with every job's status before anything runs.
    fn planned(&self, _jobs: &[JobReport]) {}
    /// Lines on unusually large work in the suite ([`Suite::large_work`]), before `planned`.
    fn large_work(&self, _lines: &[String]) {}
    fn job_started(&self, _job: &Job) {}
    fn job_finished(&self, _job: &Job, _seconds: f64) {}
    /// A training job's progress.
    fn batch_done(&self, _job: &Job, _epoch: usize, _batch: usize, _n_batches: usize, _loss: f32) {}
    fn epoch_done(&self, _job: &Job, _record: &EpochRecord) {}
    /// A training job continued from the state an interrupted run saved after `epoch`.
    fn train_resumed(&self, _job: &Job, _epoch: usize) {}
}

/// A [`SuiteObserver`] that ignores everything.
pub struct NoProgress;
impl SuiteObserver for NoProgress {}

/// Runs the suite in `path`: every job not already done, then (for an unsharded run of all
/// stages) the aggregated results. See [`run_suite_with`].
pub fn run_suite(path: &Path, options: &RunOptions) -> Result<RunSummary> {
    run_suite_with(path, options, &NoProgress)
}

/// [`run_suite`], reporting progress to `observer`.
///
/// Jobs run on `options.jobs` threads, each as soon as the jobs it reads have finished; among
/// ready jobs, earlier stages (train, continue, evaluate, transfer) and plan order go first.
/// With `options.shard = Some((i, n))` only the jobs of shard `i` run, and a job whose inputs
/// another shard has not produced yet is reported [`JobStatus::Blocked`]: run the shards once
/// per stage (`options.stage`), or repeat them, then [`merge_suite`]. Aggregation reads only
/// job outputs, so a merge after shards gives the same files as one unsharded run.
///
/// # Errors
/// Suite file errors before anything runs; the first failing job ([`Error::Job`]) after the
/// jobs already running have finished (their outputs are kept).
pub fn run_suite_with(
    path: &Path,
    options: &RunOptions,
    observer: &dyn SuiteObserver,
) -> Result<RunSummary> {
    if let Some((index, count)) = options.shard {
        if count == 0 || index >= count {
            return Err(Error::invalid(
                path,
                "--shard",
                format!("expected i/n with i < n, got {index}/{count}"),
            ));
        }
    }
    let suite = Suite::load(path, options.data_dir.as_deref())?;
    let plan = Plan::new(&suite);
    let results_dir = options.results_root.join(&suite.name);
    let jobs_dir = results_dir.join("jobs");
    let mut reports: Vec<JobReport> = plan
        .jobs
        .iter()
        .map(|job| {
            let dir = jobs_dir.join(job.dir_name());
            let status = if is_finished(&dir, &job.key, job.kind) {
                JobStatus::Cached
            } else if options.shard.is_some_and(|(i, n)| !job.in_shard(i, n)) {
                JobStatus::OtherShard
            } else if options.stage.is_some_and(|s| s != job.stage()) {
                JobStatus::OtherStage
            } else {
                JobStatus::Pending
            };
            JobReport {
                id: job.id.clone(),
                kind: job.kind,
                key: job.key.clone(),
                dir,
                status,
                seconds: None,
            }
        })
        .collect();
    let large = suite.large_work();
    if !large.is_empty() {
        observer.large_work(&large);
    }
    observer.planned(&reports);
    let aggregate = options.shard.is_none() && options.stage.is_none() && !options.dry_run;
    if options.dry_run {
        return Ok(summary(&suite, &plan, results_dir, reports, vec![]));
    }
    // Before any work: a second run on this folder fails at once. Shards share the lock.
    let _lock = crate::lock::lock_results(&results_dir, options.shard.is_some())?;
    crate::prune::remove_orphan_temps_below(&results_dir)?;

    if reports.iter().any(|r| r.status == JobStatus::Pending) {
        if suite.needs_double_backprop() {
            // Candle reads this once per thread at the first backward pass; without it
            // second-order gradients are silently wrong (docs/candle-traps.md).
            std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
        }
        // Before any work: an unwritable results folder must not cost a training run.
        std::fs::create_dir_all(&jobs_dir).map_err(|e| Error::io(&jobs_dir, e))?;
        let data = LoadedData::load(&suite, &options.device)?;
        let ctx = Context {
            suite: &suite,
            plan: &plan,
            jobs_dir: &jobs_dir,
            device: &options.device,
            data: &data,
            observer,
        };
        let pending: Vec<usize> = (0..plan.jobs.len())
            .filter(|&i| reports[i].status == JobStatus::Pending)
            .collect();
        let outcome = run_jobs(&ctx, &pending, options.jobs);
        for i in outcome.blocked {
            reports[i].status = JobStatus::Blocked;
        }
        for (i, seconds) in outcome.finished {
            reports[i].status = JobStatus::Ran;
            reports[i].seconds = Some(seconds);
        }
        if let Some(error) = outcome.failure {
            return Err(error);
        }
    }
    let written = if aggregate {
        write::aggregate(&suite, &plan, &results_dir)?
    } else {
        vec![]
    };
    Ok(summary(&suite, &plan, results_dir, reports, written))
}

/// Aggregates the outputs of the suite's jobs into `results.json`, the CSV tables and
/// `models/`, running nothing: after sharded runs, this gives the files one unsharded run
/// would. Jobs without output are listed in [`RunSummary::missing`] (and in `results.json`).
pub fn merge_suite(path: &Path, options: &RunOptions) -> Result<RunSummary> {
    let suite = Suite::load(path, options.data_dir.as_deref())?;
    let plan = Plan::new(&suite);
    let results_dir = options.results_root.join(&suite.name);
    let reports = plan
        .jobs
        .iter()
        .map(|job| {
            let dir = results_dir.join("jobs").join(job.dir_name());
            let status = if is_finished(&dir, &job.key, job.kind) {
                JobStatus::Cached
            } else {
                JobStatus::Pending
            };
            JobReport {
                id: job.id.clone(),
                kind: job.kind,
                key: job.key.clone(),
                dir,
                status,
                seconds: None,
            }
        })
        .collect();
    let written = if options.dry_run {
        vec![]
    } else {
        let _lock = crate::lock::lock_results(&results_dir, false)?;
        write::aggregate(&suite, &plan, &results_dir)?
    };
    Ok(summary(&suite, &plan, results_dir, reports, written))
}

fn summary(
    suite: &Suite,
    plan: &Plan,
    results_dir: PathBuf,
    jobs: Vec<JobReport>,
    written: Vec<PathBuf>,
) -> RunSummary {
    let missing = plan
        .jobs
        .iter()
        .zip(&jobs)
        .filter(|(_, r)| !is_finished(&r.dir, &r.key, r.kind))
        .map(|(j, _)| j.id.clone())
        .collect();
    RunSummary {
        suite: suite.name.clone(),
        results_dir,
        jobs,
        written,
        missing,
    }
}

/// What [`run_jobs`] did.
struct Outcome {
    /// Jobs that ran, with their wall times, in plan order.
    finished: Vec<(usize, f64)>,
    /// Jobs not run because an input is neither there nor made by this run.
    blocked: Vec<usize>,
    /// The first error, after which no new job started.
    failure: Option<Error>,
}

/// The scheduler's shared state.
struct Queue {
    /// Jobs to run, in plan order.
    waiting: Vec<usize>,
    /// Per plan job: its output is there.
    done: Vec<bool>,
    running: usize,
    finished: Vec<(usize, f64)>,
    failure: Option<Error>,
}

impl Queue {
    /// The first waiting job whose inputs are all there, taken off the queue.
    fn take_ready(&mut self, plan: &Plan) -> Option<usize> {
        let done = &self.done;
        let at = self
            .waiting
            .iter()
            .position(|&i| plan.jobs[i].inputs.iter().all(|&input| done[input]))?;
        Some(self.waiting.remove(at))
    }
}

/// Runs `pending` (plan order) on `threads` workers, each job as soon as its inputs are there:
/// a later stage's job does not wait for the whole earlier stage, only for the jobs it reads
/// (a model's second training stage starts when its own first stage ends, while others still
/// train). Among ready jobs the first in plan order goes first, so earlier stages are preferred.
fn run_jobs(ctx: &Context<'_>, pending: &[usize], threads: usize) -> Outcome {
    let jobs = &ctx.plan.jobs;
    let done: Vec<bool> = (0..jobs.len()).map(|i| ctx.is_done(i)).collect();
    // Plan order puts inputs first, so one pass settles what this run can make.
    let mut will_make = vec![false; jobs.len()];
    let mut blocked = Vec::new();
    for &i in pending {
        if jobs[i]
            .inputs
            .iter()
            .all(|&input| done[input] || will_make[input])
        {
            will_make[i] = true;
        } else {
            blocked.push(i);
        }
    }
    // Jobs of one key share one folder (two models of one recipe and seed): the first runs,
    // the others find its output instead of racing it for the same files.
    let mut first_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let (mut unique, mut repeats) = (Vec::new(), Vec::new());
    for &i in pending.iter().filter(|&&i| will_make[i]) {
        match first_of.entry(jobs[i].key.as_str()) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
                unique.push(i);
            }
            std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
        }
    }
    let workers = threads.max(1).min(unique.len().max(1));
    let queue = Mutex::new(Queue {
        waiting: unique,
        done,
        running: 0,
        finished: Vec::new(),
        failure: None,
    });
    let changed = std::sync::Condvar::new();
    let worker = || {
        let mut q = queue.lock().expect("no panics while locked");
        loop {
            if q.failure.is_some() {
                break;
            }
            let Some(i) = q.take_ready(ctx.plan) else {
                if q.running == 0 {
                    break;
                }
                q = changed.wait(q).expect("no panics while locked");
                continue;
            };
            q.running += 1;
            drop(q);
            let job = &jobs[i];
            ctx.observer.job_started(job);
            let started = Instant::now();
            let result = execute(ctx, job, started);
            let seconds = started.elapsed().as_secs_f64();
            q = queue.lock().expect("no panics while locked");
            q.running -= 1;
            match result {
                Ok(()) => {
                    ctx.observer.job_finished(job, seconds);
                    q.done[i] = true;
                    for &(repeat, first) in &repeats {
                        if first == i {
                            q.done[repeat] = true;
                        }
                    }
                    q.finished.push((i, seconds));
                }
                Err(error) => {
                    q.failure.get_or_insert(Error::Job {
                        id: job.id.clone(),
                        error: Box::new(error),
                    });
                }
            }
            changed.notify_all();
        }
    };
    if workers <= 1 {
        // On the caller's thread: no thread-local state (Candle's gradient settings, the
        // trainer's float mode) differs from a plain library call.
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(worker);
            }
        });
    }
    let q = queue.into_inner().expect("no panics while locked");
    let mut finished = q.finished;
    for (repeat, first) in repeats {
        if finished.iter().any(|&(i, _)| i == first) {
            finished.push((repeat, 0.0));
        }
    }
    finished.sort_by_key(|&(i, _)| i);
    Outcome {
        finished,
        blocked,
        failure: q.failure,
    }
}

/// The data every job of a run shares.
struct LoadedData {
    splits: Splits,
    /// The evaluation images (the first `eval.test-limit` test images) and labels, on the device.
    images: Tensor,
    labels: Tensor,
}

impl LoadedData {
    fn load(suite: &Suite, device: &Device) -> Result<Self> {
        let splits = gauntlet_data::load(&suite.data)?;
        // The keys were computed from the files as planned; they must be the files read.
        if splits.identity.files != suite.data_files {
            return Err(Error::invalid(
                &suite.path,
                "data.dir",
                format!(
                    "the files in {} changed between planning and loading; run again",
                    suite
                        .data
                        .dir
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display()
                ),
            ));
        }
        let eval = splits.test.truncate(suite.eval.test_limit)?;
        Ok(Self {
            images: eval.images.to_device(device)?,
            labels: eval.labels.to_device(device)?,
            splits,
        })
    }
}

struct Context<'a> {
    suite: &'a Suite,
    plan: &'a Plan,
    jobs_dir: &'a Path,
    device: &'a Device,
    data: &'a LoadedData,
    observer: &'a dyn SuiteObserver,
}

impl Context<'_> {
    fn dir(&self, job: usize) -> PathBuf {
        self.jobs_dir.join(self.plan.jobs[job].dir_name())
    }

    fn is_done(&self, job: usize) -> bool {
        is_finished(
            &self.dir(job),
            &self.plan.jobs[job].key,
            self.plan.jobs[job].kind,
        )
    }

    fn load_model(&self, train_job: usize) -> Result<Box<dyn Classifier>> {
        Ok(checkpoint::load(
            &self.dir(train_job).join(MODEL_FILE),
            self.device,
        )?)
    }

    fn finish<T: Serialize + DeserializeOwned>(
        &self,
        job: &Job,
        started: Instant,
        output: T,
    ) -> Result<()> {
        let file = JobFile {
            id: job.id.clone(),
            kind: job.kind,
            key: job.key.clone(),
            code_version: CODE_VERSION.to_string(),
            spec: job.spec.clone(),
            inputs: job
                .inputs
                .iter()
                .map(|&i| self.plan.jobs[i].key.clone())
                .collect(),
            seconds: started.elapsed().as_secs_f64(),
            output,
        };
        let path = self.jobs_dir.join(job.dir_name()).join(JOB_FILE);
        let text = storable_job_json(&path, &file)?;
        write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))
    }
}

/// The text of `file` for `path`, checked to read back: JSON has no NaN or infinity
/// (serde_json writes `null`), so a job whose output holds one fails here rather than counting
/// as done and breaking every later run.
pub fn storable_job_json<T: Serialize + DeserializeOwned>(
    path: &Path,
    file: &JobFile<T>,
) -> Result<String> {
    let mut text = serde_json::to_string_pretty(file).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })?;
    if let Err(error) = serde_json::from_str::<JobFile<T>>(&text) {
        return Err(Error::Unstorable {
            path: path.to_path_buf(),
            message: format!(
                "the output holds a non-finite number (NaN or infinity), which JSON cannot store, so the job is not marked done: {error}"
            ),
        });
    }
    text.push('\n');
    Ok(text)
}

/// Reads a finished job's `job.json`.
pub fn read_job<T: DeserializeOwned>(dir: &Path) -> Result<JobFile<T>> {
    let path = dir.join(JOB_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|error| Error::Json { path, error })
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}

pub(crate) fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let csv_error = |error| Error::Csv {
        path: path.to_path_buf(),
        error,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(csv_error)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv_error(e.into_error().into()))?;
    write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

/// Writes the CSV table of `rows` with `columns` ([`gauntlet_results::write_table`]).
pub(crate) fn write_table<T: Serialize>(path: &Path, rows: &[T], columns: &[&str]) -> Result<()> {
    let bytes = gauntlet_results::write_table(rows, columns).map_err(|e| Error::Unstorable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

/// Forwards the trainer's progress to the suite's observer.
struct TrainProgress<'a> {
    job: &'a Job,
    observer: &'a dyn SuiteObserver,
}

impl gauntlet_train::Observer for TrainProgress<'_> {
    fn batch_done(&mut self, epoch: usize, batch: usize, n_batches: usize, loss: f32) {
        self.observer
            .batch_done(self.job, epoch, batch, n_batches, loss);
    }
    fn epoch_done(&mut self, record: &EpochRecord) {
        self.observer.epoch_done(self.job, record);
    }
    fn resumed(&mut self, epoch: usize) {
        self.observer.train_resumed(self.job, epoch);
    }
}

/// Evaluates a trained (or imported) model on the test split, saves it as the job's checkpoint
/// and records the job.
fn finish_train(
    ctx: &Context<'_>,
    job: &Job,
    started: Instant,
    model: usize,
    net: &dyn Classifier,
    log: TrainLog,
    train: Option<TrainConfig>,
) -> Result<()> {
    let dir = ctx.jobs_dir.join(job.dir_name());
    let test = evaluate(
        net,
        &ctx.data.splits.test,
        ctx.suite.eval.batch_size,
        ctx.device,
    )?;
    checkpoint::save(net, &dir.join(MODEL_FILE))?;
    ctx.finish(
        job,
        started,
        TrainOutput {
            model: ctx.suite.models[model].name.clone(),
            n_params: net.params().n_scalars(),
            train_seconds: log.training_seconds(),
            log,
            test,
            train,
        },
    )
}

/// Trains `net` for `job` with its per-epoch state saved (a killed run resumes the job where
/// it stopped), then records it; `record_train` keeps the settings in its output, for a job
/// that completed them itself.
#[allow(clippy::too_many_arguments)]
fn train_job(
    ctx: &Context<'_>,
    job: &Job,
    started: Instant,
    model: usize,
    net: &dyn Classifier,
    splits: &Splits,
    train: &TrainConfig,
    record_train: bool,
) -> Result<()> {
    let mut progress = TrainProgress {
        job,
        observer: ctx.observer,
    };
    let state = ctx.jobs_dir.join(job.dir_name()).join(TRAIN_STATE_FILE);
    let log = train_resumable(net, splits, train, ctx.device, &mut progress, &state)?;
    let recorded = record_train.then(|| train.clone());
    finish_train(ctx, job, started, model, net, log, recorded)?;
    // Another process running the same job may have removed it already.
    match std::fs::remove_file(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&state, e)),
        _ => Ok(()),
    }
}

fn execute(ctx: &Context<'_>, job: &Job, started: Instant) -> Result<()> {
    let suite = ctx.suite;
    let dir = ctx.jobs_dir.join(job.dir_name());
    // A run killed mid-write leaves its temporary file behind; the rerun replaces every file.
    crate::prune::remove_orphan_temps(&dir)?;
    let (images, labels) = (&ctx.data.images, &ctx.data.labels);
    let batch_size = suite.eval.batch_size;
    match job.task {
        Task::Train { model } if suite.models[model].external.is_some() => {
            let def = &suite.models[model];
            let ext = def.external.as_ref().expect("matched");
            let bytes = std::fs::read(&ext.path).map_err(|e| Error::io(&ext.path, e))?;
            let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
            if sha256 != ext.sha256 {
                return Err(candle_core::Error::Msg(format!(
                    "{} changed since the suite was planned (SHA-256 {sha256}, planned {}): run again",
                    ext.path.display(),
                    ext.sha256
                ))
                .into());
            }
            let net = checkpoint::load(&ext.path, ctx.device)?;
            let log = TrainLog {
                epochs: Vec::new(),
                best_epoch: 0,
                stopped_by: "imported".into(),
                regularizer: Default::default(),
                sigma_eff: None,
            };
            finish_train(ctx, job, started, model, net.as_ref(), log, None)
        }
        Task::Train { model } if job.kind == JobKind::Continue => {
            let source: JobFile<TrainOutput> = read_job(&ctx.dir(job.inputs[0]))?;
            let train = suite.models[model]
                .train
                .second_stage(&source.output.log)
                .map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "{}: continuing `{}`: {e}",
                        job.id, source.output.model
                    ))
                })?;
            let net = ctx.load_model(job.inputs[0])?;
            let splits = &ctx.data.splits;
            let all = Splits {
                train: splits.train.concat(&splits.valid)?,
                valid: splits.valid.truncate(Some(0))?,
                test: splits.test.clone(),
                identity: splits.identity.clone(),
            };
            train_job(ctx, job, started, model, net.as_ref(), &all, &train, true)
        }
        Task::Train { model } => {
            let def = &suite.models[model];
            let splits = &ctx.data.splits;
            let net = build_fitted(
                &def.spec,
                derive_seed(def.seed, INIT_STREAM),
                ctx.device,
                &splits.train.images,
            )?;
            train_job(
                ctx,
                job,
                started,
                model,
                net.as_ref(),
                splits,
                &def.train,
                false,
            )
        }
        Task::Attack { model, attack } => {
            let (def, net) = (&suite.attacks[attack], ctx.load_model(job.inputs[0])?);
            let method = def.method.build();
            let (records, outcomes, curve) = match method.min_norm() {
                Some(search) => {
                    let run = evaluate_min_norm(
                        net.as_ref(),
                        search,
                        images,
                        labels,
                        &def.eps,
                        batch_size,
                        false,
                    )?;
                    write_csv(&dir.join(DISTANCES_FILE), &run.examples)?;
                    (run.records, run.outcomes, Some(run.curve))
                }
                None => {
                    let (records, outcomes) = evaluate_attack_detailed(
                        net.as_ref(),
                        method.as_ref(),
                        images,
                        labels,
                        &def.eps,
                        batch_size,
                    )?;
                    (records, outcomes, None)
                }
            };
            write_csv(&dir.join(EXAMPLES_FILE), &outcomes)?;
            ctx.finish(
                job,
                started,
                AttackOutput {
                    model: suite.models[model].name.clone(),
                    attack: def.name.clone(),
                    records,
                    curve,
                },
            )
        }
        Task::Noise { model } => {
            let noise = suite.noise.as_ref().expect("noise jobs come from [noise]");
            let net = ctx.load_model(job.inputs[0])?;
            let records = gaussian_noise(
                net.as_ref(),
                images,
                labels,
                &noise.sigmas,
                noise.clip,
                noise.seed,
                batch_size,
            )?;
            ctx.finish(
                job,
                started,
                NoiseOutput {
                    model: suite.models[model].name.clone(),
                    records,
                },
            )
        }
        Task::Craft { source, eps } => {
            let transfer = suite
                .transfer
                .as_ref()
                .expect("craft jobs come from [transfer]");
            let source = &transfer.sources[source];
            let attack = &suite.attacks[transfer.attack];
            let members = job
                .inputs
                .iter()
                .map(|&i| ctx.load_model(i).map(Arc::<dyn Classifier>::from))
                .collect::<Result<Vec<_>>>()?;
            let net: Arc<dyn Classifier> = match members.as_slice() {
                [one] => one.clone(),
                _ => Arc::new(EnsembleModel::new(members)?),
            };
            let x_adv = craft(
                net.as_ref(),
                attack.method.build().as_ref(),
                images,
                labels,
                eps,
                batch_size,
            )?;
            let source_adv_preds = predict(net.as_ref(), &x_adv, batch_size)?;
            let cpu = x_adv.to_device(&Device::Cpu)?;
            let bytes = safetensors::serialize([("x_adv", &cpu)], None).map_err(|e| {
                Error::Candle(candle_core::Error::Msg(format!(
                    "serializing crafted examples: {e}"
                )))
            })?;
            let path = dir.join(CRAFTED_FILE);
            write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))?;
            ctx.finish(
                job,
                started,
                CraftOutput {
                    source: source.name.clone(),
                    attack: attack.name.clone(),
                    eps,
                    n: source_adv_preds.len(),
                    source_adv_preds,
                },
            )
        }
        Task::Score { craft, target } => {
            let transfer = suite
                .transfer
                .as_ref()
                .expect("score jobs come from [transfer]");
            let attack = &suite.attacks[transfer.attack];
            let crafted: JobFile<CraftOutput> = read_job(&ctx.dir(craft))?;
            let path = ctx.dir(craft).join(CRAFTED_FILE);
            let tensors = candle_core::safetensors::load(&path, ctx.device)?;
            let x_adv = tensors.get("x_adv").ok_or_else(|| {
                Error::Candle(candle_core::Error::Msg(format!(
                    "{}: no tensor `x_adv`",
                    path.display()
                )))
            })?;
            let net = ctx.load_model(job.inputs[1])?;
            let timer = Instant::now();
            let record = score_transfer(
                &crafted.output.source,
                &suite.models[target].name,
                net.as_ref(),
                images,
                x_adv,
                &crafted.output.source_adv_preds,
                labels,
                &attack.name,
                attack.method.norm(),
                crafted.output.eps,
                batch_size,
            )?;
            let seconds = timer.elapsed().as_secs_f64();
            ctx.finish(job, started, ScoreOutput { record, seconds })
        }
        Task::Predict { model } => {
            let net = ctx.load_model(job.inputs[0])?;
            let test = &ctx.data.splits.test;
            let images = test.images.to_device(ctx.device)?;
            let predictions = predict(net.as_ref(), &images, batch_size)?;
            let labels = test.labels.to_vec1::<u32>()?;
            ctx.finish(
                job,
                started,
                PredictOutput {
                    model: suite.models[model].name.clone(),
                    labels,
                    predictions,
                },
            )
        }
        Task::Visuals => {
            let def = suite
                .visuals
                .as_ref()
                .expect("visuals jobs come from [visuals]");
            let nets = job
                .inputs
                .iter()
                .map(|&i| ctx.load_model(i))
                .collect::<Result<Vec<_>>>()?;
            let output = crate::visuals::run(suite, def, &nets, images, labels, &dir)?;
            ctx.finish(job, started, output)
        }
    }
}
