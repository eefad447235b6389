//! The visuals job: for the `[visuals]` models, the r* maps of the first test image of each
//! class that all of them classify correctly ([`gauntlet_attacks::perturbation_views`]) and
//! the logits of one image along a fixed steepest-ascent direction
//! ([`gauntlet_attacks::logit_sweep`]). It writes `perturbations.json` and `logit_sweep.json`
//! into its job folder in the schema the report reads (docs/report.md, "Optional tensor
//! files"); aggregation copies them into the results folder.

use std::path::Path;

use candle_core::Tensor;
use gauntlet_attacks::{first_correct_per_class, logit_sweep, perturbation_views, ImageView, Norm};
use gauntlet_data::DatasetName;
use gauntlet_models::io::write_atomic;
use gauntlet_models::Classifier;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Suite, VisualsDef};

/// r* maps per model and image.
pub const PERTURBATIONS_FILE: &str = "perturbations.json";
/// Logits along a fixed direction, per model.
pub const LOGIT_SWEEP_FILE: &str = "logit_sweep.json";
/// The `schema_version` of both files (the report reads this version).
pub const TENSOR_SCHEMA_VERSION: u32 = 1;

/// `perturbations.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerturbationsFile {
    pub schema_version: u32,
    /// Empty when the class numbers are their names (digits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    pub models: Vec<ModelViews>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelViews {
    pub model: String,
    pub images: Vec<ImageView>,
}

/// `logit_sweep.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitSweepFile {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    pub sweeps: Vec<SweepRecord>,
}

/// One model's logits at `x + eps[i]·d` (`logits[i][c]` for class `c`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub model: String,
    /// Index of the image among the evaluated test images.
    pub index: usize,
    pub label: u32,
    pub norm: Norm,
    pub eps: Vec<f64>,
    pub logits: Vec<Vec<f64>>,
}

/// Output of a visuals job (beside its two files).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisualsOutput {
    pub models: Vec<String>,
    /// Indices of the images shown, one per class that has one.
    pub images: Vec<usize>,
    pub sweep_image: usize,
}

/// Computes both files for `nets` (the models of `def`, in order) on the evaluated test
/// images and writes them into `dir`.
pub(crate) fn run(
    suite: &Suite,
    def: &VisualsDef,
    nets: &[Box<dyn Classifier>],
    images: &Tensor,
    labels: &Tensor,
    dir: &Path,
) -> Result<VisualsOutput> {
    let models: Vec<&dyn Classifier> = nets.iter().map(|n| n.as_ref()).collect();
    let names: Vec<String> = def
        .models
        .iter()
        .map(|&m| suite.models[m].name.clone())
        .collect();
    let shown = first_correct_per_class(&models, images, labels, suite.eval.batch_size)?;
    let n = images.dim(0)?;
    let sweep_image = match def.sweep.image {
        Some(i) if i >= n => {
            return Err(Error::invalid(
                &suite.path,
                "visuals.sweep-image",
                format!("image {i} does not exist: the evaluated test set has {n} images"),
            ))
        }
        Some(i) => i,
        // No image every model gets right is rare enough to fall back to the first one.
        None => shown.first().copied().unwrap_or(0),
    };
    let sweep_label = labels.get(sweep_image)?.to_scalar::<u32>()?;
    let budgets: Vec<(Norm, f64)> = def.budgets.iter().map(|b| (b.norm, b.eps)).collect();
    let sweep_eps = def.sweep.eps();
    let mut views = Vec::with_capacity(models.len());
    let mut sweeps = Vec::with_capacity(models.len());
    for (model, name) in models.iter().zip(&names) {
        views.push(ModelViews {
            model: name.clone(),
            images: perturbation_views(*model, images, labels, &shown, &budgets)?,
        });
        sweeps.push(SweepRecord {
            model: name.clone(),
            index: sweep_image,
            label: sweep_label,
            norm: def.sweep.norm,
            logits: logit_sweep(
                *model,
                &images.narrow(0, sweep_image, 1)?,
                sweep_label,
                def.sweep.norm,
                &sweep_eps,
            )?,
            eps: sweep_eps.clone(),
        });
    }
    let class_names = class_names(suite.data.dataset);
    write_compact(
        &dir.join(PERTURBATIONS_FILE),
        &PerturbationsFile {
            schema_version: TENSOR_SCHEMA_VERSION,
            class_names: class_names.clone(),
            models: views,
        },
    )?;
    write_compact(
        &dir.join(LOGIT_SWEEP_FILE),
        &LogitSweepFile {
            schema_version: TENSOR_SCHEMA_VERSION,
            class_names,
            sweeps,
        },
    )?;
    Ok(VisualsOutput {
        models: names,
        images: shown,
        sweep_image,
    })
}

/// Names of the classes where the numbers are not already the names.
fn class_names(dataset: DatasetName) -> Vec<String> {
    let names: &[&str] = match dataset {
        DatasetName::Mnist => &[],
        DatasetName::FashionMnist => &[
            "T-shirt/top",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ],
        DatasetName::Cifar10 => &[
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// One line of JSON: the arrays hold thousands of numbers, one per line would be unreadable.
fn write_compact(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string(value).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}
