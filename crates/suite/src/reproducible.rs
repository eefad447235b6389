//! What two runs of the same suite with the same seeds write identically, byte for byte, on
//! one machine: every file of the results folder except the wall times, which live in
//! `timings.csv` and in each job's `job.json` alone, and the lock file (the last run's process
//! id). Tests compare runs with it (after kills,
//! concurrent writers, thread counts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::runner::JOB_FILE;
use crate::{Error, Result};

/// Files that record wall times, and the lock file with its holder's process id.
const TIMED: [&str; 3] = ["timings.csv", JOB_FILE, crate::lock::LOCK_FILE];

/// The contents of every file under `results_dir` except [`TIMED`] ones, by relative path.
pub fn reproducible_files(results_dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if !TIMED.iter().any(|name| path.ends_with(name)) {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.insert(relative, bytes);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(results_dir, results_dir, &mut out)?;
    Ok(out)
}

/// The first difference between two results folders' [`reproducible_files`], if any: a file
/// present in one only, or a file whose bytes differ.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<String>> {
    let (fa, fb) = (reproducible_files(a)?, reproducible_files(b)?);
    for name in fa.keys().chain(fb.keys()) {
        match (fa.get(name), fb.get(name)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => return Ok(Some(format!("{} differs", name.display()))),
            (Some(_), None) => {
                return Ok(Some(format!("{} only in {}", name.display(), a.display())))
            }
            _ => return Ok(Some(format!("{} only in {}", name.display(), b.display()))),
        }
    }
    Ok(None)
}
