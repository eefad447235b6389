//! Named benchmarks, where their files live, and the train / validation / test split.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{DataFile, DataIdentity};
use crate::{cifar10, idx, Dataset, Error, Result};

/// The data sets gauntlet reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    Cifar10,
}

impl DatasetName {
    /// The folder name under a data directory, also the name used in result files.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// Validation examples held out from the end of the training set by default
    /// (pylearn2's 50k/10k split for MNIST; the Maxout CIFAR-10 recipe's 40k/10k).
    pub fn default_valid_size(self) -> usize {
        10_000
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" | "fashion_mnist" => Ok(Self::FashionMnist),
            "cifar10" | "cifar-10" => Ok(Self::Cifar10),
            other => Err(format!(
                "unknown data set `{other}`, expected one of: mnist, fashion-mnist, cifar10"
            )),
        }
    }
}

/// Which data set, where, and how much of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataConfig {
    pub dataset: DatasetName,
    /// Folder holding the data set's files; `None` looks in `data/<name>` (see [`default_data_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Examples held out from the end of the training files for validation; 0 trains on all.
    /// `None` means the data set's default ([`DatasetName::default_valid_size`]), capped at half the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
}

impl DataConfig {
    pub fn new(dataset: DatasetName) -> Self {
        Self {
            dataset,
            dir: None,
            valid_size: None,
            train_limit: None,
            valid_limit: None,
            test_limit: None,
        }
    }
}

/// The three splits of a benchmark.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    /// Empty when the configuration asks for no validation split.
    pub valid: Dataset,
    pub test: Dataset,
    /// The files read: the training files', then the test files'.
    pub identity: DataIdentity,
}

/// The test split alone, for commands that only evaluate.
#[derive(Clone, Debug)]
pub struct TestSplit {
    pub test: Dataset,
    /// The test files read.
    pub identity: DataIdentity,
}

/// Where a data set is looked for when no folder is given: `$GAUNTLET_DATA_DIR/<name>`, then
/// `data/<name>` under the working directory, then under the gauntlet source tree.
pub fn default_data_dir(dataset: DatasetName) -> PathBuf {
    let name = dataset.as_str();
    let mut candidates = Vec::new();
    if let Some(root) = std::env::var_os("GAUNTLET_DATA_DIR") {
        candidates.push(Path::new(&root).join(name));
    }
    candidates.push(Path::new("data").join(name));
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data")
            .join(name),
    );
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| candidates[candidates.len() - 2].clone())
}

/// The folder `config` names (or the default one), checked to exist.
pub(crate) fn data_folder(config: &DataConfig) -> Result<PathBuf> {
    let dir = config
        .dir
        .clone()
        .unwrap_or_else(|| default_data_dir(config.dataset));
    if !dir.is_dir() {
        return Err(Error::NoFolder {
            dataset: config.dataset.to_string(),
            dir,
        });
    }
    Ok(dir)
}

/// One split of the data set in `dir`: the training files (`train`) or the test files.
fn read_split(config: &DataConfig, dir: &Path, train: bool) -> Result<(Dataset, Vec<DataFile>)> {
    let name = config.dataset.as_str();
    match config.dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => {
            idx::load_mnist_like_identified(dir, name, if train { "train" } else { "t10k" })
        }
        DatasetName::Cifar10 => cifar10::load_cifar10_identified(dir, train),
    }
}

/// Reads the data set and applies the validation split and the limits.
pub fn load(config: &DataConfig) -> Result<Splits> {
    #[cfg(feature = "hub")]
    if config.dir.is_none() && !default_data_dir(config.dataset).is_dir() {
        let (train, test) = crate::hub::fetch(config.dataset)?;
        let identity = DataIdentity {
            dataset: config.dataset,
            files: vec![],
        };
        return split(
            config,
            &default_data_dir(config.dataset),
            train,
            test,
            identity,
        );
    }
    let dir = data_folder(config)?;
    let (full_train, mut files) = read_split(config, &dir, true)?;
    let (test, test_files) = read_split(config, &dir, false)?;
    files.extend(test_files);
    let identity = DataIdentity {
        dataset: config.dataset,
        files,
    };
    split(config, &dir, full_train, test, identity)
}

/// Reads only the test files (a folder without the training files will do) and applies the
/// test limit.
pub fn load_test(config: &DataConfig) -> Result<TestSplit> {
    #[cfg(feature = "hub")]
    if config.dir.is_none() && !default_data_dir(config.dataset).is_dir() {
        let splits = load(config)?;
        return Ok(TestSplit {
            test: splits.test,
            identity: splits.identity,
        });
    }
    let dir = data_folder(config)?;
    let (test, files) = read_split(config, &dir, false)?;
    let test = test.truncate(config.test_limit)?;
    if test.is_empty() {
        return Err(Error::Invalid(format!(
            "the test split of {} in {} is empty",
            config.dataset,
            dir.display()
        )));
    }
    Ok(TestSplit {
        test,
        identity: DataIdentity {
            dataset: config.dataset,
            files,
        },
    })
}

/// Holds out the validation split and applies the limits.
fn split(
    config: &DataConfig,
    dir: &Path,
    full_train: Dataset,
    test: Dataset,
    identity: DataIdentity,
) -> Result<Splits> {
    let name = config.dataset.as_str();
    let n = full_train.len();
    let valid_size = config
        .valid_size
        .unwrap_or_else(|| config.dataset.default_valid_size().min(n / 2));
    if valid_size >= n {
        return Err(Error::Invalid(format!(
            "valid-size {valid_size} leaves no training examples ({} has {n})",
            dir.display()
        )));
    }
    let train = full_train
        .slice(0, n - valid_size)?
        .truncate(config.train_limit)?;
    let valid = full_train
        .slice(n - valid_size, valid_size)?
        .truncate(config.valid_limit)?;
    let test = test.truncate(config.test_limit)?;
    for (split, set) in [("train", &train), ("test", &test)] {
        if set.is_empty() {
            return Err(Error::Invalid(format!(
                "the {split} split of {name} in {} is empty",
                dir.display()
            )));
        }
    }
    Ok(Splits {
        train,
        valid,
        test,
        identity,
    })
}
