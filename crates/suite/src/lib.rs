//! Benchmark suites: one TOML file describes a whole benchmark — data, models and how to train
//! them, attacks, transfer, noise — and [`run_suite`] runs it, cached and resumable, into
//! `results/NAME/` (docs/suites.md documents the file, docs/results.md what is written).
//!
//! The pieces, in the order a run uses them:
//!
//! - [`spec`]: the wire types ([`SuiteSpec`], `deny_unknown_fields`, kebab-case) and `like`
//!   inheritance between model entries, merged on TOML values before typed deserialisation;
//!   syntax and schema errors carry file:line:column.
//! - [`Suite`] ([`resolve`]): the checked suite, every cross-field invariant verified once.
//! - [`Plan`]: the DAG of [`Job`]s with stable ids and content keys (a hash of the job's
//!   resolved spec, its inputs' keys, [`CODE_VERSION`] and the data set).
//! - [`runner`]: one folder per job key, atomic writes, `job.json` last; finished jobs are
//!   skipped; stages run in order, a stage's jobs on `jobs` threads; `--shard i/n` runs a
//!   deterministic share of every stage; progress goes to a [`SuiteObserver`].
//! - [`write`]: aggregation of the job outputs into `results.json` and the CSV tables
//!   ([`merge_suite`] runs it alone, after shards); [`visuals`] writes the report's
//!   `perturbations.json` and `logit_sweep.json`.
//!
//! ```no_run
//! use std::path::Path;
//! use gauntlet_suite::{run_suite, RunOptions};
//! let summary = run_suite(Path::new("suites/quickstart.toml"), &RunOptions::default())?;
//! println!("{} jobs ran, {} were cached", summary.executed(), summary.count(gauntlet_suite::JobStatus::Cached));
//! # Ok::<(), gauntlet_suite::Error>(())
//! ```

mod cache;
mod error;
pub mod lock;
mod plan;
mod prune;
pub mod record;
pub mod references;
pub mod reproducible;
pub mod resolve;
pub mod runner;
pub mod spec;
pub mod visuals;
pub mod write;

pub use error::{Error, Result};
pub use plan::{canonical_json, Job, JobKind, Plan, Stage, Task, CODE_VERSION, INIT_STREAM};
pub use prune::{prune, PruneReport};
pub use resolve::{
    AttackDef, Budget, EvalOptions, ModelDef, NoiseDef, SourceDef, Suite, SweepDef, TransferDef,
    VisualsDef,
};
pub use runner::{
    merge_suite, run_suite, run_suite_with, JobReport, JobStatus, NoProgress, RunOptions,
    RunSummary, SuiteObserver,
};
pub use spec::SuiteSpec;

/// Plans a suite without touching the results folder: its jobs, ids and keys.
pub fn plan_suite(
    path: &std::path::Path,
    data_dir: Option<&std::path::Path>,
) -> Result<(Suite, Plan)> {
    let suite = Suite::load(path, data_dir)?;
    let plan = Plan::new(&suite);
    Ok((suite, plan))
}
