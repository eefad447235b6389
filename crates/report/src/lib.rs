//! The report: figures (PNG and SVG), `report.md` and `index.html`, drawn from a results folder
//! alone (`results.json`, `training.csv`, and the optional `perturbations.json` and
//! `logit_sweep.json`); it needs no model, no tensor library and no system font (DejaVu Sans is
//! compiled in). docs/report.md documents what is drawn and the optional files' schema.
//!
//! ```no_run
//! use std::path::Path;
//! let summary = gauntlet_report::write_report(Path::new("results/quickstart"), Path::new("report/quickstart"))?;
//! println!("{} figures, {}", summary.figures.len(), summary.report_md.display());
//! # Ok::<(), gauntlet_report::Error>(())
//! ```

mod content;
mod doc;
mod error;
mod figures;
mod plot;
pub mod schema;
mod seeds;
pub mod series;
mod stages;
pub mod tensors;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use gauntlet_results::wilson_interval;
pub use schema::{read_results_dir, ResultsDir, SUPPORTED_SCHEMA_VERSION};
pub use tensors::TENSOR_SCHEMA_VERSION;

use crate::figures::{
    AccuracyFigure, LogitSweepFigure, NoiseFigure, PerturbationFigure, SecurityCurveFigure,
    TradeoffFigure, TrainingFigure, TrainingLossFigure, TransferFigure,
};
use crate::plot::{render, Figure};

/// The optional tensor files, read from the results folder when present.
pub const PERTURBATIONS_FILE: &str = "perturbations.json";
pub const LOGIT_SWEEP_FILE: &str = "logit_sweep.json";

/// What a figure shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FigureKind {
    /// Accuracy against ε, one file per attack and norm.
    Accuracy,
    /// Robust against clean accuracy, one file per attack and norm (at its middle ε).
    Tradeoff,
    /// The transfer error matrix, one file per (attack, norm, ε).
    Transfer,
    /// Error per epoch, one panel per model.
    Training,
    /// Loss per epoch, one panel per model.
    TrainingLoss,
    /// Accuracy against noise σ.
    Noise,
    /// r* maps and adversarial images, one file per model.
    Perturbations,
    /// Logits along a fixed attack direction, one file per sweep.
    LogitSweep,
    /// Robust accuracy at every ε from the minimum-norm attacks, one file per model and norm.
    SecurityCurve,
}

/// One figure, written twice.
#[derive(Clone, Debug)]
pub struct FigureFile {
    pub kind: FigureKind,
    pub title: String,
    pub png: PathBuf,
    pub svg: PathBuf,
    /// Pixel size of the PNG (and user-unit size of the SVG).
    pub width: u32,
    pub height: u32,
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug)]
pub struct ReportSummary {
    pub report_md: PathBuf,
    pub index_html: PathBuf,
    pub figures: Vec<FigureFile>,
    /// What was left out and why (no `training.csv`, no transfer rows, ...).
    pub notes: Vec<String>,
}

impl ReportSummary {
    pub fn count(&self, kind: FigureKind) -> usize {
        self.figures.iter().filter(|f| f.kind == kind).count()
    }
}

/// `text` as a file-name part: lower-case ASCII letters, digits, `.`, `_`, `-`.
fn slug(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "x".into()
    } else {
        s
    }
}

