//! The report drawn from a small hand-made results folder (tests/fixtures/basic, in the
//! layout of docs/results.md): every figure kind, decodable PNGs of the stated size, SVGs,
//! report.md and index.html, schema-version errors, and the data of one plot series against a
//! golden file (set GAUNTLET_UPDATE_GOLDEN=1 to rewrite it after an intended change).

use std::fs;
use std::path::{Path, PathBuf};

use gauntlet_report::{read_results_dir, series, write_report, Error, FigureKind};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic")
}

/// A copy of the fixture's `files`, `edit` applied to results.json.
fn copy_fixture(files: &[&str], edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in files {
        fs::copy(fixture().join(name), dir.path().join(name)).unwrap();
    }
    let path = dir.path().join("results.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
    dir
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

#[test]
fn draws_every_figure_kind_and_both_documents() {
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(&fixture(), out.path()).unwrap();
    for (kind, expected) in [
        (FigureKind::Accuracy, 3),
        (FigureKind::Tradeoff, 3),
        (FigureKind::Transfer, 1),
        (FigureKind::Training, 1),
        (FigureKind::TrainingLoss, 1),
        (FigureKind::Noise, 1),
        (FigureKind::Perturbations, 2),
        (FigureKind::LogitSweep, 1),
    ] {
        assert_eq!(
            summary.count(kind),
            expected,
            "{kind:?}: {:#?}",
            summary.figures
        );
    }
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
    for fig in &summary.figures {
        assert!(
            fig.png.starts_with(out.path().join("figures")),
            "{}",
            fig.png.display()
        );
        assert!(
            fs::metadata(&fig.png).unwrap().len() > 1000,
            "{}",
            fig.png.display()
        );
        assert_eq!(
            png_size(&fig.png),
            (fig.width, fig.height),
            "{}",
            fig.png.display()
        );
        let svg = fs::read_to_string(&fig.svg).unwrap();
        assert!(svg.contains("<svg"), "{}", fig.svg.display());
        assert!(
            svg.contains(&format!("width=\"{}\"", fig.width)),
            "{}",
            fig.svg.display()
        );
        assert!(svg.contains("<text"), "{}: no text", fig.svg.display());
    }
    let accuracy = summary
        .figures
        .iter()
        .find(|f| f.kind == FigureKind::Accuracy)
        .unwrap();
    assert_eq!(
        accuracy.png,
        out.path().join("figures/accuracy-fgsm-linf.png")
    );
    assert_eq!((accuracy.width, accuracy.height), (1000, 620));
    let transfer = summary
        .figures
        .iter()
        .find(|f| f.kind == FigureKind::Transfer)
        .unwrap();
    assert_eq!(
        transfer.png,
        out.path().join("figures/transfer-fgsm-linf-eps0.25.png")
    );

    let md = fs::read_to_string(&summary.report_md).unwrap();
    for needle in [
        "# gauntlet report: fixture",
        "## Clean accuracy",
        // The validation error is the best epoch's, read from training.csv.
        "| maxout | maxout-mlp | 1371610 | 5 (best 5) | epochs | 6.50% | 200 | 95.5% [91.7, 97.6] | 0.1520 |",
        "### fgsm (L∞): fast-gradient-linf, single-step",
        "| ε = 0.05 | ε = 0.1 | ε = 0.2 | ε = 0.3 |",
        "**89.0% [83.9, 92.6] (white-box)**",
        "**FAILED**",
        "3 of 4 checks passed",
        "1 planned job(s) have no output yet",
        "σ = 0.3",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    let html = fs::read_to_string(&summary.index_html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<style>") && html.contains("<table>") && html.contains("white-box"));
    // Every figure is linked from both documents, by a relative path that exists.
    for fig in &summary.figures {
        for path in [&fig.png, &fig.svg] {
            let rel = path.strip_prefix(out.path()).unwrap().to_str().unwrap();
            assert!(
                md.contains(&format!("({rel})")),
                "report.md does not link {rel}"
            );
            assert!(
                html.contains(&format!("href=\"{rel}\"")),
                "index.html does not link {rel}"
            );
        }
    }
}

#[test]
fn accuracy_series_match_the_golden_file() {
    let data = read_results_dir(&fixture()).unwrap();
    let panels = series::accuracy_panels(&data.results);
    let got = serde_json::to_string_pretty(&panels).unwrap() + "\n";
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/accuracy-series.json");
    if std::env::var_os("GAUNTLET_UPDATE_GOLDEN").is_some() {
        fs::write(&golden, &got).unwrap();
    }
    let want = fs::read_to_string(&golden)
        .expect("golden file; run with GAUNTLET_UPDATE_GOLDEN=1 to create it");
    assert_eq!(
        got, want,
        "accuracy series changed; if intended, rerun with GAUNTLET_UPDATE_GOLDEN=1"
    );

    // And by hand, the facts the golden file encodes for one series.
    let fgsm = &panels[0];
    assert_eq!(
        (fgsm.attack.as_str(), fgsm.norm.to_string().as_str()),
        ("fgsm", "L∞")
    );
    let models: Vec<&str> = fgsm.series.iter().map(|s| s.model.as_str()).collect();
    assert_eq!(models, ["maxout", "maxout-fgsm", "maxout-l2"]);
    let maxout = &fgsm.series[0];
    let xs: Vec<f64> = maxout.points.iter().map(|p| p.x).collect();
    assert_eq!(xs, [0.0, 0.05, 0.1, 0.2, 0.3]);
    let ys: Vec<f64> = maxout.points.iter().map(|p| p.y).collect();
    assert_eq!(ys, [0.955, 0.6, 0.26, 0.04, 0.005]);
    // The clean point's interval is Wilson's for 191/200.
    let (lo, hi) = gauntlet_report::wilson_interval(191, 200);
    assert_eq!((maxout.points[0].low, maxout.points[0].high), (lo, hi));
    assert!(maxout.points.iter().all(|p| p.low <= p.y && p.y <= p.high));

    let matrices = series::transfer_matrices(&data.results);
    assert_eq!(matrices.len(), 1);
    let m = &matrices[0];
    assert_eq!(m.sources, ["maxout", "maxout-fgsm", "maxout-l2"]);
    assert!((m.cells[0][0].unwrap().error - 0.89).abs() < 1e-12);
    assert!((m.cells[1][0].unwrap().error - 0.41).abs() < 1e-12);
    let tradeoff = series::tradeoff_panels(&panels);
    assert_eq!(tradeoff[0].eps, 0.2);
}

#[test]
fn unsupported_schema_versions_are_clear_errors() {
    let files = ["results.json"];
    for (version, word) in [(0, "older than supported"), (2, "newer than supported")] {
        let dir = copy_fixture(&files, |v| v["schema_version"] = version.into());
        let out = tempfile::tempdir().unwrap();
        let err = write_report(dir.path(), out.path()).unwrap_err();
        assert!(
            matches!(err, Error::SchemaVersion { found, supported: 1, .. } if found == version),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("results.json") && msg.contains(word), "{msg}");
        assert!(msg.contains(&format!("schema_version {version}")), "{msg}");
        assert!(!out.path().join("report.md").exists());
    }
    let dir = copy_fixture(&files, |v| {
        v.as_object_mut().unwrap().remove("schema_version");
    });
    let err = write_report(dir.path(), dir.path().join("report").as_path()).unwrap_err();
    assert!(matches!(err, Error::MissingSchemaVersion { .. }), "{err:?}");
    assert!(err.to_string().contains("results.json"), "{err}");
}

#[test]
fn optional_files_may_be_absent() {
    let dir = copy_fixture(&["results.json"], |v| {
        v["transfer"] = serde_json::json!([]);
        v["masking"] = serde_json::json!([]);
    });
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(dir.path(), out.path()).unwrap();
    assert_eq!(summary.count(FigureKind::Accuracy), 3);
    for kind in [
        FigureKind::Training,
        FigureKind::Transfer,
        FigureKind::Perturbations,
        FigureKind::LogitSweep,
    ] {
        assert_eq!(summary.count(kind), 0, "{kind:?}");
    }
    let notes = summary.notes.join("\n");
    for needle in [
        "training.csv",
        "transfer",
        "perturbations.json",
        "logit_sweep.json",
    ] {
        assert!(notes.contains(needle), "{notes}");
    }
    let md = fs::read_to_string(&summary.report_md).unwrap();
    assert!(
        md.contains("results.json has no gradient-masking checks."),
        "{md}"
    );
}

#[test]
fn inconsistent_tensor_files_name_the_file_and_the_array() {
    let dir = copy_fixture(&["results.json", "perturbations.json"], |_| {});
    let path = dir.path().join("perturbations.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    value["models"][0]["images"][1]["perturbations"][0]["r"]
        .as_array_mut()
        .unwrap()
        .pop();
    fs::write(&path, value.to_string()).unwrap();
    let err = write_report(dir.path(), dir.path().join("report").as_path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("perturbations.json"), "{msg}");
    assert!(
        msg.contains("model `maxout` image 1: perturbations[0].r"),
        "{msg}"
    );
    assert!(msg.contains("expected 784 values"), "{msg}");
}

/// Writes the fixture's report to $GAUNTLET_REPORT_OUT for a person to look at.
#[test]
fn write_fixture_report_for_inspection() {
    if let Some(out) = std::env::var_os("GAUNTLET_REPORT_OUT") {
        write_report(&fixture(), Path::new(&out)).unwrap();
    }
}

#[test]
fn tensor_files_of_another_schema_version_are_clear_errors() {
    for name in ["perturbations.json", "logit_sweep.json"] {
        let dir = copy_fixture(&["results.json", name], |_| {});
        let path = dir.path().join(name);
        let mut value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        value["schema_version"] = 0.into();
        fs::write(&path, value.to_string()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = write_report(dir.path(), out.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SchemaVersion {
                    found: 0,
                    supported: 1,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("older than supported"),
            "{msg}"
        );
        assert!(!out.path().join("report.md").exists());
    }
}

#[test]
fn training_curves_carry_the_pgd_check_when_the_log_has_it() {
    let dir = copy_fixture(&["results.json"], |_| {});
    // The fixture's log without the column (an older file), then with it for one model.
    let text = fs::read_to_string(fixture().join("training.csv")).unwrap();
    let mut lines = text.lines();
    let mut csv = format!("{},valid_pgd_error\n", lines.next().unwrap());
    for line in lines {
        let pgd = if line.starts_with("maxout-fgsm,") {
            "0.9"
        } else {
            ""
        };
        csv.push_str(&format!("{line},{pgd}\n"));
    }
    fs::write(dir.path().join("training.csv"), csv).unwrap();
    let data = read_results_dir(dir.path()).unwrap();
    let order: Vec<String> = data.results.models.iter().map(|m| m.name.clone()).collect();
    let curves = series::training_curves(
        data.training.as_deref().unwrap(),
        &order,
        &data.results.models,
    );
    for c in &curves {
        let want = if c.model == "maxout-fgsm" {
            c.train_error.len()
        } else {
            0
        };
        assert_eq!(c.valid_pgd_error.len(), want, "{}", c.model);
        assert!(c.valid_pgd_error.iter().all(|&(_, v)| v == 0.9));
    }
    let old = read_results_dir(&fixture()).unwrap();
    let old_curves = series::training_curves(
        old.training.as_deref().unwrap(),
        &order,
        &old.results.models,
    );
    assert!(old_curves.iter().all(|c| c.valid_pgd_error.is_empty()));
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(dir.path(), out.path()).unwrap();
    assert_eq!(summary.count(FigureKind::Training), 1);
    let svg = fs::read_to_string(out.path().join("figures/training.svg")).unwrap();
    assert!(
        svg.contains("10-step PGD"),
        "the legend names the PGD check"
    );
}

#[test]
fn image_panels_are_embedded_bitmaps_in_the_svg() {
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(&fixture(), out.path()).unwrap();
    let maps = gauntlet_report::tensors::read_perturbations(&fixture().join("perturbations.json"))
        .unwrap();
    for (fig, model) in summary
        .figures
        .iter()
        .filter(|f| f.kind == FigureKind::Perturbations)
        .zip(&maps.models)
    {
        let svg = fs::read_to_string(&fig.svg).unwrap();
        // One PNG per panel (the clean image, then r* and x + r* per norm), not a rectangle
        // per pixel.
        let panels: usize = model
            .images
            .iter()
            .map(|i| 1 + 2 * i.perturbations.len())
            .sum();
        assert_eq!(
            svg.matches("<image").count(),
            panels,
            "{}",
            fig.svg.display()
        );
        assert_eq!(svg.matches("base64,").count(), panels);
        assert!(
            svg.matches("<rect").count() < 300,
            "{}: {} rectangles",
            fig.svg.display(),
            svg.matches("<rect").count()
        );
    }
}

#[test]
fn a_targeted_attack_gets_a_table_of_targets_reached() {
    let dir = copy_fixture(&["results.json"], |v| {
        for row in v["robustness"].as_array_mut().unwrap() {
            if row["model"] == "maxout" && row["attack"] == "fgsm" && row["eps"] == 0.1 {
                row["targeted_n"] = serde_json::json!(200);
                row["target_reached"] = serde_json::json!(37);
            }
        }
    });
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(dir.path(), out.path()).unwrap();
    let md = fs::read_to_string(&summary.report_md).unwrap();
    assert_eq!(md.matches("Targeted success").count(), 1, "{md}");
    let line = md
        .lines()
        .find(|l| l.starts_with("| maxout |") && l.contains("(37/200)"))
        .unwrap_or_else(|| panic!("no targeted row for maxout: {md}"));
    assert!(line.contains("18.5% (37/200)"), "{line}");
    // Models without counts show a dash; the fixture itself has no targeted attack.
    assert!(md.contains("| maxout-fgsm | — |"), "{md}");
    let plain_out = tempfile::tempdir().unwrap();
    let plain = write_report(&fixture(), plain_out.path()).unwrap();
    let plain_md = fs::read_to_string(&plain.report_md).unwrap();
    assert!(!plain_md.contains("Targeted success"));
}

#[test]
fn training_figures_give_each_model_a_panel_titled_with_its_check() {
    let dir = copy_fixture(&["results.json", "training.csv"], |v| {
        for m in v["models"].as_array_mut().unwrap() {
            m["train"]["adversarial-validation"] =
                serde_json::json!({ "p": "inf", "eps": 0.3, "n": 100 });
            if m["name"] == "maxout-l2" {
                m["train"]["regularizer"] = serde_json::json!({ "kind": "lp", "p": 2, "eps": 1.0 });
            }
        }
    });
    // The fixture's log has no attacked values: give one model some.
    let text = fs::read_to_string(fixture().join("training.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let column = header
        .split(',')
        .position(|c| c == "valid_adv_error")
        .unwrap();
    let mut csv = format!("{header}\n");
    for line in lines {
        let mut fields: Vec<&str> = line.split(',').collect();
        if fields[0] == "maxout-fgsm" {
            fields[column] = "0.5";
        }
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    fs::write(dir.path().join("training.csv"), csv).unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = write_report(dir.path(), out.path()).unwrap();
    assert_eq!(summary.count(FigureKind::Training), 1);
    assert_eq!(summary.count(FigureKind::TrainingLoss), 1);
    let errors = fs::read_to_string(out.path().join("figures/training.svg")).unwrap();
    assert!(
        errors.contains("maxout-fgsm · L∞ ε = 0.3"),
        "the attacked model's panel names its check"
    );
    assert!(
        !errors.contains("maxout · L∞"),
        "a panel without attacked values has no check in its title"
    );
    let loss = fs::read_to_string(out.path().join("figures/training-loss.svg")).unwrap();
    assert!(loss.contains("maxout-l2 (train: objective)"));
    assert!(
        !loss.contains("maxout-fgsm (train: objective)"),
        "no regularizer, plain train loss"
    );
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("figures/training-loss.png"));
}

#[test]
fn the_clean_table_marks_the_validation_best_radius_of_a_family() {
    // Two L2 members that differ only in eps, and an L∞ one alone in its family.
    let dir = copy_fixture(&["results.json"], |v| {
        let models = v["models"].as_array_mut().unwrap();
        let mut second = models[2].clone();
        second["name"] = "maxout-l2-big".into();
        models.push(second);
        for m in models.iter_mut() {
            let reg = match m["name"].as_str().unwrap() {
                "maxout-l2" => serde_json::json!({ "kind": "lp", "p": 2, "eps": 1.0 }),
                "maxout-l2-big" => serde_json::json!({ "kind": "lp", "p": 2, "eps": 3.0 }),
                "maxout-fgsm" => serde_json::json!({ "kind": "lp", "p": "inf", "eps": 0.25 }),
                _ => serde_json::json!({ "kind": "none" }),
            };
            m["train"]["regularizer"] = reg;
        }
    });
    let text = fs::read_to_string(fixture().join("training.csv")).unwrap();
    let mut csv = format!("{}\n", text.trim_end());
    // maxout-l2-big: the same log with a lower validation error at the kept epoch (5).
    for line in text.lines().filter(|l| l.starts_with("maxout-l2,")) {
        let mut fields: Vec<String> = line.split(',').map(String::from).collect();
        fields[0] = "maxout-l2-big".into();
        if fields[1] == "5" {
            fields[7] = "0.001".into();
        }
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    fs::write(dir.path().join("training.csv"), csv).unwrap();
    let out = tempfile::tempdir().unwrap();
    write_report(dir.path(), out.path()).unwrap();
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("maxout-l2-big (validation-best)"), "{md}");
    assert!(!md.contains("maxout-l2 (validation-best)"));
    assert!(
        !md.contains("maxout-fgsm (validation-best)"),
        "a family of one is not marked"
    );
    assert!(md.contains("the lowest valid error of maxout-l2, maxout-l2-big"));
}

#[test]
fn replicates_get_mean_sd_validation_selection_and_mcnemar() {
    // A baseline and a p = 2 member at two radii, each over seeds 1 and 2, on 20 test images.
    type Entry = (&'static str, Option<f64>, [f64; 2], [f64; 2]);
    let entries: [Entry; 3] = [
        // (entry, eps, valid error by seed, test error by seed)
        ("base", None, [0.02, 0.02], [0.10, 0.20]),
        ("l2-a", Some(1.0), [0.02, 0.01], [0.50, 0.05]),
        ("l2-b", Some(3.0), [0.01, 0.03], [0.05, 0.50]),
    ];
    let dir = copy_fixture(&["results.json"], |v| {
        let template = v["models"][0].clone();
        let mut models = Vec::new();
        for (entry, eps, _, test) in &entries {
            for (i, seed) in [1u64, 2].into_iter().enumerate() {
                let mut m = template.clone();
                m["name"] = format!("{entry}-s{seed}").into();
                m["group"] = (*entry).into();
                m["seed"] = seed.into();
                m["best_epoch"] = 1.into();
                m["test_n"] = 20.into();
                m["test_error"] = test[i].into();
                m["train"] = match eps {
                    None => serde_json::json!({ "seed": seed, "regularizer": { "kind": "none" } }),
                    Some(e) => {
                        serde_json::json!({ "seed": seed, "regularizer": { "kind": "lp", "p": 2, "eps": e } })
                    }
                };
                models.push(m);
            }
        }
        v["models"] = models.into();
        v["robustness"] = serde_json::json!([]);
        v["transfer"] = serde_json::json!([]);
        v["noise"] = serde_json::json!([]);
    });
    let mut training = String::from("model,epoch,train_loss,train_error,valid_loss,valid_error\n");
    for (entry, _, valid, _) in &entries {
        for (i, seed) in [1, 2].into_iter().enumerate() {
            training.push_str(&format!("{entry}-s{seed},1,0.1,0.01,0.1,{}\n", valid[i]));
        }
    }
    fs::write(dir.path().join("training.csv"), training).unwrap();
    // All labels 0. Wrong: base-s1 on 0-1, base-s2 on 0-3, the selected p = 2 models
    // (l2-b-s1, l2-a-s2) on 19; the others on 10-19 (their test error 0.5).
    let wrong = |model: &str, i: usize| match model {
        "base-s1" => i < 2,
        "base-s2" => i < 4,
        "l2-b-s1" | "l2-a-s2" => i == 19,
        _ => i >= 10,
    };
    let names: Vec<String> = entries
        .iter()
        .flat_map(|(e, ..)| [format!("{e}-s1"), format!("{e}-s2")])
        .collect();
    let mut csv = format!("index,label,{}\n", names.join(","));
    for i in 0..20 {
        let preds: Vec<&str> = names
            .iter()
            .map(|n| if wrong(n, i) { "3" } else { "0" })
            .collect();
        csv.push_str(&format!("{i},0,{}\n", preds.join(",")));
    }
    fs::write(dir.path().join("predictions.csv"), &csv).unwrap();

    let out = tempfile::tempdir().unwrap();
    write_report(dir.path(), out.path()).unwrap();
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Seeds and paired tests"), "{md}");
    // Mean ± sample standard deviation of the baseline's 10% and 20%.
    assert!(
        md.contains(
            "| base | baseline | — | 2 | 2.00% ± 0.00 | 15.00% ± 7.07 | 1: 10.00%, 2: 20.00% |"
        ),
        "{md}"
    );
    // Validation picks eps 3 for seed 1 and eps 1 for seed 2: both at 5% test error.
    assert!(
        md.contains("| lp p = 2 | 1, 3 | 1: 3, 2: 1 | 2 | 5.00% ± 0.00 |"),
        "{md}"
    );
    // Seed 1: base only right on 19, l2 only right on 0-1; seed 2: 1 and 4 (p = 2·6/32).
    // Pooled 2/6: p = 2·(1 + 8 + 28)/256.
    assert!(
        md.contains(
            "| baseline vs lp p = 2 | 1: 1/2, p = 1.0000; 2: 1/4, p = 0.3750 | 2/6 | 0.2891 |"
        ),
        "{md}"
    );

    // Without the column of a selected model, its pairs are left out and the caption says so.
    let without: String = csv
        .lines()
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            // Columns: index, label, then the names in order; l2-a-s2 is the fourth.
            let kept: Vec<&str> = cells
                .iter()
                .enumerate()
                .filter(|(c, _)| *c != 2 + 3)
                .map(|(_, v)| *v)
                .collect();
            kept.join(",") + "\n"
        })
        .collect();
    assert!(
        without.starts_with("index,label,base-s1,base-s2,l2-a-s1,l2-b-s1,l2-b-s2\n"),
        "{without}"
    );
    fs::write(dir.path().join("predictions.csv"), &without).unwrap();
    write_report(dir.path(), out.path()).unwrap();
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("| baseline vs lp p = 2 | 1: 1/2, p = 1.0000 | 1/2 | 1.0000 |"),
        "{md}"
    );
    assert!(
        md.contains("Not tested, for want of a predictions.csv column: l2-a-s2."),
        "{md}"
    );

    // A predictions file that disagrees with results.json's test size is an error naming it.
    fs::write(
        dir.path().join("predictions.csv"),
        csv.lines().take(11).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let err = write_report(dir.path(), out.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("predictions.csv") && err.contains("10 rows"),
        "{err}"
    );
    // As is a class that is not a number.
    fs::write(
        dir.path().join("predictions.csv"),
        csv.replacen("\n1,0,3", "\n1,0,x", 1),
    )
    .unwrap();
    let err = write_report(dir.path(), out.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("predictions.csv") && err.contains("`x`"),
        "{err}"
    );
}

#[test]
fn second_stages_show_each_stage_beside_the_other() {
    let dir = copy_fixture(&["results.json"], |v| {
        let template = v["models"][0].clone();
        let mut first = template.clone();
        first["name"] = "full".into();
        first["epochs_run"] = 343.into();
        first["best_epoch"] = 243.into();
        first["stopped_by"] = "early-stopping".into();
        first["test_n"] = 10000.into();
        first["test_error"] = 0.0102.into();
        first["test_ci_low"] = 0.9878.into();
        first["test_ci_high"] = 0.9917.into();
        let mut second = first.clone();
        second["name"] = "full-60k".into();
        second["continues"] = "full".into();
        second["epochs_run"] = 12.into();
        second["best_epoch"] = 12.into();
        second["stopped_by"] = "train-loss-target".into();
        second["test_error"] = 0.0095.into();
        second["test_ci_low"] = 0.9885.into();
        second["test_ci_high"] = 0.9923.into();
        second["train"] =
            serde_json::json!({ "stop-at-train-loss": 0.04125, "regularizer": { "kind": "none" } });
        v["models"] = serde_json::json!([first, second]);
    });
    let mut training = String::from("model,epoch,train_loss,train_error,valid_loss,valid_error\n");
    for epoch in 1..=12 {
        training.push_str(&format!(
            "full-60k,{epoch},{},0.01,,\n",
            0.05 - 0.0008 * epoch as f64
        ));
    }
    fs::write(dir.path().join("training.csv"), training).unwrap();
    fs::write(
        dir.path().join("timings.csv"),
        "job,part,seconds,examples_per_second\ntrain/full,job,7300,\ntrain/full,training,7200,\ncontinue/full-60k,training,900,\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    write_report(dir.path(), out.path()).unwrap();
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Training stages"), "{md}");
    // Stage 1's epochs and kept epoch, 2 h; stage 2's 12 epochs to 0.05 - 0.0096 = 0.0404 (the target 0.04125 rounds up).
    assert!(
        md.contains("| full-60k | full | 343 (kept 243) | 2.00 h | 1.02% [0.83, 1.22] | 12 | train-loss-target | 0.0413 → 0.0404 | 15 min | 0.95% [0.77, 1.15] |"),
        "{md}"
    );
    // Without a second stage, no such section.
    let plain = copy_fixture(&["results.json"], |_| {});
    let out = tempfile::tempdir().unwrap();
    write_report(plain.path(), out.path()).unwrap();
    let md = fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(!md.contains("Training stages"));
}
