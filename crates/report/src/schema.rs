//! The report's view of a results folder (docs/results.md): the result rows are the
//! `gauntlet-results` records every writer uses (serde only, no tensors); the rest are only
//! the fields the report draws or tabulates, unknown fields ignored.
//!
//! Read: `results.json` (versioned by `schema_version`; models, robustness, noise, transfer,
//! masking checks, missing jobs), `training.csv` (the per-epoch log, optional) and
//! `predictions.csv` (every model's class per test example, optional).

use std::path::{Path, PathBuf};

pub use gauntlet_results::{
    AttackKind, Envelope, Lp, MaskingEntry, NoiseRow, RobustnessRow, SecurityCurveRow,
    TransferRecord as TransferRow,
};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The `schema_version` of `results.json` this report reads.
pub const SUPPORTED_SCHEMA_VERSION: u32 = 1;

/// `results.json`, the fields the report uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    pub suite: String,
    #[serde(default)]
    pub gauntlet_version: Option<String>,
    #[serde(default)]
    pub code_version: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The data set description (`dataset`, limits), shown as is.
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub models: Vec<ModelResult>,
    #[serde(default)]
    pub robustness: Vec<RobustnessRow>,
    #[serde(default)]
    pub noise: Vec<NoiseRow>,
    #[serde(default)]
    pub transfer: Vec<TransferRow>,
    /// The minimum-norm attacks' robust accuracy at every ε.
    #[serde(default)]
    pub security_curves: Vec<SecurityCurveRow>,
    /// Per model and norm, the envelope of its minimum-norm attacks.
    #[serde(default)]
    pub optimality: Vec<Envelope>,
    #[serde(default)]
    pub masking: Vec<MaskingEntry>,
    #[serde(default)]
    pub missing: Vec<String>,
    /// The suite's protocol notes and published numbers (absent before gauntlet 0.1's
    /// `[report]` section: empty).
    #[serde(default)]
    pub report: ReportSection,
}

/// `report` in `results.json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReportSection {
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub references: Vec<ReferenceRow>,
}

/// A published error rate beside this suite's (`ours` is `None` while its job has not run).
#[derive(Clone, Debug, Deserialize)]
pub struct ReferenceRow {
    pub what: String,
    pub source: String,
    pub published: f64,
    #[serde(default)]
    pub ours: Option<f64>,
    #[serde(default)]
    pub ci_low: Option<f64>,
    #[serde(default)]
    pub ci_high: Option<f64>,
    #[serde(default)]
    pub n: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ModelResult {
    pub name: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The suite entry whose `seeds` made this model one of its replicates.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub n_params: Option<usize>,
    #[serde(default)]
    pub best_epoch: Option<usize>,
    #[serde(default)]
    pub epochs_run: Option<usize>,
    #[serde(default)]
    pub stopped_by: Option<String>,
    pub test_n: usize,
    pub test_error: f64,
    #[serde(default)]
    pub test_loss: Option<f64>,
    pub test_ci_low: f64,
    pub test_ci_high: f64,
    /// The training config as results.json records it (`adversarial-validation`,
    /// `regularizer`, ...); absent for imported models.
    #[serde(default)]
    pub train: Option<serde_json::Value>,
    /// The model's spec (architecture, input, classes) as results.json records it.
    #[serde(default)]
    pub spec: Option<serde_json::Value>,
    /// The model whose training this one continued (a second stage).
    #[serde(default)]
    pub continues: Option<String>,
}

impl ModelResult {
    pub fn test_accuracy(&self) -> f64 {
        1.0 - self.test_error
    }

    fn train_key(&self, key: &str) -> Option<&serde_json::Value> {
        self.train.as_ref()?.get(key)
    }

    /// The norm and ε of the attacked validation check, if training ran one: the configured
    /// one, else an Lp regularizer's own (as the trainer chooses).
    pub fn adversarial_check(&self) -> Option<(Lp, f64)> {
        let threat = |v: &serde_json::Value| Some((lp_of(v.get("p")?)?, v.get("eps")?.as_f64()?));
        self.train_key("adversarial-validation")
            .and_then(threat)
            .or_else(|| {
                let r = self.train_key("regularizer")?;
                (r.get("kind")?.as_str()? == "lp")
                    .then(|| threat(r))
                    .flatten()
            })
    }

