//! Image-classification data sets as Candle tensors.
//!
//! Every loader returns a [`Dataset`]: images as `f32` `[N, C, H, W]` in `[0, 1]`, labels as
//! `u32` `[N]`. [`load`] reads a whole benchmark ([`Splits`]: train, validation, test) from a
//! directory, applying the validation split and the size limits of a [`DataConfig`].
//! [`Batches`] yields seeded, shuffled mini-batches.
//!
//! Formats: MNIST and Fashion-MNIST as IDX files (gzipped or not), CIFAR-10 as its binary
//! batches (full or the prefix files shipped as `partial/`).

mod batch;
mod cifar10;
mod error;
#[cfg(feature = "hub")]
pub mod hub;
mod identity;
mod idx;
mod splits;

pub use batch::Batches;
pub use cifar10::load_cifar10;
pub use error::{Error, Result};
pub use identity::{identify, identify_test, DataFile, DataIdentity};
pub use idx::{load_idx_images, load_idx_labels, load_mnist_like};
pub use splits::{default_data_dir, load, load_test, DataConfig, DatasetName, Splits, TestSplit};

use candle_core::{DType, Device, Tensor};

/// Images and labels of one split.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `f32` `[N, C, H, W]` in `[0, 1]`, on the CPU.
    pub images: Tensor,
    /// `u32` `[N]`, each `< n_classes`.
    pub labels: Tensor,
    pub n_classes: usize,
}

impl Dataset {
    /// Builds a data set from raw bytes: `pixels` holds `n * c * h * w` values in `0..=255`.
    pub fn from_u8(
        pixels: Vec<u8>,
        labels: Vec<u8>,
        shape: (usize, usize, usize, usize),
        n_classes: usize,
    ) -> Result<Self> {
        let (n, c, h, w) = shape;
        let expected = [n, c, h, w]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(pixels.len()) || labels.len() != n {
            return Err(Error::Invalid(format!(
                "{} pixels and {} labels do not fit {n} images of shape {c}x{h}x{w}",
                pixels.len(),
                labels.len()
            )));
        }
        let images: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        Ok(Self {
            images: Tensor::from_vec(images, (n, c, h, w), &Device::Cpu)?,
            labels: Tensor::from_vec(labels, n, &Device::Cpu)?,
            n_classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.dims1().expect("labels are rank 1")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(C, H, W)` of one image.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        let (_, c, h, w) = self.images.dims4().expect("images are rank 4");
        (c, h, w)
    }

    /// Rows `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            images: self.images.narrow(0, start, len)?,
            labels: self.labels.narrow(0, start, len)?,
            n_classes: self.n_classes,
        })
    }

    /// The first `limit` rows (all rows when `limit` is `None` or larger than the set).
    pub fn truncate(&self, limit: Option<usize>) -> Result<Self> {
        match limit {
            Some(limit) if limit < self.len() => self.slice(0, limit),
            _ => Ok(self.clone()),
        }
    }

    /// The rows listed in `indices`, in that order.
    pub fn select(&self, indices: &[u32]) -> Result<Self> {
        let idx = Tensor::from_slice(indices, indices.len(), self.images.device())?;
        Ok(Self {
            images: self.images.index_select(&idx, 0)?,
            labels: self.labels.index_select(&idx, 0)?,
            n_classes: self.n_classes,
        })
    }

    /// Rows of `self` followed by rows of `other`.
    pub fn concat(&self, other: &Self) -> Result<Self> {
        Ok(Self {
            images: Tensor::cat(&[&self.images, &other.images], 0)?,
            labels: Tensor::cat(&[&self.labels, &other.labels], 0)?,
            n_classes: self.n_classes.max(other.n_classes),
        })
    }

    /// Number of examples of each class.
    pub fn class_counts(&self) -> Result<Vec<usize>> {
        let mut counts = vec![0usize; self.n_classes];
        for label in self.labels.to_vec1::<u32>()? {
            counts[label as usize] += 1;
        }
        Ok(counts)
    }

    /// Images and labels moved to `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            images: self.images.to_device(device)?,
            labels: self.labels.to_device(device)?,
            n_classes: self.n_classes,
        })
    }

    /// Checks the invariants every loader promises; used by tests and by hand-built sets.
    pub fn validate(&self) -> Result<()> {
        if self.images.dtype() != DType::F32 || self.labels.dtype() != DType::U32 {
            return Err(Error::Invalid(format!(
                "expected f32 images and u32 labels, got {:?} and {:?}",
                self.images.dtype(),
                self.labels.dtype()
            )));
        }
        let n = self.images.dims4().map_err(Error::from)?.0;
        if n != self.len() {
            return Err(Error::Invalid(format!(
                "{n} images but {} labels",
                self.len()
            )));
        }
        Ok(())
    }
}
