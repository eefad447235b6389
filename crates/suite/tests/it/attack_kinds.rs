//! The attack kinds beyond fast-gradient and PGD (`apgd`, `square`, `auto`) and `targeted`:
//! how they resolve, what they reject, and a run that records who broke each example.

use gauntlet_attacks::{
    Apgd, AttackConfig, AttackLoss, AutoAttack, AutoVersion, Norm, Pgd, Square, TargetSelection,
};
use gauntlet_suite::record::RobustnessRow;
use gauntlet_suite::{run_suite, RunOptions, Suite};

use crate::runs::read_csv;
use crate::write_suite;

const HEAD: &str = r#"
name = "kinds"
seed = 5
data = { dataset = "mnist", dir = "{data}", train-limit = 500, valid-size = 1000, valid-limit = 100, test-limit = 60 }

[[model]]
name = "base"
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 4, batch-size = 20, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }
"#;

fn load(attacks: &str) -> Result<Suite, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "kinds.toml", &format!("{HEAD}\n{attacks}"));
    Suite::load(&path, None).map_err(|e| e.to_string())
}

fn methods(attacks: &str) -> Vec<AttackConfig> {
    load(attacks)
        .unwrap_or_else(|e| panic!("{e}"))
        .attacks
        .into_iter()
        .map(|a| a.method)
        .collect()
}

#[test]
fn new_kinds_resolve_with_their_defaults_and_overrides() {
    let got = methods(
        r#"
[[attack]]
name = "apgd-t"
kind = "apgd"
norm = "inf"
eps = [0.1]
loss = "dlr"
target-classes = 4
steps = 30

[[attack]]
name = "square"
kind = "square"
norm = 2
eps = [1.0]
n-queries = 100
p-init = 0.3
seed = 9

[[attack]]
name = "auto"
kind = "auto"
norm = "inf"
eps = [0.1, 0.3]

[[attack]]
name = "auto-rand"
kind = "auto"
norm = "inf"
eps = [0.1]
version = "rand"
eot-draws = 5
"#,
    );
    assert_eq!(
        got[0],
        AttackConfig::Apgd(Apgd {
            loss: AttackLoss::Dlr,
            target_classes: Some(4),
            steps: 30,
            seed: 5,
            ..Apgd::new(Norm::Linf)
        })
    );
    assert_eq!(
        got[1],
        AttackConfig::Square(Square {
            n_queries: 100,
            p_init: 0.3,
            seed: 9,
            ..Square::new(Norm::L2)
        })
    );
    assert_eq!(
        got[2],
        AttackConfig::Auto(AutoAttack {
            seed: 5,
            ..AutoAttack::new(Norm::Linf)
        })
    );
    assert_eq!(
        got[3],
        AttackConfig::Auto(AutoAttack {
            version: AutoVersion::Rand,
            eot_draws: 5,
            seed: 5,
            ..AutoAttack::new(Norm::Linf)
        })
    );
    let names: Vec<String> = got.iter().map(|m| m.build().name()).collect();
    assert_eq!(
        names,
        [
            "apgd-t-dlr-linf",
            "square-l2",
            "auto-linf",
            "auto-rand-linf"
        ]
    );
}

#[test]
fn targeted_maps_to_a_target_selection() {
    let got = methods(
        r#"
[[attack]]
name = "pgd-random"
kind = "pgd"
norm = "inf"
eps = [0.1]
targeted = "random"
seed = 11

[[attack]]
name = "fgsm-ll"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]
targeted = "least-likely"

[[attack]]
name = "square-3"
kind = "square"
norm = "inf"
eps = [0.1]
targeted = { class = 3 }
"#,
    );
    let pgd = Pgd {
        seed: 11,
        ..Pgd::new(Norm::Linf)
    };
    assert_eq!(
        got[0],
        AttackConfig::Targeted {
            selection: TargetSelection::Random { seed: 11 },
            attack: Box::new(AttackConfig::Pgd(pgd)),
        }
    );
    assert!(matches!(
        &got[1],
        AttackConfig::Targeted { selection: TargetSelection::LeastLikely, attack }
            if matches!(**attack, AttackConfig::FastGradient { .. })
    ));
    assert!(matches!(
        &got[2],
        AttackConfig::Targeted {
            selection: TargetSelection::Class(3),
            ..
        }
    ));
    assert_eq!(got[2].norm(), Norm::Linf);
    assert_eq!(got[2].build().name(), "square-linf-targeted-class-3");
    // The untargeted spec's cache key is unchanged by the new optional field.
    let plain = methods(
        r#"
[[attack]]
name = "pgd"
kind = "pgd"
norm = "inf"
eps = [0.1]
"#,
    );
    let json = serde_json::to_string(&plain[0]).unwrap();
    assert!(!json.contains("targeted"), "{json}");
}

