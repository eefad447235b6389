//! The report's own view of a results folder (docs/results.md): only the fields it draws or
//! tabulates, unknown fields ignored, so the report depends on the file layout and not on the
//! crates that write it.
//!
//! Read: `results.json` (versioned by `schema_version`; models, robustness, noise, transfer,
//! masking checks, missing jobs) and `training.csv` (the per-epoch log, optional).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `schema_version` of `results.json` this report reads.
pub const SUPPORTED_SCHEMA_VERSION: u32 = 1;

/// An Lp norm as written in the results: `"inf"` (or `"linf"`, `"l2"`, ...) or the number p.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(into = "serde_json::Value")]
pub struct Norm {
    /// `f64::INFINITY` for L∞.
    pub p: f64,
}

impl Norm {
    pub const LINF: Norm = Norm { p: f64::INFINITY };

    /// `linf`, `l2`, `l1.5`: safe in file names.
    pub fn slug(&self) -> String {
        if self.p.is_infinite() {
            "linf".to_string()
        } else {
            format!("l{}", self.p)
        }
    }
}

impl fmt::Display for Norm {
    /// `L∞`, `L2`, `L1.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.p.is_infinite() {
            f.write_str("L∞")
        } else {
            write!(f, "L{}", self.p)
        }
    }
}

impl From<Norm> for serde_json::Value {
    fn from(norm: Norm) -> Self {
        if norm.p.is_infinite() {
            "inf".into()
        } else {
            norm.p.into()
        }
    }
}

impl std::str::FromStr for Norm {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Norm, String> {
        let lower = s.trim().to_ascii_lowercase();
        let number = lower.strip_prefix('l').unwrap_or(&lower);
        if matches!(number, "inf" | "infinity" | "∞") {
            return Ok(Norm::LINF);
        }
        match number.parse::<f64>() {
            Ok(p) if p >= 1.0 => Ok(Norm { p }),
            _ => Err(format!(
                "expected a norm (\"inf\", \"l2\" or a number p >= 1), got \"{s}\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Norm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Norm, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Norm;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number p >= 1 or \"inf\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Norm, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Norm, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, p: f64) -> std::result::Result<Norm, E> {
                if p >= 1.0 {
                    Ok(Norm { p })
                } else {
                    Err(E::custom(format!("p must be >= 1, got {p}")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Norm, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

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
    #[serde(default)]
    pub masking: Vec<MaskingRow>,
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
}

impl ModelResult {
    pub fn test_accuracy(&self) -> f64 {
        1.0 - self.test_error
    }
}

/// A model under one attack at one ε (a row of `robustness.csv`).
#[derive(Clone, Debug, Deserialize)]
pub struct RobustnessRow {
    pub model: String,
    /// The suite's name for the attack.
    pub attack: String,
    /// The attack's own name, e.g. `pgd-linf`.
    #[serde(default)]
    pub method: Option<String>,
    /// `single-step`, `iterative`, `random`, `ensemble`, `other`.
    #[serde(default)]
    pub kind: Option<String>,
    pub norm: Norm,
    pub eps: f64,
    pub n: usize,
    pub clean_correct: usize,
    pub clean_accuracy: f64,
    pub adversarial_correct: usize,
    pub adversarial_accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    #[serde(default)]
    pub mean_perturbation: Option<f64>,
    /// A targeted attack's examples aimed at a class other than their label, and those
    /// classified as their target.
    #[serde(default)]
    pub targeted_n: Option<usize>,
    #[serde(default)]
    pub target_reached: Option<usize>,
    /// The budget as written where it was a fraction (`8/255`).
    #[serde(default)]
    pub eps_written: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NoiseRow {
    pub model: String,
    pub sigma: f64,
    pub clip: bool,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Examples crafted against `source`, classified by `target` (white-box when equal).
#[derive(Clone, Debug, Deserialize)]
pub struct TransferRow {
    pub source: String,
    pub target: String,
    pub attack: String,
    pub norm: Norm,
    pub eps: f64,
    pub n: usize,
    pub accuracy: f64,
    pub error: f64,
    /// Wilson interval of `accuracy`.
    pub ci_low: f64,
    pub ci_high: f64,
    #[serde(default)]
    pub agreement: Option<f64>,
}

/// A gradient-masking check (`passed = false`: the symptom was found).
#[derive(Clone, Debug, Deserialize)]
pub struct MaskingRow {
    pub model: String,
    pub check: String,
    pub attack: String,
    #[serde(default)]
    pub norm: Option<Norm>,
    pub passed: bool,
    #[serde(default)]
    pub detail: String,
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

/// Reads `results.json` and, when present, `training.csv` from `dir`.
pub fn read_results_dir(dir: &Path) -> Result<ResultsDir> {
    let results: Results =
        read_versioned_json(&dir.join("results.json"), SUPPORTED_SCHEMA_VERSION)?;
    let training_path = dir.join("training.csv");
    let training = if training_path.is_file() {
        Some(read_csv(&training_path)?)
    } else {
        None
    };
    Ok(ResultsDir {
        dir: dir.to_path_buf(),
        results,
        training,
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
    fn norms_parse_like_the_attacks_crate_writes_them() {
        let parse = |s: &str| serde_json::from_str::<Norm>(s).unwrap();
        assert_eq!(parse("\"inf\""), Norm::LINF);
        assert_eq!(parse("\"linf\""), Norm::LINF);
        assert_eq!(parse("2"), Norm { p: 2.0 });
        assert_eq!(parse("1.5"), Norm { p: 1.5 });
        assert_eq!(parse("\"l1\""), Norm { p: 1.0 });
        assert!(serde_json::from_str::<Norm>("0.5").is_err());
        assert_eq!(Norm::LINF.to_string(), "L∞");
        assert_eq!(Norm { p: 2.0 }.to_string(), "L2");
        assert_eq!(Norm { p: 2.0 }.slug(), "l2");
        assert_eq!(Norm::LINF.slug(), "linf");
    }
}
