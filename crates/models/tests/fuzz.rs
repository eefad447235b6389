//! Fuzzing the checkpoint and ONNX loaders (proptest): damaged files, random bytes and specs with
//! arbitrary numbers give a model or an error, never a panic. `make test` tries a few hundred
//! inputs per property; `make fuzz` sets PROPTEST_CASES for a long run.

use std::cell::Cell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use gauntlet_models::checkpoint::{self, SPEC_KEY};
use gauntlet_models::{build, Arch, Mode, ModelSpec};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn runner() -> TestRunner {
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

/// A scratch folder in memory when the system has one: the loaders read files, and a long
/// run writes one per input.
fn scratch() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// A tiny saved Maxout MLP: the checkpoint's bytes, its spec as JSON, its tensors.
fn valid() -> (Vec<u8>, String, HashMap<String, Tensor>) {
    let spec = ModelSpec::new(Arch::maxout_mlp(vec![3], 2), [1, 2, 2], 3);
    let model = build(&spec, 1, &Device::Cpu).unwrap();
    let dir = scratch();
    let path = dir.path().join("m.safetensors");
    checkpoint::save(model.as_ref(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let spec = std::fs::read_to_string(checkpoint::spec_path(&path)).unwrap();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (bytes, spec, tensors)
}

/// Counts loaded and rejected inputs, printed at the end.
#[derive(Default)]
struct Tally(Cell<usize>, Cell<usize>);

impl Tally {
    fn add(&self, ok: bool) {
        let count = if ok { &self.0 } else { &self.1 };
        count.set(count.get() + 1);
    }

    fn print(&self, what: &str) {
        let (ok, rejected) = (self.0.get(), self.1.get());
        eprintln!(
            "fuzz {what}: {} inputs, {ok} loaded, {rejected} rejected with an error",
            ok + rejected
        );
    }
}

/// Loads `bytes` damaged by `edit`s (a byte set, or the file cut at an offset) and random
/// bytes from a file named `name`: each gives a model that runs, or an error, never a panic.
fn damaged_files_never_panic(
    bytes: Vec<u8>,
    name: &str,
    edit: impl Strategy<Value = (usize, Option<u8>)> + 'static,
    max_edits: usize,
) {
    let dir = scratch();
    let path = dir.path().join(name);
    let tally = Tally::default();
    let input = prop_oneof![
        vec(edit, 1..max_edits).prop_map(move |edits| {
            let mut b = bytes.clone();
            for (at, byte) in edits {
                match byte {
                    Some(v) if at < b.len() => b[at] = v,
                    None => b.truncate(at.min(b.len())),
                    _ => {}
                }
            }
            b
        }),
        vec(any::<u8>(), 0..300),
    ];
    runner()
        .run(&input, |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            let res = checkpoint::load(&path, &Device::Cpu);
            if let Ok(model) = &res {
                let [c, h, w] = model.spec().input;
                let xs = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu).unwrap();
                // A loaded model runs; its output may be an error, but not a panic.
                let _ = model.forward(&xs, Mode::Eval);
            }
            tally.add(res.is_ok());
            Ok(())
        })
        .unwrap();
    tally.print(name);
}

#[test]
fn damaged_or_random_checkpoint_bytes_never_panic() {
    let (bytes, _, _) = valid();
    // Damage concentrated on the header (its length word and JSON) and the first data bytes.
    let edit = prop_oneof![
        (0usize..400, any::<u8>()).prop_map(|(i, b)| (i, Some(b))),
        (0usize..2000).prop_map(|i| (i, None)),
    ];
    damaged_files_never_panic(bytes, "m.safetensors", edit, 4);
}

/// Every number in the spec JSON replaced by an arbitrary one: huge layers, zero sizes, too
/// many classes. The stored tensors stay those of the original model.
#[test]
fn specs_with_arbitrary_numbers_never_panic() {
    let (_, spec, tensors) = valid();
    let dir = scratch();
    let path = dir.path().join("m.safetensors");
    let tally = Tally::default();
    let n_numbers = spec
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .count();
    let number = prop_oneof![
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("4294967296".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        (0u64..10).prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
    ];
    let input = (0..n_numbers.max(1), number);
    runner()
        .run(&input, |(which, replacement)| {
            // Replace the `which`-th run of digits (with its sign and decimals).
            let mut out = String::new();
            let mut seen = 0;
            let mut chars = spec.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_digit() {
                    let mut run = c.to_string();
                    while let Some(&d) = chars.peek() {
                        if d.is_ascii_digit() || d == '.' || d == 'e' || d == '-' {
                            run.push(d);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push_str(if seen == which { &replacement } else { &run });
                    seen += 1;
                } else {
                    out.push(c);
                }
            }
            let metadata = HashMap::from([(SPEC_KEY.to_string(), out)]);
            let bytes = safetensors::serialize(tensors.iter(), Some(metadata)).unwrap();
            std::fs::write(&path, bytes).unwrap();
            tally.add(checkpoint::load(&path, &Device::Cpu).is_ok());
            Ok(())
        })
        .unwrap();
    tally.print("checkpoint specs");
}

/// The PyTorch MLP fixture's ONNX file damaged byte by byte or cut short, and random bytes.
#[test]
fn damaged_or_random_onnx_bytes_never_panic() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/mlp.onnx");
    let bytes = std::fs::read(fixture).unwrap();
    // The graph's nodes and attributes come after the weights: damage lands everywhere.
    let len = bytes.len();
    let edit = prop_oneof![
        (0usize..len, any::<u8>()).prop_map(|(i, b)| (i, Some(b))),
        (len - 2000..len).prop_map(|i| (i, Some(0xff))),
        (0usize..len).prop_map(|i| (i, None)),
    ];
    damaged_files_never_panic(bytes, "m.onnx", edit, 6);
}
