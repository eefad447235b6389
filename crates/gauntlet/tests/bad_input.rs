//! Out-of-range command-line values and unusable folders are clear errors (exit code 1, the
//! flag or file named, no panic), given before any long work starts.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use gauntlet_models::{build, checkpoint, Arch, ModelSpec};

fn gauntlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("the binary runs")
}

/// Runs every case and checks its exit code and message.
fn check(cases: &[(Vec<&str>, &str)]) {
    for (args, expected) in cases {
        let res = gauntlet(args);
        let err = String::from_utf8_lossy(&res.stderr);
        // 2 is clap's, for a value it cannot parse; every other refusal is 1.
        let code =
            if err.contains("\nUsage: ") || err.contains("For more information, try '--help'") {
                2
            } else {
                1
            };
        assert_eq!(res.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn evaluation_flags_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![8], 2));
    let model = build(&spec, 1, &Device::Cpu).unwrap();
    let path = dir.path().join("m.safetensors");
    checkpoint::save(model.as_ref(), &path).unwrap();
    let m = path.to_str().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let unwritable = blocker.join("out");
    let unwritable = unwritable.to_str().unwrap();
    check(&[
        (
            vec!["attack", "--model", m, "--eps", "nan"],
            "--eps values must be finite and >= 0, got NaN",
        ),
        (
            vec!["attack", "--model", m, "--eps", "0.1,inf"],
            "--eps values must be finite and >= 0, got inf",
        ),
        (
            vec![
                "attack", "--model", m, "--eps", "0.1", "--attack", "pgd", "--steps", "0",
            ],
            "--steps: must be at least 1, got 0",
        ),
        (
            vec![
                "attack",
                "--model",
                m,
                "--eps",
                "0.1",
                "--attack",
                "pgd",
                "--step-size=-0.1",
            ],
            "--step-size: must be finite and > 0, got -0.1",
        ),
        (
            vec!["attack", "--model", m, "--eps", "0.1", "--norm", "0"],
            "p must be >= 1",
        ),
        (
            vec![
                "attack",
                "--model",
                m,
                "--eps",
                "0.1",
                "--save-adversarials",
                "adv.npz",
            ],
            "--save-adversarials adv.npz: expected a .safetensors file",
        ),
        (
            vec!["eval", "--model", m, "--test-limit", "0"],
            "the test split of mnist",
        ),
        (
            vec!["eval", "--model", m, "--batch-size", "0"],
            "--batch-size must be at least 1",
        ),
        (
            vec!["noise", "--model", m, "--sigma", "0.1,-1"],
            "--sigma values must be finite and >= 0, got -1",
        ),
        (
            vec![
                "attack",
                "--model",
                m,
                "--eps",
                "0.1",
                "--test-limit",
                "20",
                "--out",
                unwritable,
            ],
            "file/out",
        ),
    ]);
}

#[test]
fn training_and_suite_flags_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let unwritable = blocker.join("out");
    let unwritable = unwritable.to_str().unwrap();
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../suites/quickstart.toml");
    let suite = suite.to_str().unwrap();
    check(&[
        (
            vec!["train", "--epochs", "1", "--train-limit", "0"],
            "the train split of mnist",
        ),
        (
            vec!["train", "--epochs", "1", "--valid-size", "60000"],
            "valid-size 60000 leaves no training examples",
        ),
        (
            vec!["train", "--batch-size", "0"],
            "batch-size must be at least 1",
        ),
        (vec!["train", "--lr=-1"], "lr must be > 0"),
        (
            vec![
                "train",
                "--epochs",
                "1",
                "--train-limit",
                "100",
                "--out",
                unwritable,
            ],
            "creating",
        ),
        (
            vec!["run", suite, "--jobs", "0"],
            "--jobs must be at least 1",
        ),
        (vec!["run", suite, "--shard", "2/2"], "--shard `2/2`"),
        (vec!["run", suite, "--stage", "deploy"], "--stage `deploy`"),
        (
            vec!["run", suite, "--results", unwritable],
            "file/out/quickstart",
        ),
    ]);
}
