//! The command-line tool end to end, on small slices of the embedded MNIST.

use std::path::Path;
use std::process::{Command, Output};

fn gauntlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gauntlet train` of a small Maxout MLP into `dir`, with a wider init, which leaves the
/// initial plateau within a few hundred steps (pylearn2's U(±0.005) needs a few thousand).
fn train_small(dir: &Path, seed: u64, epochs: usize, test_limit: usize) -> Output {
    let config = dir.join("small.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"small\"\nseed = {seed}\n[data]\ndataset = \"mnist\"\n\
             [model]\narch = {{ kind = \"maxout-mlp\", units = [64, 64], pieces = 3, init-range = 0.05 }}\n\
             [train]\nbatch-size = 50\noptimizer = {{ kind = \"sgd\", lr = 0.1, final-momentum = 0.7, momentum-saturate = 3 }}\n"
        ),
    )
    .unwrap();
    let (epochs, test_limit) = (epochs.to_string(), test_limit.to_string());
    gauntlet(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--epochs",
        &epochs,
        "--train-limit",
        "2000",
        "--valid-size",
        "1000",
        "--test-limit",
        &test_limit,
        "--out",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn train_then_eval_attack_and_noise_write_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let res = train_small(dir.path(), 3, 4, 500);
    assert!(res.status.success(), "{}", stderr(&res));
    let config = dir.path().join("small.toml");
    for file in [
        "model.safetensors",
        "model.json",
        "training.csv",
        "training.json",
        "summary.json",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["test_n"], 500);
    let test_error = summary["test_error"].as_f64().unwrap();
    assert!(
        test_error < 0.3,
        "test error {test_error} after 4 epochs on 2000 images"
    );
    let csv = std::fs::read_to_string(dir.path().join("training.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        5,
        "a header and one row per epoch:\n{csv}"
    );

    // Stage-2 style continuation: starts from the trained weights, stops at the target.
    let more = tempfile::tempdir().unwrap();
    let res = gauntlet(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--epochs",
        "3",
        "--train-limit",
        "2000",
        "--valid-size",
        "1000",
        "--test-limit",
        "500",
        "--continue-from",
        out,
        "--out",
        more.path().to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("training.json")).unwrap()).unwrap();
    let second: serde_json::Value =
        serde_json::from_slice(&std::fs::read(more.path().join("training.json")).unwrap()).unwrap();
    let loss = |log: &serde_json::Value, i: usize| log["epochs"][i]["train_loss"].as_f64().unwrap();
    assert!(
        loss(&second, 0) < 0.8 * loss(&first, 0),
        "continued run starts from the trained weights"
    );
    let kept = first["best_epoch"].as_u64().unwrap() as usize - 1;
    let target = loss(&first, kept);
    // At the kept epoch's momentum (0.7 after the 3-epoch ramp), not the recipe's 0.5 start.
    assert_eq!(
        second["epochs"][0]["momentum"],
        first["epochs"][kept]["momentum"]
    );
    assert_eq!(second["epochs"][0]["momentum"], 0.7);
    let n = second["epochs"].as_array().unwrap().len();
    match second["stopped_by"].as_str().unwrap() {
        "train-loss-target" => assert!(loss(&second, n - 1) <= target),
        "epochs" => assert!((0..n).all(|i| loss(&second, i) > target)),
        other => panic!("unexpected stop {other}"),
    }
    let res = gauntlet(&[
        "train",
        "--arch",
        "mlp",
        "--epochs",
        "1",
        "--continue-from",
        out,
        "--out",
        more.path().to_str().unwrap(),
    ]);
    assert!(stderr(&res).contains("different model"), "{}", stderr(&res));

    let model = dir.path().join("model.safetensors");
    let model = model.to_str().unwrap();
    let res = gauntlet(&["eval", "--model", model, "--test-limit", "500"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    let reported = format!("error {:.2}%", 100.0 * test_error);
    assert!(
        stdout.contains(&reported),
        "eval must agree with training's summary ({reported}): {stdout}"
    );
    // And writes it, beside the checkpoint by default.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("eval.json")).unwrap()).unwrap();
    assert_eq!(written["n"], 500);
    assert!((written["accuracy"].as_f64().unwrap() - (1.0 - test_error)).abs() < 1e-12);
    assert!(written["ci_low"].as_f64().unwrap() < written["accuracy"].as_f64().unwrap());
    let csv = std::fs::read_to_string(dir.path().join("eval.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");

    let res = gauntlet(&[
        "attack",
        "--model",
        model,
        "--test-limit",
        "200",
        "--norm",
        "inf",
        "--eps",
        "0,0.1,0.3",
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    let records = robustness(dir.path());
    let acc: Vec<f64> = records
        .iter()
        .map(|r| r["adversarial_accuracy"].as_f64().unwrap())
        .collect();
    assert_eq!(acc.len(), 3);
    assert!(acc[2] < acc[0], "FGSM at 0.3 must hurt: {acc:?}");
    assert!(records[2]["max_perturbation"].as_f64().unwrap() <= 0.3 + 1e-6);

    let res = gauntlet(&[
        "attack",
        "--model",
        model,
        "--test-limit",
        "200",
        "--attack",
        "pgd",
        "--steps",
        "10",
        "--eps",
        "0.1,0.3",
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains("gradient-masking checks"), "{stdout}");
    let pgd = robustness(dir.path());
    let pgd_acc = pgd[1]["adversarial_accuracy"].as_f64().unwrap();
    assert!(
        pgd_acc <= acc[2],
        "PGD at 0.3 ({pgd_acc}) must be at least as strong as FGSM ({})",
        acc[2]
    );
    let flags = &results(dir.path())["masking"];
    assert!(!flags.as_array().unwrap().is_empty(), "masking checks ran");
    let examples = per_example(dir.path(), "pgd-linf");
    assert_eq!(
        examples.lines().count(),
        1 + 2 * 200,
        "one row per example and eps"
    );

    // The same checkpoint twice: every cell is the white-box FGSM number.
    let res = gauntlet(&[
        "transfer",
        "--models",
        &format!("{model},{model}"),
        "--names",
        "a,b",
        "--eps",
        "0.3",
        "--test-limit",
        "200",
        "--out",
        out,
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    let matrix: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("transfer.json")).unwrap()).unwrap();
    let cells: Vec<f64> = matrix["error"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(cells.len(), 4);
    assert!(
        cells.iter().all(|c| (c - (1.0 - acc[2])).abs() < 1e-9),
        "{cells:?} vs white-box error {}",
        1.0 - acc[2]
    );

    let res = gauntlet(&[
        "noise",
        "--model",
        model,
        "--test-limit",
        "200",
        "--sigma",
        "0.1,0.5",
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(dir.path().join("noise.csv").is_file());
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--config", "no/such/file.toml"],
            "no/such/file.toml",
        ),
        (&["train", "--arch", "resnet"], "unknown --arch `resnet`"),
        (
            &["train", "--dataset", "imagenet"],
            "unknown data set `imagenet`",
        ),
        (&["train", "--epochs", "0"], "epochs"),
        (
            &[
                "train",
                "--device",
                "tpu",
                "--epochs",
                "1",
                "--train-limit",
                "10",
            ],
            "unknown device `tpu`",
        ),
        (
            &["eval", "--model", "no/such/model.safetensors"],
            "no/such/model.safetensors",
        ),
        (
            &["attack", "--model", "x.safetensors", "--eps", "-1"],
            "--eps",
        ),
        (
            &[
                "attack",
                "--model",
                "x.safetensors",
                "--eps",
                "0.1",
                "--norm",
                "0.5",
            ],
            "--norm",
        ),
        (
            &[
                "transfer",
                "--models",
                "a.safetensors,b.safetensors",
                "--names",
                "a",
                "--eps",
                "0.1",
            ],
            "--names has 1 entries",
        ),
        (
            &[
                "transfer",
                "--models",
                "a.safetensors,b.safetensors",
                "--names",
                "a,a",
                "--eps",
                "0.1",
            ],
            "two models are named `a`",
        ),
    ];
    for (args, expected) in cases {
        let res = gauntlet(args);
        let err = stderr(&res);
        // 2 is clap's, for a command line it cannot parse; every other refusal is 1.
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

/// A small Maxout MLP trained once for the attack tests below (checkpoints are not in git, so
/// the tests cannot lean on a suite's results).
/// The name results give [`small_model`]: its folder's.
const SMALL: &str = "cli-small-model";

/// The results.json a command wrote into `dir`.
fn results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Its robustness rows, one per ε.
fn robustness(dir: &Path) -> Vec<serde_json::Value> {
    results(dir)["robustness"].as_array().unwrap().clone()
}

/// The per-example file of the model the last command in `dir` attacked with `method`.
fn per_example(dir: &Path, method: &str) -> String {
    let model = results(dir)["models"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::read_to_string(dir.join(format!("per-example/{model}-{method}.csv"))).unwrap()
}

fn small_model() -> &'static str {
    static MODEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        // Under target/tmp: kept between runs, retrained (same seed, same bytes) by each.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-small-model");
        std::fs::create_dir_all(&dir).unwrap();
        let res = train_small(&dir, 5, 3, 200);
        assert!(res.status.success(), "{}", stderr(&res));
        dir.join("model.safetensors").to_str().unwrap().to_string()
    })
}

/// `gauntlet attack` on [`small_model`]'s first 40 test images.
fn attack_small(out: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "attack",
        "--model",
        small_model(),
        "--test-limit",
        "40",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    gauntlet(&args)
}

#[test]
fn auto_writes_who_broke_each_example_and_checks_square() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let res = attack_small(
        out,
        &[
            "--attack",
            "auto",
            "--steps",
            "5",
            "--target-classes",
            "2",
            "--n-queries",
            "20",
            "--eps",
            "0.02,0.1",
        ],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let records = robustness(dir.path());
    let table = read("members.csv");
    // eps,member,kind,broken; the rows of ε = 0.1 come last.
    let members: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .filter(|f: &Vec<&str>| f[0] == "0.1")
        .collect();
    let names: Vec<&str> = members.iter().map(|f| f[1]).collect();
    assert_eq!(
        names,
        [
            "apgd-ce-linf",
            "apgd-t-dlr-linf",
            "fab-t-linf",
            "square-linf"
        ]
    );
    let broken: u64 = members.iter().map(|f| f[3].parse::<u64>().unwrap()).sum();
    let (clean, robust) = (
        records[1]["clean_correct"].as_u64().unwrap(),
        records[1]["adversarial_correct"].as_u64().unwrap(),
    );
    assert_eq!(broken, clean - robust);
    assert!(robust < clean, "auto at 0.1 broke nothing");
    let examples = per_example(dir.path(), "auto-linf");
    assert!(examples.lines().next().unwrap().ends_with(",broken_by"));
    assert_eq!(examples.lines().count(), 1 + 2 * 40);
    assert_eq!(table.lines().count(), 1 + 2 * 4, "{table}");
    let flags = results(dir.path())["masking"].to_string();
    assert!(flags.contains("gradient-beats-score-based"), "{flags}");
}

#[test]
fn apgd_square_and_the_rand_version_run_and_bad_options_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for extra in [
        &["--attack", "apgd", "--steps", "10", "--loss", "dlr"][..],
        &["--attack", "square", "--norm", "2", "--n-queries", "30"][..],
        &[
            "--attack",
            "auto",
            "--rand",
            "--eot-draws",
            "2",
            "--steps",
            "3",
            "--randomized",
        ][..],
    ] {
        let mut args = extra.to_vec();
        args.extend(["--eps", "0.1", "--no-checks"]);
        let res = attack_small(out, &args);
        assert!(res.status.success(), "{extra:?}: {}", stderr(&res));
    }
    for name in ["apgd-dlr-linf", "square-l2", "auto-rand-linf"] {
        let file = dir.path().join(format!("per-example/{SMALL}-{name}.csv"));
        assert!(file.is_file(), "{} missing", file.display());
    }
    // A least-likely target is harder to reach than any wrong class.
    let robust = |extra: &[&str]| -> u64 {
        let mut args = vec![
            "--attack",
            "pgd",
            "--steps",
            "10",
            "--eps",
            "0.1",
            "--no-checks",
        ];
        args.extend_from_slice(extra);
        let res = attack_small(out, &args);
        assert!(res.status.success(), "{extra:?}: {}", stderr(&res));
        robustness(dir.path())[0]["adversarial_correct"]
            .as_u64()
            .unwrap()
    };
    let untargeted = robust(&[]);
    let untargeted_json = results(dir.path())["robustness"].to_string();
    assert!(!untargeted_json.contains("target"), "{untargeted_json}");
    let least_likely = robust(&["--targeted", "least-likely"]);
    assert!(least_likely >= untargeted, "{least_likely} < {untargeted}");
    // The targeted record counts the targets reached; the examples file says which each was.
    let record = &robustness(dir.path())[0];
    let (aimed, reached) = (
        record["targeted_n"].as_u64().unwrap(),
        record["target_reached"].as_u64().unwrap(),
    );
    assert_eq!(
        aimed,
        record["n"].as_u64().unwrap(),
        "least-likely never aims at the label"
    );
    let examples = per_example(dir.path(), "pgd-linf-targeted-least-likely");
    let mut lines = examples.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (adv, target) = (col("adv_pred"), col("target"));
    let hits = lines
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[adv] == f[target]
        })
        .count() as u64;
    assert_eq!(hits, reached);
    for (extra, message) in [
        (
            &["--attack", "square", "--norm", "1"][..],
            "--norm: the square attack supports norms inf and 2, got l1",
        ),
        (
            &["--attack", "pgd", "--rand"][..],
            "--rand: applies to auto only, not pgd",
        ),
        (
            &["--attack", "apgd", "--target-classes", "0"][..],
            "--target-classes: must be at least 1, got 0",
        ),
        (
            &["--attack", "auto", "--eot-draws", "4"][..],
            "--eot-draws: only applies to the rand version",
        ),
        (
            &["--attack", "apgd", "--loss", "hinge"][..],
            "invalid value 'hinge' for '--loss <LOSS>'",
        ),
        (
            &["--attack", "pgd", "--targeted", "sideways"][..],
            "unknown target selection `sideways`, expected random, least-likely or class=N",
        ),
        (
            &["--attack", "auto", "--targeted", "random"][..],
            "--targeted: applies to fast-gradient, pgd, apgd, square, fmn, ddn, deepfool, cw, fab only, not auto",
        ),
        (
            &["--attack", "pgd", "--targeted", "class=12"][..],
            "--targeted: class 12 is not one of the data set's 10 classes",
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend(["--eps", "0.1"]);
        let res = attack_small(out, &args);
        assert!(!res.status.success(), "{extra:?} must fail");
        assert!(
            stderr(&res).contains(message),
            "{extra:?}: {}",
            stderr(&res)
        );
    }
}

#[test]
fn train_fits_the_configured_preprocessing_and_names_the_file_on_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zca.toml");
    let write = |filter_bias: f64| {
        std::fs::write(
            &config,
            format!(
                "name = \"zca\"\n[data]\ndataset = \"mnist\"\n\
                 [model]\narch = {{ kind = \"mlp\", hidden = [64], activation = \"relu\" }}\n\
                 preprocess = {{ kind = \"gcn-zca\", filter-bias = {filter_bias:?} }}\n\
                 [train]\nbatch-size = 50\n"
            ),
        )
        .unwrap()
    };
    let train = || {
        gauntlet(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--epochs",
            "2",
            "--train-limit",
            "1000",
            "--valid-size",
            "500",
            "--test-limit",
            "500",
            "--out",
            dir.path().to_str().unwrap(),
        ])
    };
    write(0.1);
    let out = train();
    assert!(out.status.success(), "{}", stderr(&out));
    // The fitted ZCA is part of the checkpoint, and the model learned through it.
    let model = std::fs::read_to_string(dir.path().join("model.json")).unwrap();
    assert!(model.contains("gcn-zca"), "{model}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    let error = summary["test_error"].as_f64().unwrap();
    assert!(
        error < 0.5,
        "test error {error} after 2 epochs on whitened MNIST"
    );

    write(-1.0);
    let out = train();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("zca.toml") && err.contains("filter-bias"),
        "{err}"
    );
}

/// PyTorch's SmallCNN fixture from its ONNX export and from its safetensors state_dict: the
/// same per-example PGD outcomes; a model that does not fit the data is refused.
#[test]
fn imported_models_are_attacked_from_either_file() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = "crates/models/tests/fixtures/torch";
    let mut examples = Vec::new();
    for format in ["onnx", "safetensors"] {
        let out = dir.path().join(format);
        let model = format!("{fixtures}/smallcnn.{format}");
        let res = gauntlet(&[
            "attack",
            "--model",
            &model,
            "--attack",
            "pgd",
            "--norm",
            "inf",
            "--eps",
            "8/255,0.1",
            "--steps",
            "5",
            "--step-size",
            "0.03",
            "--no-random-start",
            "--test-limit",
            "30",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(res.status.success(), "{format}: {}", stderr(&res));
        examples.push(per_example(&out, "pgd-linf"));
    }
    // One row per example and budget; 8/255 as a fraction.
    assert_eq!(examples[0].lines().count(), 1 + 2 * 30);
    assert!(
        examples[0].contains(&format!("{}", 8.0f64 / 255.0)),
        "{}",
        &examples[0][..200]
    );
    assert_eq!(examples[0], examples[1]);
    let res = gauntlet(&[
        "eval",
        "--model",
        &format!("{fixtures}/preact.onnx"),
        "--test-limit",
        "5",
    ]);
    assert!(!res.status.success());
    let err = stderr(&res);
    assert!(
        err.contains("preact.onnx") && err.contains("[3, 16, 16]"),
        "{err}"
    );
}

/// A diverged model (finite weights, logits near 1e30) among transfer's models is named by
/// file, not reported as a matrix of plausible numbers.
#[test]
fn transfer_names_the_model_whose_logits_are_absurd() {
    let dir = tempfile::tempdir().unwrap();
    let small = Path::new(small_model());
    let huge = dir.path().join("huge.safetensors");
    let mut t = candle_core::safetensors::load(small, &candle_core::Device::Cpu).unwrap();
    let w = (&t["out.weight"] * 1e30).unwrap();
    t.insert("out.weight".into(), w);
    candle_core::safetensors::save(&t, &huge).unwrap();
    std::fs::copy(small.with_extension("json"), huge.with_extension("json")).unwrap();
    let models = format!("{},{}", small.display(), huge.display());
    let out = dir.path().join("out");
    let res = gauntlet(&[
        "transfer",
        "--models",
        &models,
        "--eps",
        "0.1",
        "--test-limit",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(1), "{}", stderr(&res));
    let err = stderr(&res);
    assert!(
        err.contains("huge.safetensors") && err.contains("diverged"),
        "{err}"
    );
}

/// The README's single-command example: results.json in the suite's schema with the model
/// file's hash, the adversarial images saved and re-checked here (re-classified by the model
/// they were made against, inside the ε-ball and the box), `--json` on stdout, and the
/// report drawn from the folder.
#[test]
fn attack_writes_suite_results_and_adversarials_that_reclassify_as_recorded() {
    use candle_core::{DType, Device};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("D");
    let adv_path = out.join("adv.safetensors");
    let (out_s, adv_s) = (out.to_str().unwrap(), adv_path.to_str().unwrap());
    let res = attack_small(
        out_s,
        &[
            "--attack",
            "pgd",
            "--steps",
            "5",
            "--eps",
            "8/255,0.1",
            "--save-adversarials",
            adv_s,
            "--json",
        ],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let printed: serde_json::Value =
        serde_json::from_slice(&res.stdout).expect("--json prints JSON only");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(written["schema_version"], 1);
    let model = &written["models"][0];
    let bytes = std::fs::read(small_model()).unwrap();
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&bytes))
    };
    assert_eq!(model["source_sha256"], sha.as_str());
    // The data files read: the test split's, by name, size and hash.
    let files: Vec<&str> = written["data_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.starts_with("t10k-")), "{files:?}");
    let rows = written["robustness"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["eps"], 8.0 / 255.0);
    // The fraction as written beside its value; a decimal needs none.
    assert_eq!(rows[0]["eps_written"], "8/255");
    assert!(rows[1].get("eps_written").is_none());
    assert_eq!(rows[0]["spec"]["kind"], "pgd");
    let csv = std::fs::read_to_string(out.join("robustness.csv")).unwrap();
    assert!(
        csv.starts_with("model,attack,method,kind,norm,eps,n,"),
        "{csv}"
    );

    let tensors = candle_core::safetensors::load(&adv_path, &Device::Cpu).unwrap();
    let (x_adv, x) = (&tensors["x_adv"], &tensors["x"]);
    let eps = tensors["eps"].to_vec1::<f64>().unwrap();
    assert_eq!(eps, [8.0 / 255.0, 0.1]);
    assert_eq!(x_adv.dims()[..2], [2, 40]);
    let recorded = tensors["adv_pred"].to_vec2::<i64>().unwrap();
    let net = gauntlet_models::checkpoint::load(Path::new(small_model()), &Device::Cpu).unwrap();
    let mut robust = 0;
    for (k, &e) in eps.iter().enumerate() {
        let adv = x_adv.get(k).unwrap();
        let preds: Vec<u32> = net
            .forward(&adv, gauntlet_models::Mode::Eval)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let recorded: Vec<u32> = recorded[k].iter().map(|&p| p as u32).collect();
        assert_eq!(preds, recorded, "eps {e}");
        let linf = adv
            .sub(x)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(linf <= e * (1.0 + 1e-6), "eps {e}: |d|inf = {linf}");
        let flat = adv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(flat.iter().all(|v| (0.0..=1.0).contains(v)));
        if k == 0 {
            let labels = tensors["label"].to_vec1::<i64>().unwrap();
            robust = recorded
                .iter()
                .zip(&labels)
                .filter(|(p, y)| **p as i64 == **y)
                .count();
        }
    }
    // Robust accuracy counts clean-correct examples only: at most the unchanged predictions.
    assert!(rows[0]["adversarial_correct"].as_u64().unwrap() as usize <= robust);

    let report = dir.path().join("report");
    let res = gauntlet(&["report", out_s, "--out", report.to_str().unwrap()]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(report.join("index.html").is_file());
    // The attack's own name once: a single command names the attack by its method.
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("### pgd-linf (L∞), iterative"), "{md}");
    assert!(md.contains("ε = 8/255 | ε = 0.1"), "{md}");
}

#[test]
fn noise_writes_suite_results_that_the_report_draws() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("N");
    let args = [
        "noise",
        "--model",
        small_model(),
        "--test-limit",
        "40",
        "--sigma",
        "0.1,0.3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let res = gauntlet(&args);
    assert!(res.status.success(), "{}", stderr(&res));
    let printed: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(printed["schema_version"], 1);
    let rows = printed["noise"].as_array().unwrap();
    // Both σ, clipped and not.
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r["n"] == 40 && r["model"] == "cli-small-model"),
        "{rows:?}"
    );
    let csv = std::fs::read_to_string(out.join("noise.csv")).unwrap();
    assert!(
        csv.starts_with("model,sigma,clip,seed,n,correct,accuracy,ci_low,ci_high,error"),
        "{csv}"
    );
    let report = dir.path().join("report");
    let res = gauntlet(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(report.join("figures").read_dir().unwrap().count() > 0);
}
