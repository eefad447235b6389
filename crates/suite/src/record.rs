//! What the suite writes: each job's output file (`jobs/<kind>-<key>/job.json`) and the rows
//! of the aggregated `results.json` and CSV tables (docs/results.md documents both).

use gauntlet_attacks::{AttackRecord, NoiseRecord, SecurityCurve, Timed, TransferRecord};
use gauntlet_data::DataConfig;
use gauntlet_models::ModelSpec;
pub use gauntlet_results::{
    Envelope, MaskingEntry, NoiseRow, RobustnessRow, SecurityCurveRow,
    TransferRecord as TransferRow,
};
use gauntlet_train::{EpochRecord, EvalResult, TrainConfig, TrainLog};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::JobKind;

/// Version of the layout of `results.json` and the CSV tables; bumped on any incompatible change.
/// (Wall times moved to `timings.csv` within version 1: no reader used them.)
pub const SCHEMA_VERSION: u32 = 1;

/// The file a finished job leaves behind, written last: its presence means the job is done.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobFile<T> {
    pub id: String,
    pub kind: JobKind,
    pub key: String,
    pub code_version: String,
    /// The resolved spec the key was computed from.
    pub spec: Value,
    /// Keys of the jobs whose outputs this one read.
    pub inputs: Vec<String>,
    /// Wall time of the whole job.
    pub seconds: f64,
    pub output: T,
}

/// Output of a training job (beside `model.safetensors` and `model.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutput {
    pub model: String,
    pub n_params: usize,
    /// The epochs' wall times summed, those of interrupted runs this job resumed included.
    pub train_seconds: f64,
    pub log: TrainLog,
    /// Clean loss and error on the whole test split (after `data.test-limit`).
    pub test: EvalResult,
    /// The settings it trained with where the job completed them when it ran (a second
    /// stage's rate, momentum and stopping objective); absent when they are the suite's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainConfig>,
}

/// Output of a predict job: the class of every test example, in test-set order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredictOutput {
    pub model: String,
    pub labels: Vec<u32>,
    pub predictions: Vec<u32>,
}

impl PredictOutput {
    pub fn errors(&self) -> usize {
        self.labels
            .iter()
            .zip(&self.predictions)
            .filter(|(y, p)| y != p)
            .count()
    }
}

/// Output of an attack job (beside `examples.csv`, one row per example and ε).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackOutput {
    pub model: String,
    pub attack: String,
    pub records: Vec<Timed<AttackRecord>>,
    /// A minimum-norm attack's security curve (its per-example distances are in
    /// `distances.csv` beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Timed<SecurityCurve>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseOutput {
    pub model: String,
    pub records: Vec<Timed<NoiseRecord>>,
}

/// Output of a craft job (beside `x_adv.safetensors`, tensor `x_adv`, f32 `[n, C, H, W]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CraftOutput {
    pub source: String,
    pub attack: String,
    pub eps: f64,
    pub n: usize,
    /// The source's predictions on its own adversarial examples.
    pub source_adv_preds: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreOutput {
    pub record: TransferRecord,
    /// Wall time of the scoring (not of crafting).
    #[serde(default)]
    pub seconds: f64,
}

/// `results/NAME/results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    pub suite: String,
    /// Version of the gauntlet crates that wrote the file.
    pub gauntlet_version: String,
    pub code_version: String,
    pub seed: u64,
    /// The data set (its folder left out).
    pub data: DataConfig,
    /// The files it was read from, with their sizes and SHA-256 as stored (absent in files
    /// written before this field).
    #[serde(default)]
    pub data_files: Vec<gauntlet_data::DataFile>,
    pub eval: EvalSettings,
    pub models: Vec<ModelResult>,
    pub robustness: Vec<RobustnessRow>,
    pub noise: Vec<NoiseRow>,
    pub transfer: Vec<TransferRow>,
    /// The minimum-norm attacks' robust accuracy at every ε (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_curves: Vec<SecurityCurveRow>,
    /// Per model and norm, the envelope over its minimum-norm attacks and each one's
    /// optimality against it (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optimality: Vec<Envelope>,
    pub masking: Vec<MaskingEntry>,
    /// Ids of the planned jobs that have no output yet; empty for a complete suite.
    pub missing: Vec<String>,
    /// The suite's `[report]`: protocol notes and published numbers beside ours.
    #[serde(default)]
    pub report: crate::references::ReportSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub test_limit: Option<usize>,
    pub batch_size: usize,
}

/// One trained model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    pub name: String,
    pub seed: u64,
    /// The suite entry whose `seeds` made this model one of its replicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `maxout-mlp`, `mlp`, `conv-maxout`, `cnn`.
    pub arch: String,
    pub spec: ModelSpec,
    pub train: TrainConfig,
    pub n_params: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_by: String,
    pub test_n: usize,
    pub test_error: f64,
    pub test_loss: f64,
    /// Wilson 95% interval of the clean test accuracy.
    pub test_ci_low: f64,
    pub test_ci_high: f64,
    /// Relative to the results folder: `models/NAME.safetensors`.
    pub checkpoint: String,
    /// SHA-256 of the checkpoint's bytes (hex): checkpoints are too large for git, so a
    /// committed results.json names the exact weights its numbers came from.
    pub checkpoint_sha256: String,
    /// Key of the training job.
    pub job: String,
    /// The model whose training this one continued (`continue`): its first stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<String>,
    /// For a model read from a file instead of trained: the path the suite gave, and the
    /// SHA-256 of the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
}

/// One row of `training.csv`: a model's epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRow {
    pub model: String,
    pub epoch: usize,
    pub lr: f64,
    pub momentum: Option<f64>,
    pub train_loss: f64,
    pub train_error: f64,
    pub valid_loss: Option<f64>,
    pub valid_error: Option<f64>,
    pub valid_adv_error: Option<f64>,
    pub valid_pgd_error: Option<f64>,
}

impl TrainingRow {
    pub fn new(model: &str, r: &EpochRecord) -> Self {
        Self {
            model: model.to_string(),
            epoch: r.epoch,
            lr: r.lr,
            momentum: r.momentum,
            train_loss: r.train_loss,
            train_error: r.train_error,
            valid_loss: r.valid_loss,
            valid_error: r.valid_error,
            valid_adv_error: r.valid_adv_error,
            valid_pgd_error: r.valid_pgd_error,
        }
    }
}

/// One row of `timings.csv`: the wall time of a job or of one part of it. Kept apart from
/// the results, which are then identical from run to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingRow {
    /// The job's id, e.g. `attack/baseline/fgsm`.
    pub job: String,
    /// `job` (the whole job), `training`, `epoch N`, `eps E`, `sigma S` or `scoring`.
    pub part: String,
    pub seconds: f64,
    /// Training epochs only.
    pub examples_per_second: Option<f64>,
}

impl TimingRow {
    pub fn new(job: &str, part: impl Into<String>, seconds: f64) -> Self {
        Self {
            job: job.to_string(),
            part: part.into(),
            seconds,
            examples_per_second: None,
        }
    }
}
