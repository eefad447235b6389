//! `gauntlet prune`: the cache of a suite, less what its current plan no longer uses.

use anyhow::Result;
use gauntlet_suite::{Plan, Suite};

use crate::args::PruneArgs;

pub fn run(args: PruneArgs) -> Result<()> {
    let suite = Suite::load(&args.suite, args.data_dir.as_deref())?;
    let results_dir = args.results.join(&suite.name);
    let report = gauntlet_suite::prune(&results_dir, &Plan::new(&suite), args.dry_run)?;
    for path in report.stale_jobs.iter().chain(&report.orphan_temps) {
        println!("{}", path.display());
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    println!(
        "{}: {verb} {} stale job folders and {} orphaned temporary files ({:.1} MB)",
        results_dir.display(),
        report.stale_jobs.len(),
        report.orphan_temps.len(),
        report.bytes as f64 / 1e6
    );
    Ok(())
}
