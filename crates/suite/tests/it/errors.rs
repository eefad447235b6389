//! Each bad suite file gives its own error, naming the file and the line or field.

use gauntlet_suite::{Error, Suite};

use crate::{write_suite, TINY};

/// Loads [`TINY`] with `from` replaced by `to` and returns the error message.
pub fn error_of(from: &str, to: &str) -> (Error, String) {
    assert!(TINY.contains(from), "the fixture must contain {from:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = write_suite(dir.path(), "bad.toml", &TINY.replacen(from, to, 1));
    let err = Suite::load(&path, None).expect_err("the suite must be rejected");
    let message = err.to_string();
    assert!(message.contains("bad.toml"), "{message}");
    (err, message)
}

#[test]
fn wrong_type() {
    let (err, message) = error_of("seed = 3", "seed = \"three\"");
    // Line 3 of the file (the fixture starts with a newline).
    assert!(
        message.contains("bad.toml:3:8:") && message.contains("invalid type"),
        "{message}"
    );
    assert!(matches!(
        err,
        Error::Toml {
            line_col: Some((3, 8)),
            ..
        }
    ));
}

#[test]
fn unknown_field() {
    let (_, message) = error_of("eps = [0.1, 0.2]", "epsilon = [0.1, 0.2]");
    assert!(
        message.contains("bad.toml:16:")
            && message.contains("attack `fgsm`.epsilon: unknown field `epsilon`"),
        "{message}"
    );
}

#[test]
fn unknown_field_in_an_inherited_model_table() {
    let (_, message) = error_of(
        "regularizer = { kind = \"lp\",",
        "regularizer = { kind = \"lp\", sigma = 1,",
    );
    assert!(
        message.contains("bad.toml:14:") && message.contains("sigma"),
        "{message}"
    );
}

#[test]
fn unknown_model_in_like() {
    let (_, message) = error_of("like = \"base\"", "like = \"bsae\"");
    assert!(
        message.contains("bad.toml:13:")
            && message.contains("unknown model `bsae`")
            && message.contains("base"),
        "{message}"
    );
}

#[test]
fn unknown_model_in_transfer() {
    let (err, message) = error_of("eps = 0.1\n", "eps = 0.1\nsources = [\"base\", \"nope\"]\n");
    assert!(
        message.contains("transfer.sources[1]") && message.contains("unknown model `nope`"),
        "{message}"
    );
    assert!(matches!(err, Error::Invalid { .. }));
}

#[test]
fn unknown_attack_in_transfer() {
    let (_, message) = error_of("attack = \"fgsm\"", "attack = \"fsgm\"");
    assert!(
        message.contains("transfer.attack") && message.contains("unknown attack `fsgm`"),
        "{message}"
    );
}

#[test]
fn negative_eps() {
    let (err, message) = error_of("eps = [0.1, 0.2]", "eps = [0.1, -0.2]");
    assert!(
        message.contains("attack `fgsm`.eps[1]") && message.contains("-0.2"),
        "{message}"
    );
    assert!(matches!(err, Error::Invalid { .. }));
}

#[test]
fn p_below_one() {
    let (_, message) = error_of("norm = 2", "norm = 0.5");
    assert!(
        message.contains("attack `fgm-l2`.norm: p must be >= 1"),
        "{message}"
    );
}

#[test]
fn p_below_one_in_a_regularizer() {
    let (_, message) = error_of("p = \"inf\"", "p = 0.5");
    assert!(
        message.contains("bad.toml:14:")
            && message.contains("fgsm-trained")
            && message.contains("p must be >= 1"),
        "{message}"
    );
}

#[test]
fn missing_data_dir() {
    let (err, message) = error_of("dir = \"{data}\"", "dir = \"/no/such/mnist\"");
    assert!(
        message.contains("data.dir") && message.contains("/no/such/mnist"),
        "{message}"
    );
    assert!(matches!(err, Error::Invalid { .. }));
}

#[test]
fn like_cycle() {
    let (_, message) = error_of(
        "name = \"base\"\n",
        "name = \"base\"\nlike = \"fgsm-trained\"\n",
    );
    assert!(
        message.contains("`like` cycle")
            && message.contains("fgsm-trained -> base -> fgsm-trained")
            || message.contains("base -> fgsm-trained -> base"),
        "{message}"
    );
}

#[test]
fn option_of_another_attack_kind() {
    let (_, message) = error_of("norm = 2\n", "norm = 2\nsteps = 10\n");
    assert!(
        message.contains("attack `fgm-l2`.steps") && message.contains("pgd"),
        "{message}"
    );
}

#[test]
fn syntax_error() {
    let (err, message) = error_of("[noise]", "[noise");
    assert!(
        matches!(
            err,
            Error::Toml {
                line_col: Some(_),
                ..
            }
        ),
        "{message}"
    );
}
