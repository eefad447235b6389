//! Every `target/release/gauntlet …` command in the README runs as written, in README order,
//! with small limits: suites and recipes are copied with their data limits and epochs cut
//! down, and the evaluating commands get `--test-limit 50` (and few steps for `auto`). The
//! commands run in a scratch folder that sees the repository's `data/`, `crates/` (model
//! fixtures) and the cut-down `suites/`, so nothing is written into the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README's gauntlet commands: continuation lines joined, comments dropped, `a && b`
/// split.
fn readme_commands() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" #").next().unwrap().trim_end();
        if let Some(start) = code.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(code);
        let whole = std::mem::take(&mut pending);
        for part in whole.split("&&") {
            let words: Vec<String> = part.split_whitespace().map(String::from).collect();
            if words.first().map(String::as_str) == Some("target/release/gauntlet") {
                commands.push(words[1..].to_vec());
            }
        }
    }
    commands
}

/// `text` with every `key = N` (N an integer) set to `value`.
fn cap(text: &str, key: &str, value: usize) -> String {
    let pattern = format!("{key} = ");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let (before, after) = rest.split_at(at + pattern.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str(&value.to_string());
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The suite files, cut down to a few hundred images and one epoch.
fn small_suites(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            small_suites(&path, &target);
        } else if path.extension().is_some_and(|e| e == "toml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (key, value) in [
                ("train-limit", 500),
                ("valid-limit", 100),
                ("test-limit", 100),
                ("epochs", 1),
            ] {
                text = cap(&text, key, value);
            }
            std::fs::write(target, text).unwrap();
        }
    }
}

/// `args` with `flag value` set (replaced where given, appended where not).
fn set(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
}

#[test]
fn every_readme_command_runs_with_small_limits() {
    let repo = repo().canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    for shared in ["data", "crates"] {
        std::os::unix::fs::symlink(repo.join(shared), work.join(shared)).unwrap();
    }
    small_suites(&repo.join("suites"), &work.join("suites"));
    let commands = readme_commands();
    assert!(
        commands.len() >= 20,
        "found only {} commands",
        commands.len()
    );
    let mut ran = 0;
    for mut args in commands {
        // Data outside the repository (`../shared/...`): read from there when it exists.
        if let Some(i) = args.iter().position(|a| a.starts_with("../")) {
            let outside = repo.join(&args[i]);
            if !outside.exists() {
                eprintln!("skipped (no {}): {args:?}", outside.display());
                continue;
            }
            args[i] = outside.to_string_lossy().into_owned();
        }
        match args[0].as_str() {
            "train" => {
                set(&mut args, "--epochs", "1");
                set(&mut args, "--train-limit", "500");
                set(&mut args, "--test-limit", "100");
            }
            "attack" | "eval" | "noise" | "transfer" => set(&mut args, "--test-limit", "50"),
            _ => {}
        }
        if args
            .windows(2)
            .any(|w| w[0] == "--attack" && w[1] == "auto")
        {
            set(&mut args, "--steps", "3");
            set(&mut args, "--n-queries", "20");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(&args)
            .current_dir(work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gauntlet {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 20, "ran only {ran} commands");
    // What the single-command example promises.
    assert!(work.join("results/pgd-8/results.json").is_file());
    assert!(work.join("results/pgd-8/adv.safetensors").is_file());
    assert!(work.join("report/pgd-8/index.html").is_file());
}