    /// The regularizer's kind and norm (`("lp", L2)`), `None` without one.
    pub fn regularizer(&self) -> Option<(String, Option<Lp>)> {
        let r = self.train_key("regularizer")?;
        let kind = r.get("kind")?.as_str()?;
        (kind != "none").then(|| (kind.to_string(), r.get("p").and_then(lp_of)))
    }
}

/// A norm as results.json writes it: `"inf"` or a number.
fn lp_of(v: &serde_json::Value) -> Option<Lp> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// A row of `training.csv`: one model's epoch.
#[derive(Clone, Debug, Deserialize)]
pub struct TrainingRow {
    pub model: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub train_error: f64,
    #[serde(default)]
    pub valid_loss: Option<f64>,
    #[serde(default)]
    pub valid_error: Option<f64>,
    #[serde(default)]
    pub valid_adv_error: Option<f64>,
    /// The 10-step PGD check beside the single-step one (absent in older files).
    #[serde(default)]
    pub valid_pgd_error: Option<f64>,
}

/// Everything read from a results folder.
#[derive(Clone, Debug)]
pub struct ResultsDir {
    pub dir: PathBuf,
    pub results: Results,
    /// `None` when `training.csv` is absent.
    pub training: Option<Vec<TrainingRow>>,
    /// `None` when `predictions.csv` is absent.
    pub predictions: Option<Predictions>,
    /// `timings.csv` (wall times, kept out of results.json); empty when absent.
    pub timings: Vec<TimingRow>,
}

/// A row of `timings.csv`.
#[derive(Clone, Debug, Deserialize)]
pub struct TimingRow {
    /// The job's id: `train/MODEL`, `continue/MODEL`, ...
    pub job: String,
    /// `job`, `training`, `epoch N`, ...
    pub part: String,
    pub seconds: f64,
}

impl ResultsDir {
    /// Wall time of model `model`'s training epochs (its `train/` or `continue/` job).
    pub fn training_seconds(&self, model: &str) -> Option<f64> {
        self.timings
            .iter()
            .find(|t| {
                t.part == "training"
                    && (t.job == format!("train/{model}") || t.job == format!("continue/{model}"))
            })
            .map(|t| t.seconds)
    }
}

/// `predictions.csv`: the label and each model's class for every test example.
#[derive(Clone, Debug)]
pub struct Predictions {
    pub labels: Vec<u32>,
    pub columns: Vec<(String, Vec<u32>)>,
}

impl Predictions {
    pub fn column(&self, model: &str) -> Option<&[u32]> {
        self.columns
            .iter()
            .find(|(name, _)| name == model)
            .map(|(_, c)| c.as_slice())
    }

