//! Removing what a suite's cache no longer uses: job folders whose key is not in the current
//! plan (an edited suite, or an older [`crate::CODE_VERSION`], leaves them behind) and the
//! temporary files of writes whose process died before renaming them.

use std::path::{Path, PathBuf};

use crate::{Error, Plan, Result};

/// What [`prune`] found (and removed, unless it was a dry run).
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Folders under `jobs/` that no job of the plan reads or writes.
    pub stale_jobs: Vec<PathBuf>,
    /// `.NAME.PID.tmp` files anywhere in the results folder (job folders, `per-example/`,
    /// `models/`, the folder itself) whose writer is no longer running.
    pub orphan_temps: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
}

/// Finds the stale job folders and orphaned temporary files of `results_dir` (a suite's
/// `results/NAME/`) for `plan`, and deletes them unless `dry_run`. A missing `jobs/` folder
/// is an empty cache, not an error. Another process may be running a different version of the
/// same suite into the same folder: prune only when no such run is going on.
pub fn prune(results_dir: &Path, plan: &Plan, dry_run: bool) -> Result<PruneReport> {
    let jobs_dir = results_dir.join("jobs");
    let mut report = PruneReport::default();
    if !results_dir.is_dir() {
        return Ok(report);
    }
    // Not while a run writes here: its temporary files and job folders are in use.
    let _lock = (!dry_run)
        .then(|| crate::lock::lock_results(results_dir, false))
        .transpose()?;
    let live: std::collections::BTreeSet<String> = plan.jobs.iter().map(|j| j.dir_name()).collect();
    if jobs_dir.is_dir() {
        for entry in read_dir(&jobs_dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                let path = entry.path();
                report.bytes += size_of(&path)?;
                report.stale_jobs.push(path);
            }
        }
    }
    for file in orphan_temps_below(results_dir, &report.stale_jobs)? {
        report.bytes += size_of(&file)?;
        report.orphan_temps.push(file);
    }
    report.stale_jobs.sort();
    report.orphan_temps.sort();
    if !dry_run {
        for dir in &report.stale_jobs {
            let res = if dir.is_dir() {
                std::fs::remove_dir_all(dir)
            } else {
                std::fs::remove_file(dir)
            };
            res.map_err(|e| Error::io(dir, e))?;
        }
        for file in &report.orphan_temps {
            std::fs::remove_file(file).map_err(|e| Error::io(file, e))?;
        }
    }
    Ok(report)
}

/// The orphaned temporary files in `dir` and every folder below it but those in `skip`.
fn orphan_temps_below(dir: &Path, skip: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = orphan_temps(dir)?;
    for entry in read_dir(dir)? {
        let path = entry.path();
        // Not through symbolic links: nothing outside the results folder is touched.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && !skip.contains(&path) {
            found.extend(orphan_temps_below(&path, skip)?);
        }
    }
    Ok(found)
}

/// Deletes the orphaned temporary files anywhere in `results_dir` (the start of a run, under
/// its lock: an aggregation killed half-way leaves them in `per-example/` and `models/`).
pub(crate) fn remove_orphan_temps_below(results_dir: &Path) -> Result<()> {
    if !results_dir.is_dir() {
        return Ok(());
    }
    for file in orphan_temps_below(results_dir, &[])? {
        std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
    }
    Ok(())
}

/// The temporary files in `dir` whose writer is no longer running.
fn orphan_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir(dir)?
        .into_iter()
        .filter(|f| {
            f.file_type().is_ok_and(|t| t.is_file())
                && temp_writer(&f.file_name().to_string_lossy())
                    .is_some_and(|pid| !process_alive(pid))
        })
        .map(|f| f.path())
        .collect())
}

/// Deletes the temporary files of dead writers in a job folder (none if it does not exist).
pub(crate) fn remove_orphan_temps(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for file in orphan_temps(dir)? {
        std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|it| it.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| Error::io(dir, e))
}

fn size_of(path: &Path) -> Result<u64> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    read_dir(path)?.iter().map(|e| size_of(&e.path())).sum()
}

/// The writer's process id of a temporary file named by `gauntlet_models::io::write_atomic`
/// (`.NAME.PID.tmp`).
fn temp_writer(file_name: &str) -> Option<u32> {
    let stem = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    stem.rsplit_once('.')?.1.parse().ok()
}

/// Whether a process with this id runs; where that cannot be known (no `/proc`), assume it
/// does, so that nothing being written is removed.
pub(crate) fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::temp_writer;

    #[test]
    fn reads_the_writer_of_a_temporary_file() {
        assert_eq!(temp_writer(".job.json.4242.tmp"), Some(4242));
        assert_eq!(temp_writer(".model.safetensors.7.tmp"), Some(7));
        assert_eq!(temp_writer("job.json"), None);
        assert_eq!(temp_writer(".job.json.tmp"), None);
        assert_eq!(temp_writer(".x.notapid.tmp"), None);
    }
}
