//! `[report]`: published numbers the report sets beside this suite's own, and notes on the
//! protocol (deviations from a paper's, their reasons). Checked against the suite when it is
//! loaded; looked up in the aggregated results when `results.json` is written.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::{ModelResult, NoiseRow, RobustnessRow, TransferRow};
use crate::{Error, Result, Suite};

/// `[report]` as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReportSpec {
    /// Paragraphs listed under "Protocol notes".
    #[serde(default)]
    pub notes: Vec<String>,
    /// `[[report.reference]]` entries.
    #[serde(default, rename = "reference")]
    pub references: Vec<Reference>,
}

/// A published number and the number of this suite it is compared with.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Reference {
    /// What is compared, in words.
    pub what: String,
    /// The published error rate, in [0, 1].
    pub published: f64,
    /// Where it was published.
    pub source: String,
    /// This suite's number: `{ metric = "test-error", model = "m" }`,
    /// `{ metric = "attack-error", model, attack, eps }`,
    /// `{ metric = "transfer-error", source, target, eps }` or `{ metric = "noise-error", model, sigma }`.
    pub ours: Metric,
}

/// An error rate of the results.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "metric", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Metric {
    TestError {
        model: String,
    },
    AttackError {
        model: String,
        attack: String,
        eps: f64,
    },
    TransferError {
        source: String,
        target: String,
        eps: f64,
    },
    NoiseError {
        model: String,
        sigma: f64,
    },
}

/// One line of the comparison in `results.json` (`report.references`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRow {
    pub what: String,
    pub source: String,
    pub published: f64,
    pub metric: Metric,
    /// This suite's error rate, its Wilson 95% interval and its number of examples; `None`
    /// while the job that measures it has not run.
    pub ours: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub n: Option<usize>,
}

/// `report` in `results.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportSection {
    pub notes: Vec<String>,
    pub references: Vec<ReferenceRow>,
}

/// Every reference names a model, attack, ε or σ the suite has.
pub(crate) fn check(path: &Path, spec: &ReportSpec, suite: &Suite) -> Result<()> {
    for (i, r) in spec.references.iter().enumerate() {
        let field = |f: &str| format!("report.reference[{i}].{f}");
        if !(0.0..=1.0).contains(&r.published) {
            return Err(Error::invalid(
                path,
                field("published"),
                format!("expected an error rate in [0, 1], got {}", r.published),
            ));
        }
        let model = |f: &str, name: &str| {
            if suite.model_index(name).is_some() {
                Ok(())
            } else {
                Err(Error::invalid(
                    path,
                    field(f),
                    format!("unknown model `{name}`"),
                ))
            }
        };
        let listed = |f: &str, value: f64, list: &[f64], what: &str| {
            if list.contains(&value) {
                Ok(())
            } else {
                Err(Error::invalid(
                    path,
                    field(f),
                    format!("{value} is not among the {what} {list:?}"),
                ))
            }
        };
        match &r.ours {
            Metric::TestError { model: m } => model("ours.model", m)?,
            Metric::AttackError {
                model: m,
                attack,
                eps,
            } => {
                model("ours.model", m)?;
                let Some(a) = suite.attacks.iter().find(|a| &a.name == attack) else {
                    return Err(Error::invalid(
                        path,
                        field("ours.attack"),
                        format!("unknown attack `{attack}`"),
                    ));
                };
                if !a.attacks_model(m) {
                    return Err(Error::invalid(
                        path,
                        field("ours.attack"),
                        format!("attack `{attack}` does not run on model `{m}` (its `models`)"),
                    ));
                }
                listed("ours.eps", *eps, &a.eps, "attack's eps")?;
            }
            Metric::TransferError {
                source,
                target,
                eps,
            } => {
                let Some(t) = &suite.transfer else {
                    return Err(Error::invalid(
                        path,
                        field("ours"),
                        "transfer-error needs a [transfer] section",
                    ));
                };
                model("ours.source", source)?;
                model("ours.target", target)?;
                listed("ours.eps", *eps, &t.eps, "transfer's eps")?;
            }
            Metric::NoiseError { model: m, sigma } => {
                model("ours.model", m)?;
                let sigmas = suite.noise.as_ref().map_or(&[][..], |n| &n.sigmas[..]);
                listed("ours.sigma", *sigma, sigmas, "noise sigmas")?;
            }
        }
    }
    Ok(())
}

/// The comparison, looked up in the aggregated results. Intervals of accuracies become
/// intervals of errors: `[1 − high, 1 − low]`.
pub(crate) fn section(
    spec: &ReportSpec,
    models: &[ModelResult],
    robustness: &[RobustnessRow],
    transfer: &[TransferRow],
    noise: &[NoiseRow],
) -> ReportSection {
    let references = spec
        .references
        .iter()
        .map(|r| {
            // (error, accuracy interval low, high, n)
            let found: Option<(f64, f64, f64, usize)> = match &r.ours {
                Metric::TestError { model } => models
                    .iter()
                    .find(|m| &m.name == model)
                    .map(|m| (m.test_error, m.test_ci_low, m.test_ci_high, m.test_n)),
                Metric::AttackError { model, attack, eps } => robustness
                    .iter()
                    .find(|row| &row.model == model && &row.attack == attack && row.eps == *eps)
                    .map(|row| {
                        let acc = row.adversarial_accuracy;
                        (1.0 - acc, row.ci_low, row.ci_high, row.n)
                    }),
                Metric::TransferError {
                    source,
                    target,
                    eps,
                } => transfer
                    .iter()
                    .find(|t| &t.source == source && &t.target == target && t.eps == *eps)
                    .map(|t| (t.error, t.ci_low, t.ci_high, t.n)),
                Metric::NoiseError { model, sigma } => noise
                    .iter()
                    .find(|n| &n.model == model && n.sigma == *sigma)
                    .map(|n| (n.error, n.ci_low, n.ci_high, n.n)),
            };
            ReferenceRow {
                what: r.what.clone(),
                source: r.source.clone(),
                published: r.published,
                metric: r.ours.clone(),
                ours: found.map(|f| f.0),
                ci_low: found.map(|f| 1.0 - f.2),
                ci_high: found.map(|f| 1.0 - f.1),
                n: found.map(|f| f.3),
            }
        })
        .collect();
    ReportSection {
        notes: spec.notes.clone(),
        references,
    }
}
