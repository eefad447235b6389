//! The visuals job: what it writes is what the report reads, r* stays in its ε-ball, the
//! default models are the baseline and the regularized ones, and `[visuals]` is checked.

use std::path::Path;

use gauntlet_attacks::Norm;
use gauntlet_suite::visuals::{LogitSweepFile, PerturbationsFile, TENSOR_SCHEMA_VERSION};
use gauntlet_suite::{merge_suite, plan_suite, run_suite, JobKind, RunOptions, Suite};

use crate::write_suite;

/// Three small models (the third neither first nor regularized), no attacks.
const SUITE: &str = r#"
name = "vis"
seed = 3
data = { dataset = "mnist", dir = "{data}", train-limit = 500, valid-size = 1000, valid-limit = 100, test-limit = 300 }

[[model]]
name = "base"
arch = { kind = "maxout-mlp", units = [32], pieces = 2, init-range = 0.05 }
train = { epochs = 3, batch-size = 50, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }

[[model]]
name = "l2"
like = "base"
regularizer = { kind = "lp", p = 2, eps = 1.0, alpha = 0.5 }

[[model]]
name = "other-seed"
like = "base"
seed = 4

[visuals]
sweep-eps = 5.0
sweep-points = 11
"#;

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `‖v‖_p` in f64.
fn lp(v: &[f32], norm: Norm) -> f64 {
    let abs = v.iter().map(|&x| f64::from(x).abs());
    match norm {
        Norm::Linf => abs.fold(0.0, f64::max),
        _ => abs
            .map(|a| a.powf(norm.p()))
            .sum::<f64>()
            .powf(1.0 / norm.p()),
    }
}

#[test]
fn the_visuals_job_writes_what_the_report_draws() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "vis.toml", SUITE);
    let options = RunOptions {
        results_root: dir.path().join("results"),
        ..RunOptions::default()
    };
    let summary = run_suite(&path, &options).unwrap();
    assert!(summary.is_complete(), "{:?}", summary.missing);
    let visuals = summary
        .jobs
        .iter()
        .find(|j| j.kind == JobKind::Visuals)
        .unwrap();
    assert_eq!(visuals.id, "visuals");
    let out = dir.path().join("results/vis");

    let maps: PerturbationsFile = read(&out.join("perturbations.json"));
    assert_eq!(maps.schema_version, TENSOR_SCHEMA_VERSION);
    assert_eq!(
        TENSOR_SCHEMA_VERSION,
        gauntlet_report::TENSOR_SCHEMA_VERSION
    );
    assert!(
        maps.class_names.is_empty(),
        "MNIST classes are their digits"
    );
    // By default the baseline and the regularized model, not the other seed.
    let models: Vec<&str> = maps.models.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(models, ["base", "l2"]);
    let shown: Vec<(usize, u32)> = maps.models[0]
        .images
        .iter()
        .map(|i| (i.index, i.label))
        .collect();
    // One image per class, in class order, the same images for every model.
    assert!(shown.len() >= 8, "{shown:?}");
    assert!(shown.windows(2).all(|w| w[0].1 < w[1].1), "{shown:?}");
    for m in &maps.models {
        let same: Vec<(usize, u32)> = m.images.iter().map(|i| (i.index, i.label)).collect();
        assert_eq!(same, shown, "{}", m.model);
        for img in &m.images {
            assert_eq!(
                img.pred, img.label,
                "{}: image {} is misclassified",
                m.model, img.index
            );
            assert_eq!(img.shape, [1, 28, 28]);
            assert_eq!(img.image.len(), 784);
            assert!(img.image.iter().all(|&v| (0.0..=1.0).contains(&v)));
            let norms: Vec<Norm> = img.perturbations.iter().map(|p| p.norm).collect();
            assert_eq!(norms, [Norm::Linf, Norm::L2, Norm::L1]);
            for p in &img.perturbations {
                // The default budgets: 0.25·784^(1/p).
                let want = 0.25 * 784f64.powf(1.0 / p.norm.p());
                assert!((p.eps - want).abs() < 1e-9, "{:?}: eps {}", p.norm, p.eps);
                let len = lp(&p.r, p.norm);
                assert!(
                    len <= p.eps * (1.0 + 1e-6),
                    "{} image {} {:?}: ‖r*‖ = {len} > ε = {}",
                    m.model,
                    img.index,
                    p.norm,
                    p.eps
                );
                assert!(len >= p.eps * (1.0 - 1e-4), "r* spends its budget: {len}");
                assert!(p.adv_label < 10 && p.confidence > 0.0 && p.confidence <= 1.0);
            }
        }
    }

    let sweeps: LogitSweepFile = read(&out.join("logit_sweep.json"));
    assert_eq!(sweeps.schema_version, TENSOR_SCHEMA_VERSION);
    assert_eq!(sweeps.sweeps.len(), 2);
    for s in &sweeps.sweeps {
        // The first image shown, swept over 11 points of [-5, 5] with 0 in the middle.
        assert_eq!((s.index, s.label), shown[0]);
        assert_eq!(s.norm, Norm::Linf);
        assert_eq!(s.eps.len(), 11);
        assert_eq!((s.eps[0], s.eps[5], s.eps[10]), (-5.0, 0.0, 5.0));
        assert_eq!(s.logits.len(), 11);
        assert!(s.logits.iter().all(|row| row.len() == 10));
        // At ε = 0 the model classifies the image correctly; the loss climbs along +ε.
        let clean = &s.logits[5];
        let top = (0..10)
            .max_by(|&a, &b| clean[a].total_cmp(&clean[b]))
            .unwrap();
        assert_eq!(top as u32, s.label, "{}", s.model);
        let margin = |row: &Vec<f64>| {
            let other = (0..10)
                .filter(|&c| c as u32 != s.label)
                .map(|c| row[c])
                .fold(f64::NEG_INFINITY, f64::max);
            row[s.label as usize] - other
        };
        assert!(margin(&s.logits[10]) < margin(clean), "{}", s.model);
    }

    // The report reads both files back and draws one figure per model and sweep.
    let report = gauntlet_report::write_report(&out, &dir.path().join("report")).unwrap();
    assert_eq!(report.count(gauntlet_report::FigureKind::Perturbations), 2);
    assert_eq!(report.count(gauntlet_report::FigureKind::LogitSweep), 2);

    // A merge copies them again; turning the visuals off removes them at the next aggregation.
    std::fs::remove_file(out.join("logit_sweep.json")).unwrap();
    merge_suite(&path, &options).unwrap();
    assert_eq!(
        read::<LogitSweepFile>(&out.join("logit_sweep.json")),
        sweeps
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[visuals]\n", "[visuals]\nsweep-image = 300\n"),
    )
    .unwrap();
    let err = run_suite(&path, &options).unwrap_err().to_string();
    assert!(
        err.contains("visuals.sweep-image") && err.contains("has 300 images"),
        "{err}"
    );
    std::fs::write(
        &path,
        text.replace("[visuals]\n", "[visuals]\nenabled = false\n"),
    )
    .unwrap();
    let off = run_suite(&path, &options).unwrap();
    assert!(off.jobs.iter().all(|j| j.kind != JobKind::Visuals));
    assert!(!out.join("perturbations.json").exists());
    assert!(!out.join("logit_sweep.json").exists());
}

