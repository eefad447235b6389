//! The training configuration file (`gauntlet train --config FILE`): data, model, recipe, seed.

use std::path::Path;

use anyhow::{Context, Result};
use gauntlet_data::DataConfig;
use gauntlet_models::{Arch, Preprocess};
use gauntlet_train::TrainConfig;
use serde::{Deserialize, Serialize};

/// One model to train, as written in TOML:
///
/// ```toml
/// name = "maxout-short"
/// seed = 1
/// [data]
/// dataset = "mnist"
/// [model]
/// arch = { kind = "maxout-mlp" }
/// [train]
/// epochs = 25
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    pub name: String,
    /// Every random choice (initial weights, shuffling, dropout masks) derives from it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelEntry,
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_seed() -> u64 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelEntry {
    pub arch: Arch,
    /// What the model does to its input first, e.g. `{ kind = "gcn-zca" }` (fitted on the
    /// training split), as in a suite's `[[model]]`.
    #[serde(default)]
    pub preprocess: Preprocess,
}

impl RunConfig {
    /// Reads and checks a configuration file; errors name the file, line and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: RunConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .train
            .validate()
            .with_context(|| format!("{}: [train]", path.display()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "name = \"x\"\n[data]\ndataset = \"mnist\"\n[model]\narch = { kind = \"maxout-mlp\" }\n[train]\nepochz = 3\n").unwrap();
        let err = format!("{:#}", RunConfig::from_file(&path).unwrap_err());
        assert!(
            err.contains("bad.toml") && err.contains("epochz") && err.contains("line 7"),
            "{err}"
        );
        std::fs::write(&path, "name = \"x\"\n[data]\ndataset = \"mnist\"\n[model]\narch = { kind = \"maxout-mlp\" }\n[train]\nepochs = 0\n").unwrap();
        let err = format!("{:#}", RunConfig::from_file(&path).unwrap_err());
        assert!(err.contains("bad.toml") && err.contains("epochs"), "{err}");
    }

    #[test]
    fn the_committed_recipes_parse() {
        let suites = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../suites/train");
        let mut n = 0;
        for entry in std::fs::read_dir(&suites).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::from_file(&path).unwrap();
                n += 1;
            }
        }
        assert!(
            n >= 2,
            "expected the short and the full recipe in {}",
            suites.display()
        );
    }
}
