//! A results file's `report` section: published numbers beside ours, and protocol notes.

use gauntlet_report::write_report;

#[test]
fn published_numbers_and_notes_reach_report_md_and_index_html() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let json = serde_json::json!({
        "schema_version": 1,
        "suite": "paper",
        "report": {
            "notes": ["Fifty epochs instead of early stopping."],
            "references": [
                { "what": "Maxout MLP, clean test error", "source": "pylearn2", "published": 0.0094,
                  "metric": { "metric": "test-error", "model": "maxout" },
                  "ours": 0.0128, "ci_low": 0.0107, "ci_high": 0.0152, "n": 10000 },
                { "what": "Transfer", "source": "Goodfellow", "published": 0.196,
                  "metric": { "metric": "transfer-error", "source": "a", "target": "b", "eps": 0.25 },
                  "ours": null, "ci_low": null, "ci_high": null, "n": null }
            ]
        }
    });
    std::fs::write(results.join("results.json"), json.to_string()).unwrap();
    let out = dir.path().join("report");
    write_report(&results, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Published numbers beside ours"), "{md}");
    assert!(
        md.contains(
            "| Maxout MLP, clean test error | 0.94% | 1.28% [1.07, 1.52] | 10000 | pylearn2 |"
        ),
        "{md}"
    );
    assert!(md.contains("| Transfer | 19.60% | not run yet |"), "{md}");
    assert!(
        md.contains("Protocol notes") && md.contains("Fifty epochs instead of early stopping.")
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("19.60%") && html.contains("Fifty epochs"));
}
