//! Data sets fetched from the Hugging Face hub with candle-datasets (cargo feature `hub`;
//! needs network). Without the feature, data comes from files only.

use candle_core::{DType, Tensor};

use crate::{Dataset, DatasetName, Error, Result};

/// `(train, test)` of `dataset` from the hub.
pub fn fetch(dataset: DatasetName) -> Result<(Dataset, Dataset)> {
    use candle_datasets::vision;
    let (raw, shape) = match dataset {
        DatasetName::Mnist => (vision::mnist::load(), (1, 28, 28)),
        DatasetName::FashionMnist => (vision::fashion_mnist::load(), (1, 28, 28)),
        DatasetName::Cifar10 => (vision::cifar::load(), (3, 32, 32)),
    };
    let raw = raw.map_err(|e| {
        Error::Invalid(format!("fetching {dataset} from the Hugging Face hub: {e}"))
    })?;
    let convert = |images: &Tensor, labels: &Tensor| -> Result<Dataset> {
        let n = images.dim(0)?;
        let mut images = images
            .to_dtype(DType::F32)?
            .reshape((n, shape.0, shape.1, shape.2))?;
        // Some hub loaders keep raw bytes; gauntlet's images are always in [0, 1].
        if images.max_all()?.to_scalar::<f32>()? > 1.0 {
            images = (images / 255.0)?;
        }
        Ok(Dataset {
            images,
            labels: labels.to_dtype(DType::U32)?,
            n_classes: 10,
        })
    };
    Ok((
        convert(&raw.train_images, &raw.train_labels)?,
        convert(&raw.test_images, &raw.test_labels)?,
    ))
}
