//! Integration tests of gauntlet-suite: suite files in temporary folders, tiny Maxout models
//! trained briefly on the first 500 MNIST images of the repository's data/mnist.

mod attack_kinds;
mod errors;
mod fuzz;
mod imported;
mod integrity;
mod plan;
mod prune;
mod references;
mod reliability;
mod runs;
mod shipped;
mod visuals;

use std::path::{Path, PathBuf};

/// The repository's MNIST folder.
pub fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

/// A small complete suite: two models (one `like` the other), three attacks, transfer, noise.
/// `{data}` is replaced by the MNIST folder.
pub const TINY: &str = r#"
name = "tiny"
seed = 3
data = { dataset = "mnist", dir = "{data}", train-limit = 500, valid-size = 1000, valid-limit = 100, test-limit = 100 }

[[model]]
name = "base"
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 1, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[model]]
name = "fgsm-trained"
like = "base"
regularizer = { kind = "lp", p = "inf", eps = 0.1, alpha = 0.5 }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1, 0.2]

[[attack]]
name = "pgd"
kind = "pgd"
norm = "inf"
eps = [0.1]
steps = 3
step-size = { relative-to-eps = 0.5 }

[[attack]]
name = "fgm-l2"
kind = "fast-gradient"
norm = 2
eps = [1.0]

[transfer]
attack = "fgsm"
eps = 0.1

[noise]
sigmas = [0.1, 0.3]

[eval]
batch-size = 50
"#;

/// Number of jobs in [`TINY`]: 2 train, 2 × 3 attack, 2 noise, 2 craft, 2 × 2 score, and the
/// default visuals job.
pub const TINY_JOBS: usize = 17;

/// Writes `text` (with `{data}` replaced) to `dir/name` and returns its path.
pub fn write_suite(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let data = mnist_dir().display().to_string();
    std::fs::write(&path, text.replace("{data}", &data)).unwrap();
    path
}
