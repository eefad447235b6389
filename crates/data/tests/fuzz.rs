//! Fuzzing the loaders (proptest): arbitrary and damaged IDX, gzip and CIFAR-10 files give
//! a data set or an error, never a panic. `make test` tries a few hundred inputs per property;
//! `make fuzz` sets PROPTEST_CASES for a long run. Each property prints its counts.

use std::cell::Cell;
use std::path::Path;

use gauntlet_data::{
    load, load_cifar10, load_idx_images, load_idx_labels, DataConfig, DatasetName,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The default configuration (PROPTEST_CASES from the environment, else 256), without
/// regression files: a failure prints its minimal input instead.
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

fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// A change to a valid file: cut it, overwrite a byte, or overwrite a header word.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    Byte(usize, u8),
    Word(usize, u32),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Byte(i, b)),
        (0usize..4, any::<u32>()).prop_map(|(i, w)| Damage::Word(i, w)),
    ]
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        match *d {
            Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Damage::Byte(at, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            Damage::Word(i, w) if bytes.len() >= 4 * i + 4 => {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes())
            }
            _ => {}
        }
    }
    bytes
}

/// Counts of outcomes, printed so a run shows how many inputs reached each end.
#[derive(Default)]
struct Tally {
    ok: Cell<usize>,
    rejected: Cell<usize>,
}

impl Tally {
    fn add<T, E>(&self, res: &Result<T, E>) {
        let count = if res.is_ok() {
            &self.ok
        } else {
            &self.rejected
        };
        count.set(count.get() + 1);
    }

    fn print(&self, what: &str) {
        let (ok, rejected) = (self.ok.get(), self.rejected.get());
        eprintln!(
            "fuzz {what}: {} inputs, {ok} loaded, {rejected} rejected with an error",
            ok + rejected
        );
    }
}

#[test]
fn idx_files_damaged_or_random_never_panic() {
    let dir = scratch();
    let path = dir.path().join("file-idx");
    let tally = Tally::default();
    let valid = (0u32..6, 0u32..5, 0u32..5, any::<bool>()).prop_flat_map(|(n, r, c, labels)| {
        let len = if labels { n } else { n * r * c } as usize;
        (Just((n, r, c, labels)), vec(0u8..12, len))
    });
    let input = (
        prop_oneof![
            valid.prop_map(|((n, r, c, labels), body)| if labels {
                idx(0x0801, &[n], &body)
            } else {
                idx(0x0803, &[n, r, c], &body)
            }),
            vec(any::<u8>(), 0..64),
        ],
        vec(damage(), 0..3),
        any::<bool>(),
    );
    runner()
        .run(&input, |(bytes, damages, zipped)| {
            let mut bytes = apply(bytes, &damages);
            if zipped {
                bytes = gzip(&bytes);
            }
            std::fs::write(&path, &bytes).unwrap();
            let images = load_idx_images(&path);
            if let Ok((n, rows, cols, pixels)) = &images {
                prop_assert_eq!(n * rows * cols, pixels.len());
            }
            tally.add(&images);
            let labels = load_idx_labels(&path, 10);
            if let Ok(labels) = &labels {
                prop_assert!(labels.iter().all(|&l| l < 10));
            }
            tally.add(&labels);
            Ok(())
        })
        .unwrap();
    tally.print("IDX images and labels");
}

#[test]
fn damaged_gzip_streams_never_panic() {
    let dir = scratch();
    let path = dir.path().join("file-idx.gz");
    let gz = gzip(&idx(0x0803, &[3, 2, 2], &[9; 12]));
    let tally = Tally::default();
    runner()
        .run(&vec(damage(), 1..4), |damages| {
            std::fs::write(&path, apply(gz.clone(), &damages)).unwrap();
            tally.add(&load_idx_images(&path));
            Ok(())
        })
        .unwrap();
    tally.print("gzip streams");
}

#[test]
fn cifar_batches_damaged_or_random_never_panic() {
    let dir = scratch();
    let path = dir.path().join("test_batch.bin");
    let tally = Tally::default();
    let input = (
        prop_oneof![
            (1usize..3).prop_flat_map(|n| vec(0u8..11, n * 3073)),
            vec(any::<u8>(), 0..4000),
        ],
        vec(damage(), 0..3),
    );
    runner()
        .run(&input, |(bytes, damages)| {
            std::fs::write(&path, apply(bytes, &damages)).unwrap();
            let res = load_cifar10(dir.path(), false);
            if let Ok(set) = &res {
                prop_assert_eq!(set.images.dims4().unwrap().0, set.len());
            }
            tally.add(&res);
            Ok(())
        })
        .unwrap();
    tally.print("CIFAR-10 batches");
}

/// A whole MNIST-format folder with damaged files and random limits: `load` gives splits
/// that respect the limits, or an error.
#[test]
fn whole_data_sets_with_damaged_files_and_random_limits_never_panic() {
    let dir = scratch();
    let tally = Tally::default();
    let files = [
        ("train-images-idx3-ubyte", idx(0x0803, &[8, 2, 2], &[1; 32])),
        (
            "train-labels-idx1-ubyte",
            idx(0x0801, &[8], &[0, 1, 2, 3, 4, 5, 6, 7]),
        ),
        ("t10k-images-idx3-ubyte", idx(0x0803, &[3, 2, 2], &[2; 12])),
        ("t10k-labels-idx1-ubyte", idx(0x0801, &[3], &[9, 8, 7])),
    ];
    let limit = || proptest::option::of(0usize..10);
    let input = (
        0usize..4,
        vec(damage(), 0..3),
        (limit(), limit(), limit(), limit()),
    );
    runner()
        .run(
            &input,
            |(victim, damages, (valid, train, valid_limit, test))| {
                for (i, (name, bytes)) in files.iter().enumerate() {
                    let bytes = if i == victim {
                        apply(bytes.clone(), &damages)
                    } else {
                        bytes.clone()
                    };
                    std::fs::write(dir.path().join(name), bytes).unwrap();
                }
                let mut config = DataConfig::new(DatasetName::Mnist);
                config.dir = Some(dir.path().to_path_buf());
                (config.valid_size, config.train_limit) = (valid, train);
                (config.valid_limit, config.test_limit) = (valid_limit, test);
                let res = load(&config);
                if let Ok(splits) = &res {
                    prop_assert!(!splits.train.is_empty() && !splits.test.is_empty());
                    prop_assert!(splits.train.len() <= train.unwrap_or(usize::MAX));
                    prop_assert!(splits.test.len() <= test.unwrap_or(usize::MAX));
                    for set in [&splits.train, &splits.valid, &splits.test] {
                        set.validate().unwrap();
                    }
                }
                tally.add(&res);
                Ok(())
            },
        )
        .unwrap();
    tally.print("MNIST folders");
    assert!(Path::new(dir.path()).is_dir());
}
