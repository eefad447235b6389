//! Models a suite did not train: PyTorch's MLP fixture (crates/models/tests/fixtures/torch),
//! read from its ONNX export and its safetensors `state_dict`, beside a trained model.

use std::path::{Path, PathBuf};

use gauntlet_suite::record::{Results, TransferRow};
use gauntlet_suite::{run_suite, RunOptions};

use crate::runs::read_csv;
use crate::write_suite;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/torch")
        .join(name)
}

const SUITE: &str = r#"
name = "imported"
seed = 3
data = { dataset = "mnist", dir = "{data}", train-limit = 500, valid-limit = 0, test-limit = 60 }

[[model]]
name = "mlp-onnx"
path = "mlp.onnx"

[[model]]
name = "mlp-torch"
path = "mlp.safetensors"

[[model]]
name = "trained"
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 1, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]

[transfer]
attack = "fgsm"
eps = 0.1

[eval]
batch-size = 30
"#;

/// The fixture files beside a suite in `dir`, as a user would put them.
fn setup(dir: &Path) -> PathBuf {
    for f in ["mlp.onnx", "mlp.safetensors", "mlp.toml"] {
        std::fs::copy(fixture(f), dir.join(f)).unwrap();
    }
    write_suite(dir, "imported.toml", SUITE)
}

#[test]
fn imported_models_are_attacked_transferred_and_keyed_by_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let options = RunOptions {
        results_root: dir.path().join("results"),
        ..RunOptions::default()
    };
    let summary = run_suite(&path, &options).unwrap();
    assert!(summary.is_complete());
    let out = dir.path().join("results/imported");
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let onnx = results
        .models
        .iter()
        .find(|m| m.name == "mlp-onnx")
        .unwrap();
    let sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(fixture("mlp.onnx")).unwrap())
    );
    assert_eq!(onnx.source_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(onnx.stopped_by, "imported");
    let torch = results
        .models
        .iter()
        .find(|m| m.name == "mlp-torch")
        .unwrap();
    // The same weights in two formats: the same clean error, the same attacked rows.
    assert_eq!(onnx.test_error, torch.test_error);
    let robust: Vec<_> = results
        .robustness
        .iter()
        .filter(|r| r.model.starts_with("mlp-"))
        .collect();
    assert_eq!(robust.len(), 2);
    assert_eq!(
        robust[0].adversarial_accuracy,
        robust[1].adversarial_accuracy
    );
    // Every source × target pair of the three models, imported ones included.
    let transfer: Vec<TransferRow> = read_csv(&out.join("transfer.csv"));
    assert_eq!(transfer.len(), 9);

    // A rerun is cached; changing the file's bytes reruns its jobs and only its.
    let again = run_suite(&path, &options).unwrap();
    assert_eq!(again.executed(), 0);
    let mut t = candle_core::safetensors::load(
        dir.path().join("mlp.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let b = (&t["fc3.bias"] + 1.0).unwrap();
    t.insert("fc3.bias".into(), b);
    candle_core::safetensors::save(&t, dir.path().join("mlp.safetensors")).unwrap();
    let edited = run_suite(&path, &options).unwrap();
    let ran: Vec<&str> = edited
        .jobs
        .iter()
        .filter(|j| j.status == gauntlet_suite::JobStatus::Ran)
        .map(|j| j.id.as_str())
        .collect();
    assert!(
        ran.contains(&"train/mlp-torch") && !ran.iter().any(|id| id.contains("train/mlp-onnx")),
        "{ran:?}"
    );
}

#[test]
fn a_model_file_that_does_not_fit_the_data_or_takes_a_recipe_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    std::fs::copy(fixture("preact.onnx"), dir.path().join("preact.onnx")).unwrap();
    let path = write_suite(
        dir.path(),
        "bad.toml",
        &SUITE.replace("path = \"mlp.onnx\"", "path = \"preact.onnx\""),
    );
    let err = gauntlet_suite::Suite::load(&path, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("mlp-onnx") && err.contains("preact.onnx") && err.contains("[3, 16, 16]"),
        "{err}"
    );
    let path = write_suite(
        dir.path(),
        "bad.toml",
        &SUITE.replace("path = \"mlp.onnx\"", "path = \"absent.onnx\""),
    );
    let err = gauntlet_suite::Suite::load(&path, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bad.toml") && err.contains("absent.onnx"),
        "{err}"
    );
    let path = write_suite(
        dir.path(),
        "bad.toml",
        &SUITE.replace(
            "path = \"mlp.onnx\"",
            "path = \"mlp.onnx\"\narch = { kind = \"cnn\" }",
        ),
    );
    let err = gauntlet_suite::Suite::load(&path, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("takes no `like`, `arch`"), "{err}");
}
