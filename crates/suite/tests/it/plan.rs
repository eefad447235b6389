//! Job ids and keys are stable: the same suite plans the same jobs with the same keys, in
//! another process, after cosmetic edits, and an edit changes only the keys it should.

use std::collections::BTreeMap;

use gauntlet_suite::{plan_suite, JobKind, Plan};

use crate::{write_suite, TINY, TINY_JOBS};

fn keys(text: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "s.toml", text);
    let (_, plan) = plan_suite(&path, None).unwrap();
    plan.jobs
        .iter()
        .map(|j| (j.id.clone(), j.key.clone()))
        .collect()
}

#[test]
fn the_plan_has_every_job_with_inputs_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "s.toml", TINY);
    let (_, plan): (_, Plan) = plan_suite(&path, None).unwrap();
    assert_eq!(plan.jobs.len(), TINY_JOBS);
    for (i, job) in plan.jobs.iter().enumerate() {
        assert!(job.inputs.iter().all(|&k| k < i), "{}", job.id);
        assert_eq!(job.key.len(), 16);
        assert!(job.key.chars().all(|c| c.is_ascii_hexdigit()));
    }
    let count = |kind| plan.jobs.iter().filter(|j| j.kind == kind).count();
    assert_eq!(
        [
            JobKind::Train,
            JobKind::Attack,
            JobKind::Noise,
            JobKind::Craft,
            JobKind::Score,
            JobKind::Visuals
        ]
        .map(count),
        [2, 6, 2, 2, 4, 1]
    );
    let score = plan.job("score/fgsm/0.1/base/fgsm-trained").unwrap();
    let inputs: Vec<&str> = score
        .inputs
        .iter()
        .map(|&i| plan.jobs[i].id.as_str())
        .collect();
    assert_eq!(inputs, ["craft/fgsm/0.1/base", "train/fgsm-trained"]);
}

#[test]
fn keys_are_stable_across_runs_and_cosmetic_edits() {
    let first = keys(TINY);
    assert_eq!(first, keys(TINY));
    // Comments, spacing, key order and the order of attacks do not matter.
    let reordered = TINY
        .replace("seed = 3\n", "# a comment\nseed    =   3\n")
        .replace(
            "kind = \"pgd\"\nnorm = \"inf\"",
            "norm = \"inf\"\nkind = \"pgd\"",
        );
    assert_eq!(first, keys(&reordered));
    // Neither does where the data lives.
    let data = crate::mnist_dir().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    assert_eq!(
        first,
        keys(&TINY.replace("{data}", &link.display().to_string()))
    );
}

#[test]
fn editing_one_attack_changes_only_its_keys() {
    let first = keys(TINY);
    let edited = keys(&TINY.replace("eps = [1.0]", "eps = [1.5]"));
    let changed: Vec<&String> = first
        .keys()
        .filter(|id| first[*id] != edited[*id])
        .collect();
    assert_eq!(
        changed,
        ["attack/base/fgm-l2", "attack/fgsm-trained/fgm-l2"]
    );
    // The transfer attack's settings reach its craft and score jobs, but not its ε list.
    let edited = keys(&TINY.replace("eps = [0.1, 0.2]", "eps = [0.1, 0.3]"));
    let changed: Vec<&String> = first
        .keys()
        .filter(|id| first[*id] != edited[*id])
        .collect();
    assert_eq!(changed, ["attack/base/fgsm", "attack/fgsm-trained/fgsm"]);
    // Retraining a model changes everything downstream of it.
    let edited = keys(&TINY.replace("eps = 0.1, alpha", "eps = 0.15, alpha"));
    let changed = first.keys().filter(|id| first[*id] != edited[*id]).count();
    // train + 3 attacks + noise + craft + 2 scores with it as source + 1 as target + the
    // visuals, which show every regularized model.
    assert_eq!(changed, 1 + 3 + 1 + 1 + 2 + 1 + 1);
}

#[test]
fn an_attack_with_models_runs_on_those_only() {
    let restricted = TINY.replacen(
        "[[attack]]\nname = \"pgd\"",
        "[[attack]]\nname = \"pgd\"\nmodels = [\"fgsm-trained\"]",
        1,
    );
    assert_ne!(restricted, TINY, "TINY's pgd attack moved");
    let all = keys(TINY);
    let some = keys(&restricted);
    assert!(!some.contains_key("attack/base/pgd"));
    // The other jobs keep their keys: restricting one attack reruns nothing else.
    for (id, key) in &some {
        assert_eq!(all.get(id), Some(key), "{id}");
    }
    assert_eq!(some.len() + 1, all.len());
    let dir = tempfile::tempdir().unwrap();
    for (models, message) in [
        (
            "[\"nobody\"]",
            "attack `pgd`.models: unknown model `nobody` (known: base, fgsm-trained)",
        ),
        ("[]", "attack `pgd`.models: lists no model"),
    ] {
        let text = TINY.replacen(
            "[[attack]]\nname = \"pgd\"",
            &format!("[[attack]]\nname = \"pgd\"\nmodels = {models}"),
            1,
        );
        let path = write_suite(dir.path(), "bad.toml", &text);
        let err = plan_suite(&path, None).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}