    fn read(path: &Path) -> Result<Predictions> {
        let csv_error = |error| Error::Csv {
            path: path.to_path_buf(),
            error,
        };
        let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
        let header = reader.headers().map_err(csv_error)?.clone();
        if header.len() < 2 || &header[0] != "index" || &header[1] != "label" {
            return Err(Error::invalid(
                path,
                "header",
                "expected `index,label` followed by one column per model",
            ));
        }
        let mut labels = Vec::new();
        let mut columns: Vec<(String, Vec<u32>)> = header
            .iter()
            .skip(2)
            .map(|h| (h.to_string(), Vec::new()))
            .collect();
        for (row, record) in reader.records().enumerate() {
            let record = record.map_err(csv_error)?;
            let number = |i: usize| {
                record[i].parse::<u32>().map_err(|_| {
                    Error::invalid(
                        path,
                        format!("row {} column `{}`", row + 1, &header[i]),
                        format!("expected a class number, got `{}`", &record[i]),
                    )
                })
            };
            if number(0)? as usize != row {
                return Err(Error::invalid(
                    path,
                    format!("row {}", row + 1),
                    "indices must count 0, 1, 2, ...",
                ));
            }
            labels.push(number(1)?);
            for (i, (_, column)) in columns.iter_mut().enumerate() {
                column.push(number(i + 2)?);
            }
        }
        Ok(Predictions { labels, columns })
    }
}

/// Reads `path` and checks its `schema_version` against `supported` before deserialising it
/// as `T`, so that an old file gets a version error, not a missing-field error.
pub(crate) fn read_versioned_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    supported: u32,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json = |error| Error::Json {
        path: path.to_path_buf(),
        error,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
    let found = match value.get("schema_version") {
        None => {
            return Err(Error::MissingSchemaVersion {
                path: path.to_path_buf(),
            })
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            Error::invalid(
                path,
                "schema_version",
                format!("expected a non-negative integer, got {v}"),
            )
        })?,
    };
    if found != u64::from(supported) {
        return Err(Error::SchemaVersion {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    serde_json::from_value(value).map_err(json)
}

/// Reads `results.json` and, when present, `training.csv`, `predictions.csv` and
/// `timings.csv` from `dir`.
pub fn read_results_dir(dir: &Path) -> Result<ResultsDir> {
    let results: Results =
        read_versioned_json(&dir.join("results.json"), SUPPORTED_SCHEMA_VERSION)?;
    let training_path = dir.join("training.csv");
    let training = if training_path.is_file() {
        Some(read_csv(&training_path)?)
    } else {
        None
    };
    let predictions_path = dir.join("predictions.csv");
    let predictions = if predictions_path.is_file() {
        let p = Predictions::read(&predictions_path)?;
        for m in &results.models {
            if p.column(&m.name).is_some() && m.test_n != p.labels.len() {
                return Err(Error::invalid(
                    &predictions_path,
                    &m.name,
                    format!(
                        "{} rows, but results.json tests `{}` on {} examples",
                        p.labels.len(),
                        m.name,
                        m.test_n
                    ),
                ));
            }
        }
        Some(p)
    } else {
        None
    };
    let timings_path = dir.join("timings.csv");
    let timings = if timings_path.is_file() {
        read_csv(&timings_path)?
    } else {
        Vec::new()
    };
    Ok(ResultsDir {
        dir: dir.to_path_buf(),
        results,
        training,
        predictions,
        timings,
    })
}

fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let csv_error = |error| Error::Csv {
        path: path.to_path_buf(),
        error,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(csv_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_record_gives_its_check_and_regularizer() {
        let m: ModelResult = serde_json::from_value(serde_json::json!({
            "name": "m", "test_n": 10, "test_error": 0.1, "test_ci_low": 0.0, "test_ci_high": 0.2,
            "train": {
                "adversarial-validation": { "p": "inf", "eps": 0.25, "n": 1000 },
                "regularizer": { "kind": "lp", "p": 2, "eps": 1.0, "alpha": 0.5 }
            }
        }))
        .unwrap();
        let (p, eps) = m.adversarial_check().unwrap();
        assert!(p.p.is_infinite() && eps == 0.25);
        let (kind, p) = m.regularizer().unwrap();
        assert_eq!((kind.as_str(), p.map(|p| p.p)), ("lp", Some(2.0)));
        let plain: ModelResult = serde_json::from_value(serde_json::json!({
            "name": "m", "test_n": 10, "test_error": 0.1, "test_ci_low": 0.0, "test_ci_high": 0.2,
            "train": { "regularizer": { "kind": "none" } }
        }))
        .unwrap();
        assert!(plain.regularizer().is_none() && plain.adversarial_check().is_none());
        // No check configured: an Lp regularizer's threat, as the trainer uses it.
        let own: ModelResult = serde_json::from_value(serde_json::json!({
            "name": "m", "test_n": 10, "test_error": 0.1, "test_ci_low": 0.0, "test_ci_high": 0.2,
            "train": {
                "adversarial-validation": null,
                "regularizer": { "kind": "lp", "p": 2, "eps": 1.5, "alpha": 0.5 }
            }
        }))
        .unwrap();
        let (p, eps) = own.adversarial_check().unwrap();
        assert_eq!((p.p, eps), (2.0, 1.5));
    }
}
