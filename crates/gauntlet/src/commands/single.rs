//! What a single command (`eval`, `attack`, `noise`, `transfer`) leaves in its `--out` folder: a results.json
//! of the suite's schema (docs/results.md), with the provenance a suite records (gauntlet
//! version, the model file's SHA-256, the data files' hashes, the resolved attack), and the
//! suite's CSV tables, so that `gauntlet report DIR` draws it like a suite's folder.

use std::path::Path;

use anyhow::{Context, Result};
use gauntlet_attacks::{wilson_interval, MaskingFlag};
use gauntlet_data::{DataConfig, Dataset};
use gauntlet_models::Classifier;
use gauntlet_suite::record::{
    EvalSettings, MaskingEntry, ModelResult, NoiseRow, Results, RobustnessRow, TransferRow,
    SCHEMA_VERSION,
};
use gauntlet_suite::CODE_VERSION;
use gauntlet_train::{evaluate, EvalResult, TrainConfig};
use sha2::{Digest, Sha256};

use gauntlet_results::{
    SecurityCurveRow, NOISE_COLUMNS, ROBUSTNESS_COLUMNS, SECURITY_CURVE_COLUMNS, TRANSFER_COLUMNS,
};

use crate::output::{write_json, write_table};

/// The model's name in the results: its file stem, or its folder's name for the
/// `DIR/model.safetensors` of `gauntlet train`.
pub fn model_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    match stem.as_deref() {
        Some("model") | None => path
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .or(stem),
        Some(_) => stem,
    }
    .unwrap_or_else(|| path.display().to_string())
}

/// The model as results.json lists it: clean accuracy on the same test images, and the
/// file it came from with its SHA-256 (the weights' identity; it was not trained here).
pub fn model_result(
    path: &Path,
    model: &dyn Classifier,
    test: &Dataset,
    batch_size: usize,
    seed: u64,
) -> Result<ModelResult> {
    let clean = evaluate(model, test, batch_size, test.images.device())
        .with_context(|| format!("evaluating {}", path.display()))?;
    described(path, model, &clean, seed)
}

/// [`model_result`] from a clean evaluation already made.
pub fn described(
    path: &Path,
    model: &dyn Classifier,
    clean: &EvalResult,
    seed: u64,
) -> Result<ModelResult> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let (test_ci_low, test_ci_high) = wilson_interval(clean.correct(), clean.n);
    let spec = model.spec().clone();
    Ok(ModelResult {
        name: model_name(path),
        seed,
        group: None,
        arch: spec.arch.kind().to_string(),
        n_params: model.params().n_scalars(),
        spec,
        train: TrainConfig::default(),
        best_epoch: 0,
        epochs_run: 0,
        stopped_by: "imported".into(),
        test_n: clean.n,
        test_error: clean.error,
        test_loss: clean.loss,
        test_ci_low,
        test_ci_high,
        checkpoint: path.display().to_string(),
        checkpoint_sha256: sha256.clone(),
        job: String::new(),
        continues: None,
        source: Some(path.display().to_string()),
        source_sha256: Some(sha256),
    })
}

/// The results of one command: `name` is the command and what it ran (`attack-pgd-linf`).
pub struct SingleResults {
    pub name: String,
    pub seed: u64,
    pub models: Vec<ModelResult>,
    pub robustness: Vec<RobustnessRow>,
    pub noise: Vec<NoiseRow>,
    pub transfer: Vec<TransferRow>,
    /// A minimum-norm attack's robust accuracy at every ε.
    pub security_curves: Vec<SecurityCurveRow>,
    /// The first model's checks.
    pub masking: Vec<MaskingFlag>,
}

impl SingleResults {
    pub fn results(&self, data: &DataConfig, batch_size: usize) -> Result<Results> {
        let test_limit = data.test_limit;
        let mut data = data.clone();
        // The files the command read: the test split's.
        let data_files = gauntlet_data::identify_test(&data)?.files;
        // As a suite records it: the data set and its limits, not this machine's folder.
        data.dir = None;
        Ok(Results {
            schema_version: SCHEMA_VERSION,
            suite: self.name.clone(),
            gauntlet_version: env!("CARGO_PKG_VERSION").to_string(),
            code_version: CODE_VERSION.to_string(),
            seed: self.seed,
            data,
            data_files,
            eval: EvalSettings {
                test_limit,
                batch_size,
            },
            models: self.models.clone(),
            robustness: self.robustness.clone(),
            noise: self.noise.clone(),
            transfer: self.transfer.clone(),
            security_curves: self.security_curves.clone(),
            optimality: vec![],
            masking: self
                .masking
                .iter()
                .map(|flag| MaskingEntry {
                    model: self.models[0].name.clone(),
                    flag: flag.clone(),
                })
                .collect(),
            missing: vec![],
            report: Default::default(),
        })
    }

    /// results.json and the tables beside it (robustness.csv, noise.csv) into `out`.
    pub fn write(&self, out: &Path, results: &Results) -> Result<()> {
        write_json(&out.join("results.json"), results)?;
        if !self.robustness.is_empty() {
            write_table(
                &out.join("robustness.csv"),
                &self.robustness,
                ROBUSTNESS_COLUMNS,
            )?;
        }
        if !self.noise.is_empty() {
            write_table(&out.join("noise.csv"), &self.noise, NOISE_COLUMNS)?;
        }
        if !self.transfer.is_empty() {
            write_table(&out.join("transfer.csv"), &self.transfer, TRANSFER_COLUMNS)?;
        }
        let points: Vec<_> = self
            .security_curves
            .iter()
            .flat_map(SecurityCurveRow::point_rows)
            .collect();
        if !points.is_empty() {
            write_table(
                &out.join("security-curves.csv"),
                &points,
                SECURITY_CURVE_COLUMNS,
            )?;
        }
        Ok(())
    }
}
