//! Output piped into a program that stops reading (`gauntlet ... | head -1`) ends the process
//! quietly, without a panic message.

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/../../suites/mnist-paper.toml");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist");
    let results = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(["run", suite, "--dry-run", "--data-dir", data, "--results"])
        .arg(results.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe before the plan (a few kB, less than a pipe's buffer) is printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
