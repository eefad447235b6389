//! The committed reports are what `gauntlet report` draws from the committed results: a
//! report left stale by a change to the report code, or to the results, fails here.
//!
//! report.md, index.html and the SVG figures (integer coordinates, text as text) must match
//! byte for byte; a PNG only in its size, since anti-aliased glyphs may round differently on
//! another machine's float code and CI must not depend on that.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file below `dir`, as paths relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    (bytes.get(12..16)? == b"IHDR").then_some(())?;
    Some((be(16)?, be(20)?))
}

#[test]
fn every_committed_report_is_redrawn_byte_for_byte_from_its_results() {
    let repo = repo();
    let mut names: Vec<String> = fs::read_dir(repo.join("report"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| repo.join("results").join(name).is_dir())
        .collect();
    names.sort();
    // The reports the README links to; a rename must not silently drop one from the check.
    for name in [
        "cifar10",
        "mnist-conv",
        "mnist-paper",
        "mnist-paper-full",
        "mnist-paper-seeds",
        "quickstart",
        "transfer",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "report/{name} or results/{name} is missing"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in &names {
        let out_dir = tmp.path().join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["report", &format!("results/{name}"), "--out"])
            .arg(&out_dir)
            .current_dir(&repo)
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "gauntlet report results/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let committed = repo.join("report").join(name);
        let (drawn, kept) = (files(&out_dir), files(&committed));
        assert_eq!(
            drawn, kept,
            "report/{name}: the files differ from a fresh draw"
        );
        for file in &drawn {
            let (fresh, kept) = (
                fs::read(out_dir.join(file)).unwrap(),
                fs::read(committed.join(file)).unwrap(),
            );
            let same = if file.extension().is_some_and(|e| e == "png") {
                png_size(&fresh).is_some() && png_size(&fresh) == png_size(&kept)
            } else {
                fresh == kept
            };
            assert!(
                same,
                "report/{name}/{} differs from what `gauntlet report results/{name}` draws now; \
                 redraw it with that command",
                file.display()
            );
        }
    }
}
