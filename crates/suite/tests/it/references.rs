//! `[report]`: published numbers are checked against the suite when it loads, and set beside
//! the matching results in `results.json`.

use gauntlet_suite::record::Results;
use gauntlet_suite::references::Metric;
use gauntlet_suite::{run_suite, RunOptions, Suite};

use crate::{write_suite, TINY};

const REPORT: &str = r#"
[report]
notes = ["Shorter than the paper's protocol."]

[[report.reference]]
what = "base, clean"
published = 0.0094
source = "a paper"
ours = { metric = "test-error", model = "base" }

[[report.reference]]
what = "base, FGSM"
published = 0.894
source = "a paper"
ours = { metric = "attack-error", model = "base", attack = "fgsm", eps = 0.2 }

[[report.reference]]
what = "transfer"
published = 0.196
source = "a paper"
ours = { metric = "transfer-error", source = "base", target = "fgsm-trained", eps = 0.1 }

[[report.reference]]
what = "noise"
published = 0.5
source = "a paper"
ours = { metric = "noise-error", model = "fgsm-trained", sigma = 0.3 }
"#;

#[test]
fn references_carry_the_matching_results() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("results");
    let path = write_suite(dir.path(), "tiny.toml", &format!("{TINY}{REPORT}"));
    let options = RunOptions {
        results_root: root.clone(),
        ..RunOptions::default()
    };
    run_suite(&path, &options).unwrap();
    let text = std::fs::read_to_string(root.join("tiny/results.json")).unwrap();
    let r: Results = serde_json::from_str(&text).unwrap();
    assert_eq!(r.report.notes, ["Shorter than the paper's protocol."]);
    assert_eq!(r.report.references.len(), 4);
    for row in &r.report.references {
        let (ours, lo, hi) = (row.ours.unwrap(), row.ci_low.unwrap(), row.ci_high.unwrap());
        assert!(lo <= ours && ours <= hi, "{row:?}");
        let expected = match &row.metric {
            Metric::TestError { model } => {
                let m = r.models.iter().find(|m| &m.name == model).unwrap();
                (m.test_error, m.test_n)
            }
            Metric::AttackError { model, attack, eps } => {
                let e = r
                    .robustness
                    .iter()
                    .find(|e| &e.model == model && &e.attack == attack && e.eps == *eps)
                    .unwrap();
                (1.0 - e.adversarial_accuracy, e.n)
            }
            Metric::TransferError {
                source,
                target,
                eps,
            } => {
                let t = r
                    .transfer
                    .iter()
                    .find(|t| &t.source == source && &t.target == target && t.eps == *eps)
                    .unwrap();
                (t.error, t.n)
            }
            Metric::NoiseError { model, sigma } => {
                let n = r
                    .noise
                    .iter()
                    .find(|n| &n.model == model && n.sigma == *sigma)
                    .unwrap();
                (n.error, n.n)
            }
        };
        assert_eq!((ours, row.n.unwrap()), expected, "{row:?}");
    }
}

#[test]
fn a_reference_to_something_the_suite_lacks_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, field, says) in [
        (
            "model = \"base\" }",
            "report.reference[0].ours.model",
            "unknown model `nope`",
        ),
        (
            "attack = \"fgsm\", eps = 0.2 }",
            "report.reference[1].ours.eps",
            "0.25 is not among",
        ),
        (
            "published = 0.894",
            "report.reference[1].published",
            "expected an error rate in [0, 1]",
        ),
    ] {
        let replacement = match field {
            "report.reference[0].ours.model" => "model = \"nope\" }",
            "report.reference[1].ours.eps" => "attack = \"fgsm\", eps = 0.25 }",
            _ => "published = 89.4",
        };
        let text = format!("{TINY}{}", REPORT.replacen(bad, replacement, 1));
        let path = write_suite(dir.path(), "bad.toml", &text);
        let err = Suite::load(&path, None).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains(says), "{err}");
    }
}
