//! Optional files with tensors for the picture figures (docs/report.md documents them):
//! `perturbations.json` (r* maps per model and image) and `logit_sweep.json` (Goodfellow et
//! al.'s Fig. 4: logits along a fixed FGSM direction).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::schema::{read_versioned_json, Lp};

/// The `schema_version` of `perturbations.json` and `logit_sweep.json` this report reads.
pub const TENSOR_SCHEMA_VERSION: u32 = 1;

/// An array as written: flat (row-major, with the image's `shape`), `[H][W]` or `[C][H][W]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Array {
    Flat(Vec<f32>),
    Hw(Vec<Vec<f32>>),
    Chw(Vec<Vec<Vec<f32>>>),
}

impl Array {
    /// The shape the nesting implies, `None` for a flat array.
    fn nested_shape(&self) -> Option<[usize; 3]> {
        match self {
            Array::Flat(_) => None,
            Array::Hw(rows) => Some([1, rows.len(), rows.first().map_or(0, Vec::len)]),
            Array::Chw(ch) => {
                let h = ch.first().map_or(0, Vec::len);
                let w = ch.first().and_then(|c| c.first()).map_or(0, Vec::len);
                Some([ch.len(), h, w])
            }
        }
    }

    fn into_flat(self) -> Vec<f32> {
        match self {
            Array::Flat(v) => v,
            Array::Hw(rows) => rows.into_iter().flatten().collect(),
            Array::Chw(ch) => ch.into_iter().flatten().flatten().collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
struct PerturbationsFile {
    #[serde(default)]
    class_names: Vec<String>,
    models: Vec<ModelImagesWire>,
}

#[derive(Clone, Debug, Deserialize)]
struct ModelImagesWire {
    model: String,
    images: Vec<ImageWire>,
}

#[derive(Clone, Debug, Deserialize)]
struct ImageWire {
    #[serde(default)]
    index: Option<usize>,
    label: u32,
    /// `[C, H, W]` or `[H, W]`; required for flat arrays.
    #[serde(default)]
    shape: Option<Vec<usize>>,
    image: Array,
    /// Prediction on the clean image.
    #[serde(default)]
    pred: Option<u32>,
    #[serde(default)]
    perturbations: Vec<PerturbationWire>,
}

#[derive(Clone, Debug, Deserialize)]
struct PerturbationWire {
    norm: Lp,
    #[serde(default)]
    eps: Option<f64>,
    r: Array,
    #[serde(default)]
    adversarial: Option<Array>,
    #[serde(default)]
    adv_label: Option<u32>,
    #[serde(default)]
    confidence: Option<f64>,
}

/// A `C × H × W` image, values row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

impl Image {
    pub fn channels(&self) -> usize {
        self.shape[0]
    }
    pub fn height(&self) -> usize {
        self.shape[1]
    }
    pub fn width(&self) -> usize {
        self.shape[2]
    }
    /// Value of channel `c` at row `y`, column `x`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.shape[1] + y) * self.shape[2] + x]
    }
    /// The mean over channels at `(y, x)`.
    pub fn mean_at(&self, y: usize, x: usize) -> f32 {
        (0..self.channels()).map(|c| self.at(c, y, x)).sum::<f32>() / self.channels() as f32
    }
    /// `max |v|` over all values.
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }
}

#[derive(Clone, Debug)]
pub struct Perturbations {
    pub class_names: Vec<String>,
    pub models: Vec<ModelImages>,
}

#[derive(Clone, Debug)]
pub struct ModelImages {
    pub model: String,
    pub images: Vec<ImagePerturbations>,
}

#[derive(Clone, Debug)]
pub struct ImagePerturbations {
    pub index: Option<usize>,
    pub label: u32,
    pub pred: Option<u32>,
    pub image: Image,
    pub perturbations: Vec<Perturbation>,
}

#[derive(Clone, Debug)]
pub struct Perturbation {
    pub norm: Lp,
    pub eps: Option<f64>,
    pub r: Image,
    /// `x + r` as written, or clipped to `[0, 1]` when the file has none.
    pub adversarial: Image,
    pub adv_label: Option<u32>,
    pub confidence: Option<f64>,
}

fn to_image(path: &Path, what: &str, array: Array, shape: Option<[usize; 3]>) -> Result<Image> {
    let shape = match (array.nested_shape(), shape) {
        (Some(nested), Some(given)) if nested != given => {
            return Err(Error::invalid(
                path,
                what,
                format!("nested array is {nested:?} but the image shape is {given:?}"),
            ))
        }
        (Some(nested), _) => nested,
        (None, Some(given)) => given,
        (None, None) => {
            return Err(Error::invalid(
                path,
                what,
                "a flat array needs the image's `shape`",
            ))
        }
    };
    let data = array.into_flat();
    let expected = shape.iter().product::<usize>();
    if expected == 0 || data.len() != expected {
        return Err(Error::invalid(
            path,
            what,
            format!(
                "expected {expected} values for shape {shape:?}, got {}",
                data.len()
            ),
        ));
    }
    Ok(Image { shape, data })
}

/// Reads and checks `perturbations.json`.
pub fn read_perturbations(path: &Path) -> Result<Perturbations> {
    let file: PerturbationsFile = read_versioned_json(path, TENSOR_SCHEMA_VERSION)?;
    let mut models = Vec::new();
    for m in file.models {
        let mut images = Vec::new();
        for (i, img) in m.images.into_iter().enumerate() {
            let what = |s: &str| format!("model `{}` image {i}: {s}", m.model);
            let shape = match img.shape.as_deref() {
                None => None,
                Some(&[h, w]) => Some([1, h, w]),
                Some(&[c, h, w]) => Some([c, h, w]),
                Some(other) => {
                    return Err(Error::invalid(
                        path,
                        what("shape"),
                        format!("expected [H, W] or [C, H, W], got {other:?}"),
                    ))
                }
            };
            let image = to_image(path, &what("image"), img.image, shape)?;
            let mut perturbations = Vec::new();
            for (k, p) in img.perturbations.into_iter().enumerate() {
                let r = to_image(
                    path,
                    &what(&format!("perturbations[{k}].r")),
                    p.r,
                    Some(image.shape),
                )?;
                let adversarial = match p.adversarial {
                    Some(a) => to_image(
                        path,
                        &what(&format!("perturbations[{k}].adversarial")),
                        a,
                        Some(image.shape),
                    )?,
                    None => Image {
                        shape: image.shape,
                        data: image
                            .data
                            .iter()
                            .zip(&r.data)
                            .map(|(x, r)| (x + r).clamp(0.0, 1.0))
                            .collect(),
                    },
                };
                perturbations.push(Perturbation {
                    norm: p.norm,
                    eps: p.eps,
                    r,
                    adversarial,
                    adv_label: p.adv_label,
                    confidence: p.confidence,
                });
            }
            images.push(ImagePerturbations {
                index: img.index,
                label: img.label,
                pred: img.pred,
                image,
                perturbations,
            });
        }
        models.push(ModelImages {
            model: m.model,
            images,
        });
    }
    Ok(Perturbations {
        class_names: file.class_names,
        models,
    })
}

#[derive(Clone, Debug, Deserialize)]
pub struct LogitSweeps {
    #[serde(default)]
    pub class_names: Vec<String>,
    pub sweeps: Vec<LogitSweep>,
}

/// The logits of one image along `x + ε·d` for a fixed direction `d` (e.g. `sign(∇ₓL)` at
/// `ε = 0`).
#[derive(Clone, Debug, Deserialize)]
pub struct LogitSweep {
    pub model: String,
    #[serde(default)]
    pub index: Option<usize>,
    pub label: u32,
    #[serde(default)]
    pub norm: Option<Lp>,
    pub eps: Vec<f64>,
    /// `logits[i][c]`: class `c` at `eps[i]`.
    pub logits: Vec<Vec<f64>>,
}

/// Reads and checks `logit_sweep.json`.
pub fn read_logit_sweeps(path: &Path) -> Result<LogitSweeps> {
    let file: LogitSweeps = read_versioned_json(path, TENSOR_SCHEMA_VERSION)?;
    for (i, s) in file.sweeps.iter().enumerate() {
        let what = format!("sweeps[{i}] (model `{}`)", s.model);
        if s.eps.is_empty() || s.eps.len() != s.logits.len() {
            return Err(Error::invalid(
                path,
                what,
                format!(
                    "needs one logits row per eps and at least one: {} eps, {} rows",
                    s.eps.len(),
                    s.logits.len()
                ),
            ));
        }
        let classes = s.logits[0].len();
        if classes == 0 || s.logits.iter().any(|row| row.len() != classes) {
            return Err(Error::invalid(
                path,
                what,
                "every logits row needs the same, non-zero number of classes",
            ));
        }
        if s.label as usize >= classes {
            return Err(Error::invalid(
                path,
                what,
                format!("label {} but {classes} classes", s.label),
            ));
        }
    }
    Ok(file)
}