#[test]
fn options_that_do_not_fit_the_kind_are_rejected_with_the_field() {
    let err = |attack: &str| load(attack).expect_err("invalid attack");
    let case =
        |extra: &str| format!("[[attack]]\nname = \"a\"\nnorm = \"inf\"\neps = [0.1]\n{extra}\n");
    let msg = err(&case("kind = \"pgd\"\nn-queries = 10"));
    assert!(
        msg.contains("attack `a`.n-queries: applies to square, auto only, not pgd"),
        "{msg}"
    );
    let msg = err(&case("kind = \"auto\"\ntargeted = \"random\""));
    assert!(
        msg.contains(
            "attack `a`.targeted: applies to fast-gradient, pgd, apgd, square, fmn, ddn, deepfool, cw, fab only, not auto"
        ),
        "{msg}"
    );
    let msg = err("[[attack]]\nname = \"a\"\nkind = \"square\"\nnorm = 1\neps = [1.0]\n");
    assert!(
        msg.contains("attack `a`.norm: the square attack supports norms inf and 2, got l1"),
        "{msg}"
    );
    let msg = err(&case("kind = \"pgd\"\ntargeted = { class = 12 }"));
    assert!(
        msg.contains("attack `a`.targeted: class 12 is not one of the data set's 10 classes"),
        "{msg}"
    );
    let msg = err(&case("kind = \"pgd\"\ntargeted = \"sideways\""));
    assert!(msg.contains("unknown target selection `sideways`"), "{msg}");
    let msg = err(&case(
        "kind = \"apgd\"\ntarget-classes = 3\ntargeted = \"random\"",
    ));
    assert!(msg.contains("APGD-T picks its own targets"), "{msg}");
    let msg = err(&case(
        "kind = \"fmn\"\ntarget-classes = 3\ntargeted = \"random\"",
    ));
    assert!(msg.contains("FMN-T picks its own targets"), "{msg}");
    let msg = err(&case("kind = \"fmn\"\ntarget-classes = 0"));
    assert!(
        msg.contains("attack `a`.target-classes: must be at least 1, got 0"),
        "{msg}"
    );
    let msg = err(&case("kind = \"apgd\"\nsteps = 0"));
    assert!(
        msg.contains("attack `a`.steps: must be at least 1, got 0"),
        "{msg}"
    );
    let msg = err(&case("kind = \"auto\"\neot-draws = 3"));
    assert!(
        msg.contains("attack `a`.eot-draws: only applies to the rand version"),
        "{msg}"
    );
    let msg = err(&case("kind = \"auto\"\nversion = \"rand\"\nn-queries = 3"));
    assert!(
        msg.contains("attack `a`.n-queries: only applies to the standard version"),
        "{msg}"
    );
    let msg = err(&case("kind = \"square\"\np-init = 0"));
    assert!(
        msg.contains("attack `a`.p-init: must be in (0, 1], got 0"),
        "{msg}"
    );
}

#[test]
fn a_run_records_which_member_broke_each_example() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}\n{}",
        r#"
[[attack]]
name = "pgd"
kind = "pgd"
norm = "inf"
eps = [0.05, 0.15]
steps = 5

[[attack]]
name = "auto"
kind = "auto"
norm = "inf"
eps = [0.05, 0.15]
steps = 5
target-classes = 2
n-queries = 30

[[attack]]
name = "pgd-ll"
kind = "pgd"
norm = "inf"
eps = [0.15]
steps = 5
targeted = "least-likely"

[visuals]
enabled = false
"#
    );
    let path = write_suite(dir.path(), "kinds.toml", &text);
    let root = dir.path().join("results");
    let summary = run_suite(
        &path,
        &RunOptions {
            results_root: root.clone(),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(summary.is_complete(), "{:?}", summary.missing);
    let results = root.join("kinds");
    let rows: Vec<RobustnessRow> = read_csv(&results.join("robustness.csv"));
    let acc = |attack: &str, eps: f64| {
        rows.iter()
            .find(|r| r.attack == attack && r.eps == eps)
            .unwrap_or_else(|| panic!("no row {attack} {eps}"))
            .adversarial_correct
    };
    let clean = rows[0].clean_correct;
    assert!(clean >= 30, "the model learned too little: {clean}/60");
    for eps in [0.05, 0.15] {
        assert!(acc("auto", eps) <= acc("pgd", eps), "eps {eps}");
    }
    // A least-likely target is harder to reach than any wrong class.
    assert!(acc("pgd-ll", 0.15) >= acc("pgd", 0.15));
    assert!(acc("auto", 0.15) < clean);
    let auto = rows.iter().find(|r| r.attack == "auto").unwrap();
    assert_eq!(auto.method, "auto-linf");
    let examples = std::fs::read_to_string(results.join("per-example/base-auto.csv")).unwrap();
    let header = examples.lines().next().unwrap();
    assert!(header.ends_with(",broken_by"), "{header}");
    let members = ["apgd-ce-linf", "apgd-t-dlr-linf", "square-linf"];
    let mut broken = 0;
    for line in examples.lines().skip(1) {
        let by = line.rsplit(',').next().unwrap();
        assert!(by.is_empty() || members.contains(&by), "{line}");
        broken += usize::from(!by.is_empty());
    }
    assert!(broken > 0, "nothing broken: {examples}");

    // results.json carries the targeted attack's success, counted from its examples.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap())
            .unwrap();
    let entries = json["robustness"].as_array().unwrap();
    let ll = entries.iter().find(|e| e["attack"] == "pgd-ll").unwrap();
    let examples = std::fs::read_to_string(results.join("per-example/base-pgd-ll.csv")).unwrap();
    let mut lines = examples.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (adv, target) = (col("adv_pred"), col("target"));
    let reached = lines
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[adv] == f[target]
        })
        .count();
    assert_eq!(ll["targeted_n"], 60);
    assert_eq!(ll["target_reached"], reached);
    assert!(entries
        .iter()
        .filter(|e| e["attack"] != "pgd-ll")
        .all(|e| e.get("targeted_n").is_none() && e.get("target_reached").is_none()));
}

