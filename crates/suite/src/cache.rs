//! When a job folder counts as finished: its `job.json` exists, parses *as its kind's output*,
//! records the key the plan expects, and the files beside it that later jobs and the
//! aggregation read are there. Files are written atomically and `job.json` last, so a killed
//! job leaves no `job.json`; a damaged one (truncated by a crash of the disk or a copy, left by
//! another gauntlet, or holding a `null` where a number belongs) is treated the same way, so
//! the job runs again and overwrites it instead of failing the aggregation on every rerun.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::record::{
    AttackOutput, CraftOutput, JobFile, NoiseOutput, PredictOutput, ScoreOutput, TrainOutput,
};
use crate::runner::{CRAFTED_FILE, EXAMPLES_FILE, JOB_FILE, MODEL_FILE};
use crate::visuals::VisualsOutput;
use crate::JobKind;

/// The part of a `job.json` that identifies it.
#[derive(Deserialize)]
struct Header {
    key: String,
}

/// Whether the job of `kind` with `key` has finished in `dir`.
pub fn is_finished(dir: &Path, key: &str, kind: JobKind) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(JOB_FILE)) else {
        return false;
    };
    // serde_json checks the syntax of the whole text, ignored fields too: a truncated file fails.
    if !serde_json::from_str::<Header>(&text).is_ok_and(|h| h.key == key) {
        return false;
    }
    fn parses<T: DeserializeOwned>(text: &str) -> bool {
        serde_json::from_str::<JobFile<T>>(text).is_ok()
    }
    let (readable, beside): (bool, &[&str]) = match kind {
        JobKind::Train | JobKind::Continue => {
            (parses::<TrainOutput>(&text), &[MODEL_FILE, "model.json"])
        }
        JobKind::Attack => (parses::<AttackOutput>(&text), &[EXAMPLES_FILE]),
        JobKind::Noise => (parses::<NoiseOutput>(&text), &[]),
        JobKind::Craft => (parses::<CraftOutput>(&text), &[CRAFTED_FILE]),
        JobKind::Score => (parses::<ScoreOutput>(&text), &[]),
        JobKind::Visuals => (parses::<VisualsOutput>(&text), &[]),
        JobKind::Predict => (parses::<PredictOutput>(&text), &[]),
    };
    readable && beside.iter().all(|f| dir.join(f).is_file())
}
