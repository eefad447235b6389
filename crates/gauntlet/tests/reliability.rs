//! Issue 23 at the command line: exit codes (2 for usage errors only, 1 for failures), no
//! backtrace in errors, names checked before any work, and the evaluating commands reading the
//! test files only.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use gauntlet_models::{build, checkpoint, Arch, ModelSpec};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gauntlet_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(dir)
        // What a user debugging something may have set: no Candle backtrace either way.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small untrained Maxout MLP checkpoint in `dir`.
fn model(dir: &Path) -> String {
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![8], 2));
    let model = build(&spec, 1, &Device::Cpu).unwrap();
    let path = dir.join("m.safetensors");
    checkpoint::save(model.as_ref(), &path).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn usage_errors_exit_2_failures_exit_1_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let out = gauntlet_in(dir.path(), &["eval", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A checkpoint that is not one: Candle's error, which carries a backtrace when
    // RUST_BACKTRACE is set.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\0\0\0\0\0\0\0{not json at all}").unwrap();
    let data = repo().join("data/mnist");
    let out = gauntlet_in(
        dir.path(),
        &[
            "eval",
            "--model",
            bad.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.safetensors"), "{err}");
    for trace in ["backtrace", "candle_core::", "   0: "] {
        assert!(!err.contains(trace), "`{trace}` in: {err}");
    }

    // One NaN weight (the last value of the file): refused at load or at the first logits
    // (a Candle error, which carries the backtrace), never an accuracy.
    let m = model(dir.path());
    let mut bytes = std::fs::read(&m).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&m, bytes).unwrap();
    let out = gauntlet_in(
        dir.path(),
        &[
            "eval",
            "--model",
            &m,
            "--test-limit",
            "20",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("NaN")
            && err.contains("m.safetensors")
            && !String::from_utf8_lossy(&out.stdout).contains("accuracy"),
        "{err}"
    );
    for trace in ["backtrace", "candle_core::", "   0: "] {
        assert!(!err.contains(trace), "`{trace}` in: {err}");
    }
}

#[test]
fn eval_reads_only_the_test_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for file in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(repo().join("data/mnist").join(file), data.join(file)).unwrap();
    }
    let args = [
        "eval",
        "--model",
        &m,
        "--test-limit",
        "50",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    // No training files at all, then a corrupt one: neither is read.
    let out = gauntlet_in(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(data.join("train-images-idx3-ubyte.gz"), b"\x1f\x8bgarbage").unwrap();
    let out = gauntlet_in(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("n = 50"));
}

#[test]
fn mnist_files_evaluated_as_fashion_mnist_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let data = repo().join("data/mnist");
    let out = gauntlet_in(
        dir.path(),
        &[
            "eval",
            "--model",
            &m,
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("this is mnist's t10k-images-idx3-ubyte"),
        "{err}"
    );
}

#[test]
fn train_names_that_leave_the_results_folder_or_are_too_long_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("a/b");
    std::fs::create_dir_all(&work).unwrap();
    let long = "m".repeat(250);
    let recipe = work.join("recipe.toml");
    std::fs::write(
        &recipe,
        "name = \"../../x\"\n[data]\ndataset = \"mnist\"\n[model]\narch = { kind = \"maxout-mlp\" }\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    for (args, expected) in [
        (
            vec!["train", "--name", "../../x", "--epochs", "1"],
            "--name: `../../x`",
        ),
        (
            vec!["train", "--name", &long, "--epochs", "1"],
            "250 characters long",
        ),
        (
            vec!["train", "--config", recipe.to_str().unwrap()],
            "recipe.toml: name: `../../x`",
        ),
    ] {
        let out = gauntlet_in(&work, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "refused before loading data"
    );
    assert!(!dir.path().join("x").exists());
    assert!(!work.join("results").exists());
}

#[test]
fn a_suite_with_an_infinite_learning_rate_or_a_long_name_fails_its_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("data/mnist");
    let suite = |model: &str, lr: &str| {
        format!(
            "name = \"s\"\nseed = 1\ndata = {{ dataset = \"mnist\", dir = \"{}\" }}\n\
             [[model]]\nname = \"{model}\"\narch = {{ kind = \"maxout-mlp\", units = [8], pieces = 2 }}\n\
             train = {{ epochs = 1, optimizer = {{ kind = \"sgd\", lr = {lr} }} }}\n\
             [[attack]]\nname = \"fgsm\"\nkind = \"fast-gradient\"\nnorm = \"inf\"\neps = [0.1]\n",
            data.display()
        )
    };
    let long = "m".repeat(250);
    for (text, expected) in [
        (suite("m", "inf"), "finite"),
        (suite(&long, "0.1"), "250 characters long"),
    ] {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        let out = gauntlet_in(dir.path(), &["run", path.to_str().unwrap(), "--dry-run"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn very_large_step_and_epoch_counts_print_the_planned_work_at_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"s\"\nseed = 1\ndata = {{ dataset = \"mnist\", dir = \"{}\" }}\n\
             [[model]]\nname = \"m\"\narch = {{ kind = \"maxout-mlp\", units = [8], pieces = 2 }}\n\
             train = {{ epochs = 100000, optimizer = {{ kind = \"sgd\", lr = 0.1 }} }}\n\
             [[attack]]\nname = \"pgd\"\nkind = \"pgd\"\nnorm = \"inf\"\neps = [0.1]\nsteps = 1000000000000\n",
            repo().join("data/mnist").display()
        ),
    )
    .unwrap();
    let out = gauntlet_in(
        dir.path(),
        &["run", path.to_str().unwrap(), "--dry-run", "--quiet"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("planned work: model `m`: 100000 epochs")
            && err.contains("planned work: attack `pgd`: about 1000000000000 model evaluations"),
        "{err}"
    );
}