#[test]
fn budgets_are_written_as_numbers_or_fractions() {
    let suite = load(
        r#"
[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = ["8/255", 0.1, "16/255"]
"#,
    )
    .unwrap();
    assert_eq!(suite.attacks[0].eps, vec![8.0 / 255.0, 0.1, 16.0 / 255.0]);
    assert_eq!(
        suite.attacks[0].eps_written,
        [Some("8/255".to_string()), None, Some("16/255".to_string())]
    );
    let err = load(
        r#"
[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = ["8/0"]
"#,
    )
    .unwrap_err();
    assert!(err.contains("kinds.toml") && err.contains("8/0"), "{err}");
}

#[test]
fn a_minimum_norm_attack_writes_its_curve_and_records_at_its_eps() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}\n{}",
        r#"
[[attack]]
name = "pgd"
kind = "pgd"
norm = 2
eps = [0.5, 1.0]
steps = 10

[[attack]]
name = "fmn"
kind = "fmn"
norm = 2
eps = [0.5, 1.0]
steps = 30

[[attack]]
name = "deepfool"
kind = "deepfool"
norm = 2

[visuals]
enabled = false
"#
    );
    let path = write_suite(dir.path(), "kinds.toml", &text);
    let suite = Suite::load(&path, None).unwrap();
    assert!(suite.attacks[2].eps.is_empty());
    let root = dir.path().join("results");
    let summary = run_suite(
        &path,
        &RunOptions {
            results_root: root.clone(),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(summary.is_complete(), "{:?}", summary.missing);
    let results = root.join("kinds");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap())
            .unwrap();
    let curves = json["security_curves"].as_array().unwrap();
    let names: Vec<&str> = curves
        .iter()
        .map(|c| c["attack"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fmn", "deepfool"]);
    let points: Vec<gauntlet_results::CurvePointRow> =
        read_csv(&results.join("security-curves.csv"));
    let fmn: Vec<_> = points.iter().filter(|p| p.attack == "fmn").collect();
    assert_eq!(fmn.len(), curves[0]["points"].as_array().unwrap().len());
    assert!(fmn
        .windows(2)
        .all(|w| w[0].point.eps < w[1].point.eps && w[0].point.robust >= w[1].point.robust));
    // The robustness rows at fmn's ε are its curve read there.
    let rows: Vec<RobustnessRow> = read_csv(&results.join("robustness.csv"));
    for eps in [0.5, 1.0] {
        let row = rows
            .iter()
            .find(|r| r.attack == "fmn" && r.eps == eps)
            .unwrap();
        let at = fmn
            .iter()
            .take_while(|p| p.point.eps <= eps)
            .last()
            .unwrap();
        assert_eq!(row.adversarial_correct, at.point.robust, "eps {eps}");
        assert_eq!(row.kind, gauntlet_attacks::AttackKind::MinimumNorm);
    }
    // Its per-example distances: one row per test example, each broken one misclassified.
    let distances: Vec<gauntlet_results::MinNormExample> =
        read_csv(&results.join("per-example/base-fmn-distances.csv"));
    assert_eq!(distances.len(), 60);
    assert!(distances
        .iter()
        .filter(|d| d.distance.is_some_and(|d| d > 0.0))
        .all(|d| d.adv_pred != d.label));
    // The envelope of fmn and deepfool, and each one's optimality against it.
    let envelopes = json["optimality"].as_array().unwrap();
    assert_eq!(envelopes.len(), 1);
    let scores: Vec<f64> = envelopes[0]["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["local_optimality"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 2);
    assert!(
        scores.iter().all(|&s| (0.0..=1.0 + 1e-12).contains(&s)),
        "{scores:?}"
    );
    let table = std::fs::read_to_string(results.join("optimality.csv")).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");
    // The check of the curve against PGD ran.
    let masking = json["masking"].as_array().unwrap();
    assert!(masking
        .iter()
        .any(|m| m["check"] == "curve-below-fixed-eps" && m["attack"] == "fmn-l2 vs pgd-l2"));
}
