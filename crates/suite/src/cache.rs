//! When a job folder counts as finished: its `job.json` exists, parses, and records the key
//! the plan expects. Files are written atomically and `job.json` last, so a killed job
//! leaves no `job.json`; a damaged one (truncated by a crash of the disk or a copy, or left
//! by another gauntlet) is treated the same way, so the job runs again and overwrites it
//! instead of failing the aggregation or being read as done.

use std::path::Path;

use serde::Deserialize;

use crate::runner::JOB_FILE;

/// The part of a `job.json` that identifies it.
#[derive(Deserialize)]
struct Header {
    key: String,
}

/// Whether the job with `key` has finished in `dir`.
pub fn is_finished(dir: &Path, key: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(JOB_FILE)) else {
        return false;
    };
    // serde_json checks the syntax of the whole text, ignored fields too: a truncated file fails.
    serde_json::from_str::<Header>(&text).is_ok_and(|h| h.key == key)
}
