//! The one rule for names that become file or folder names (suites, models, attacks, training
//! runs): so that no name can reach outside its results folder or fail only after the compute.

/// The longest name accepted: a per-example file joins a model and an attack name, and the
/// pair must stay within the 255 bytes most file systems allow.
pub const MAX_NAME_LEN: usize = 100;

/// `Ok` when `name` is 1 to [`MAX_NAME_LEN`] letters, digits, `-`, `_` and `.`, not starting
/// with `.` (so neither `..` nor a hidden file); else what is wrong, to prefix with the field.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || !chars_ok || name.starts_with('.') {
        return Err(format!(
            "`{name}` must be non-empty and use only letters, digits, `-`, `_` and `.`, not starting with `.` (it names files)"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "`{}…` is {} characters long, at most {MAX_NAME_LEN} are allowed (it names files)",
            &name[..20],
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_hidden_empty_and_long_names_are_refused() {
        for bad in ["", "..", "../../x", "a/b", ".hidden", "a b", "é", "x\0"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        let long = "m".repeat(MAX_NAME_LEN + 1);
        let err = check_file_name(&long).unwrap_err();
        assert!(
            err.contains("101 characters") && err.contains("at most 100"),
            "{err}"
        );
        for good in [
            "a",
            "maxout-short",
            "pgd_linf.40",
            &"m".repeat(MAX_NAME_LEN),
        ] {
            check_file_name(good).unwrap();
        }
    }
}