/// Draws every figure the results allow into `report_dir/figures/` (PNG and SVG), then writes
/// `report_dir/report.md` and `report_dir/index.html`. Reads `results_dir/results.json`
/// (required; its `schema_version` must be [`SUPPORTED_SCHEMA_VERSION`]),
/// `results_dir/training.csv`, and `perturbations.json` / `logit_sweep.json` when present.
///
/// # Errors
/// Every error names its file: unreadable or malformed files, an unsupported
/// `schema_version`, inconsistent tensor arrays, a figure that fails to draw or encode.
pub fn write_report(results_dir: &Path, report_dir: &Path) -> Result<ReportSummary> {
    let data = read_results_dir(results_dir)?;
    let perturbations_path = results_dir.join(PERTURBATIONS_FILE);
    let perturbations = if perturbations_path.is_file() {
        Some(tensors::read_perturbations(&perturbations_path)?)
    } else {
        None
    };
    let sweep_path = results_dir.join(LOGIT_SWEEP_FILE);
    let sweeps = if sweep_path.is_file() {
        Some(tensors::read_logit_sweeps(&sweep_path)?)
    } else {
        None
    };

    let fig_dir = report_dir.join("figures");
    std::fs::create_dir_all(&fig_dir).map_err(|e| Error::io(&fig_dir, e))?;

    let results = &data.results;
    let order = series::model_order(results);
    let mut out = Writer {
        dir: fig_dir,
        used: HashSet::new(),
        figures: Vec::new(),
    };
    let mut notes = Vec::new();

    let panels = series::accuracy_panels(results);
    let mut accuracy_figs = Vec::new();
    for panel in &panels {
        let title = format!("Accuracy vs ε: {} ({})", panel.attack, panel.norm);
        let stem = format!("accuracy-{}-{}", slug(&panel.attack), panel.norm.slug());
        accuracy_figs.push(out.draw(
            &AccuracyFigure {
                panel,
                order: &order,
            },
            &stem,
            FigureKind::Accuracy,
            title,
        )?);
    }
    let tradeoffs = series::tradeoff_panels(&panels);
    let mut tradeoff_figs = Vec::new();
    for panel in &tradeoffs {
        let title = format!(
            "Robust vs clean accuracy: {} ({}) at ε = {}",
            panel.attack,
            panel.norm,
            plot::fmt_num(panel.eps)
        );
        let stem = format!("tradeoff-{}-{}", slug(&panel.attack), panel.norm.slug());
        tradeoff_figs.push(out.draw(
            &TradeoffFigure {
                panel,
                order: &order,
            },
            &stem,
            FigureKind::Tradeoff,
            title,
        )?);
    }
    if panels.is_empty() {
        notes.push(
            "results.json has no robustness rows: no accuracy or trade-off figures.".to_string(),
        );
    }

    let curve_panels = series::curve_panels(results);
    let mut curve_figs = Vec::new();
    for panel in &curve_panels {
        curve_figs.push(out.draw(
            &SecurityCurveFigure { panel },
            &format!("security-{}-{}", slug(&panel.model), panel.norm.slug()),
            FigureKind::SecurityCurve,
            format!("Security curves: {} ({})", panel.model, panel.norm),
        )?);
    }

    let matrices = series::transfer_matrices(results);
    let mut transfer_figs = Vec::new();
    for matrix in &matrices {
        let title = format!(
            "Transfer error: {} ({}) at ε = {}",
            matrix.attack,
            matrix.norm,
            plot::fmt_num(matrix.eps)
        );
        let stem = format!(
            "transfer-{}-{}-eps{}",
            slug(&matrix.attack),
            matrix.norm.slug(),
            plot::fmt_num(matrix.eps)
        );
        transfer_figs.push(out.draw(
            &TransferFigure { matrix },
            &stem,
            FigureKind::Transfer,
            title,
        )?);
    }
    if matrices.is_empty() {
        notes.push("results.json has no transfer rows: no transfer matrix.".to_string());
    }

    let noise = series::noise_series(results);
    let noise_fig = if noise.is_empty() {
        notes.push("results.json has no noise rows: no noise figure.".to_string());
        None
    } else {
        Some(out.draw(
            &NoiseFigure {
                series: &noise,
                order: &order,
            },
            "noise",
            FigureKind::Noise,
            "Error under Gaussian noise".to_string(),
        )?)
    };

    let curves = data
        .training
        .as_deref()
        .map(|rows| series::training_curves(rows, &order, &data.results.models))
        .unwrap_or_default();
    let (training_fig, training_loss_fig) = if curves.is_empty() {
        notes.push(match data.training {
            None => "no training.csv in the results folder: no training curves.".to_string(),
            Some(_) => "training.csv has no rows: no training curves.".to_string(),
        });
        (None, None)
    } else {
        (
            Some(out.draw(
                &TrainingFigure {
                    curves: &curves,
                    order: &order,
                },
                "training",
                FigureKind::Training,
                "Training curves: error per epoch (log scale)".to_string(),
            )?),
            Some(out.draw(
                &TrainingLossFigure {
                    curves: &curves,
                    order: &order,
                },
                "training-loss",
                FigureKind::TrainingLoss,
                "Training curves: loss per epoch".to_string(),
            )?),
        )
    };

    let mut perturbation_figs = Vec::new();
    match &perturbations {
        Some(p) => {
            for model in &p.models {
                if model.images.is_empty() {
                    continue;
                }
                perturbation_figs.push(out.draw(
                    &PerturbationFigure {
                        model,
                        class_names: &p.class_names,
                    },
                    &format!("perturbations-{}", slug(&model.model)),
                    FigureKind::Perturbations,
                    format!("Optimal perturbations r*: {}", model.model),
                )?);
            }
        }
        None => notes.push(format!("no {PERTURBATIONS_FILE}: no perturbation maps.")),
    }
    let mut sweep_figs = Vec::new();
    match &sweeps {
        Some(s) => {
            for (k, sweep) in s.sweeps.iter().enumerate() {
                let which = sweep.index.map_or(format!("{k}"), |i| format!("{i}"));
                let image = sweep
                    .index
                    .map(|i| format!(", image #{i}"))
                    .unwrap_or_default();
                sweep_figs.push(out.draw(
                    &LogitSweepFigure {
                        sweep,
                        class_names: &s.class_names,
                    },
                    &format!("logit-sweep-{}-{which}", slug(&sweep.model)),
                    FigureKind::LogitSweep,
                    format!(
                        "Logit sweep: {}{image} (label {})",
                        sweep.model, sweep.label
                    ),
                )?);
            }
        }
        None => notes.push(format!("no {LOGIT_SWEEP_FILE}: no logit sweep.")),
    }

    let figs = content::Figures {
        accuracy: &accuracy_figs,
        tradeoff: &tradeoff_figs,
        transfer: &transfer_figs,
        curves: &curve_figs,
        noise: noise_fig.as_ref(),
        training: training_fig.as_ref(),
        training_loss: training_loss_fig.as_ref(),
        perturbations: &perturbation_figs,
        sweeps: &sweep_figs,
    };
    let blocks = content::document(
        &data,
        &content::Data {
            panels: &panels,
            matrices: &matrices,
            curves: &curve_panels,
            noise: &noise,
        },
        &figs,
        report_dir,
        &notes,
    );
    let report_md = report_dir.join("report.md");
    write_atomic(&report_md, doc::to_markdown(&blocks).as_bytes())?;
    let index_html = report_dir.join("index.html");
    let page_title = format!("gauntlet report: {}", results.suite);
    write_atomic(&index_html, doc::to_html(&page_title, &blocks).as_bytes())?;
    Ok(ReportSummary {
        report_md,
        index_html,
        figures: out.figures,
        notes,
    })
}

/// Renders figures under unique stems and remembers them.
struct Writer {
    dir: PathBuf,
    used: HashSet<String>,
    figures: Vec<FigureFile>,
}

impl Writer {
    fn draw(
        &mut self,
        fig: &impl Figure,
        stem: &str,
        kind: FigureKind,
        title: String,
    ) -> Result<FigureFile> {
        let mut unique = stem.to_string();
        let mut k = 2;
        while !self.used.insert(unique.clone()) {
            unique = format!("{stem}-{k}");
            k += 1;
        }
        let (png, svg) = render(fig, &self.dir, &unique)?;
        let (width, height) = fig.size();
        let file = FigureFile {
            kind,
            title,
            png,
            svg,
            width,
            height,
        };
        self.figures.push(file.clone());
        Ok(file)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_are_file_safe() {
        assert_eq!(super::slug("PGD L2/x"), "pgd-l2-x");
        assert_eq!(super::slug("maxout_l2"), "maxout_l2");
    }
}