#[test]
fn visuals_settings_are_planned_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = SUITE.replace(
        "[visuals]\n",
        "[visuals]\nmodels = [\"other-seed\"]\nbudgets = [{ norm = 2, eps = 3.0 }, { norm = \"inf\" }]\nsweep-norm = 2\n",
    );
    let path = write_suite(dir.path(), "ok.toml", &text);
    let (suite, plan) = plan_suite(&path, None).unwrap();
    let def = suite.visuals.as_ref().unwrap();
    assert_eq!(def.models, [2]);
    let budgets: Vec<(Norm, f64)> = def.budgets.iter().map(|b| (b.norm, b.eps)).collect();
    assert_eq!(budgets, [(Norm::L2, 3.0), (Norm::Linf, 0.25)]);
    assert_eq!(def.sweep.norm, Norm::L2);
    let job = plan.job("visuals").unwrap();
    let inputs: Vec<&str> = job
        .inputs
        .iter()
        .map(|&i| plan.jobs[i].id.as_str())
        .collect();
    assert_eq!(inputs, ["train/other-seed"]);
    // Another budget is another job.
    let (_, edited) = plan_suite(
        &write_suite(
            dir.path(),
            "edited.toml",
            &text.replace("eps = 3.0", "eps = 4.0"),
        ),
        None,
    )
    .unwrap();
    assert_ne!(edited.job("visuals").unwrap().key, job.key);
    assert_eq!(
        edited.job("train/base").unwrap().key,
        plan.job("train/base").unwrap().key
    );

    for (setting, field, needle) in [
        (
            "models = [\"nope\"]",
            "visuals.models[0]",
            "unknown model `nope`",
        ),
        ("models = []", "visuals.models", "at least one model"),
        (
            "budgets = [{ norm = 2 }, { norm = 2, eps = 1.0 }]",
            "visuals.budgets[1].norm",
            "listed twice",
        ),
        (
            "budgets = [{ norm = 1, eps = -1.0 }]",
            "visuals.budgets[0].eps",
            "-1",
        ),
        ("budgets = []", "visuals.budgets", "at least one"),
        ("sweep-points = 1", "visuals.sweep-points", "at least 2"),
        ("sweep-eps = 0.0", "visuals.sweep-eps", "> 0"),
    ] {
        let bad = SUITE.replace("[visuals]\n", &format!("[visuals]\n{setting}\n"));
        let path = write_suite(
            dir.path(),
            "bad.toml",
            &bad.replace("sweep-points = 11\n", "")
                .replace("sweep-eps = 5.0\n", ""),
        );
        let message = Suite::load(&path, None).unwrap_err().to_string();
        assert!(
            message.contains("bad.toml") && message.contains(field) && message.contains(needle),
            "{setting}: {message}"
        );
    }
    let typo = write_suite(
        dir.path(),
        "typo.toml",
        &SUITE.replace("sweep-points", "sweep-pionts"),
    );
    let message = Suite::load(&typo, None).unwrap_err().to_string();
    assert!(
        message.contains("unknown field `sweep-pionts`"),
        "{message}"
    );
}
