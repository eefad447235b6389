//! Every suite shipped in suites/ validates and plans, so a typo in one fails CI rather than a
//! user's night run.

use std::collections::BTreeSet;
use std::path::Path;

use gauntlet_suite::{Plan, Suite};

use crate::mnist_dir;

#[test]
fn every_shipped_suite_validates_and_plans() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root.join("suites")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Fashion-MNIST is not embedded; MNIST's files have the same names and shapes.
        let data_dir = text.contains("dataset = \"fashion-mnist\"").then(mnist_dir);
        // Relative data folders are resolved from the working directory, the repository root
        // for users; tests run in the crate's folder, so give the embedded folders explicitly.
        let data_dir = data_dir.or_else(|| {
            ["cifar10", "mnist"]
                .into_iter()
                .find(|d| text.contains(&format!("dataset = \"{d}\"")))
                .map(|d| root.join("data").join(d))
        });
        let suite = Suite::from_text(&path, &text, data_dir.as_deref())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let plan = Plan::new(&suite);
        let trains = plan
            .jobs
            .iter()
            .filter(|j| j.id.starts_with("train/") || j.id.starts_with("continue/"))
            .count();
        assert_eq!(trains, suite.models.len(), "{}", path.display());
        let dirs: BTreeSet<_> = plan.jobs.iter().map(|j| j.dir_name()).collect();
        assert_eq!(
            dirs.len(),
            plan.jobs.len(),
            "{}: job folders collide",
            path.display()
        );
        checked.push(suite.name.clone());
    }
    for name in [
        "quickstart",
        "mnist-paper",
        "mnist-paper-seeds",
        "mnist-paper-full",
        "mnist-conv",
        "cifar10",
        "fashion-mnist",
    ] {
        assert!(
            checked.iter().any(|c| c == name),
            "suites/{name}.toml not checked: {checked:?}"
        );
    }
}
