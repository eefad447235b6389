//! Damaged data files give an error naming the file and what was expected, never a panic.

use std::path::Path;

use gauntlet_data::{
    load, load_cifar10, load_idx_images, load_idx_labels, load_mnist_like, DataConfig, Dataset,
    DatasetName, Error,
};

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0803, n, rows, cols] {
        out.extend_from_slice(&u32::to_be_bytes(v));
    }
    out.extend_from_slice(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0801, labels.len() as u32] {
        out.extend_from_slice(&u32::to_be_bytes(v));
    }
    out.extend_from_slice(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// An MNIST-format folder with `n_train` and `n_test` 2×2 images and labels `i mod 10`.
fn mnist_dir(dir: &Path, n_train: u32, n_test: u32) {
    for (split, n) in [("train", n_train), ("t10k", n_test)] {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = dir.join(format!("{split}-images-idx3-ubyte"));
        std::fs::write(images, idx_images(n, 2, 2, &pixels)).unwrap();
        let labels_path = dir.join(format!("{split}-labels-idx1-ubyte"));
        std::fs::write(labels_path, idx_labels(&labels)).unwrap();
    }
}

/// The message of an error, checked to name `file`.
fn names(err: Error, file: &str) -> String {
    let message = err.to_string();
    assert!(message.contains(file), "`{file}` not named in: {message}");
    message
}

#[test]
fn truncated_idx_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-images");
    std::fs::write(&path, &idx_images(1, 2, 2, &[0; 4])[..9]).unwrap();
    let message = names(load_idx_images(&path).unwrap_err(), "short-images");
    assert!(
        message.contains("truncated IDX header: 9 bytes, expected at least 16"),
        "{message}"
    );
}

#[test]
fn idx_payload_longer_than_its_header_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long-images");
    std::fs::write(&path, idx_images(1, 2, 2, &[0; 5])).unwrap();
    let message = names(load_idx_images(&path).unwrap_err(), "long-images");
    assert!(
        message.contains("need 4 bytes of data, the file has 5"),
        "{message}"
    );
}

#[test]
fn idx_dimensions_that_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-images");
    // 2^32-1 cubed overflows 64 bits; unchecked, it would wrap to a plausible size.
    std::fs::write(&path, idx_images(u32::MAX, u32::MAX, u32::MAX, &[0; 4])).unwrap();
    let message = names(load_idx_images(&path).unwrap_err(), "huge-images");
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn truncated_gzip_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let gz = gzip(&idx_images(50, 2, 2, &[7; 200]));
    std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
    let message = names(
        load_idx_images(&path).unwrap_err(),
        "train-images-idx3-ubyte.gz",
    );
    assert!(message.contains("corrupt gzip stream"), "{message}");
}

#[test]
fn gzip_of_a_file_that_is_not_idx() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.gz");
    std::fs::write(&path, gzip(b"<html>not found</html>")).unwrap();
    let message = names(load_idx_labels(&path, 10).unwrap_err(), "labels.gz");
    assert!(message.contains("bad IDX magic number"), "{message}");
}

#[test]
fn images_and_labels_of_different_counts() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 10);
    let labels = dir.path().join("t10k-labels-idx1-ubyte");
    std::fs::write(&labels, idx_labels(&[1; 9])).unwrap();
    let err = load_mnist_like(dir.path(), "mnist", "t10k").unwrap_err();
    assert!(matches!(
        err,
        Error::CountMismatch {
            n_images: 10,
            n_labels: 9,
            ..
        }
    ));
    let message = names(err, "t10k-labels-idx1-ubyte");
    assert!(
        message.contains("t10k-images-idx3-ubyte holds 10 images")
            && message.contains("holds 9 labels"),
        "{message}"
    );
}

#[test]
fn cifar_record_with_a_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = vec![3u8; 2 * 3073];
    bytes[3073] = 10;
    std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
    let message = names(
        load_cifar10(dir.path(), false).unwrap_err(),
        "test_batch.bin",
    );
    assert!(
        message.contains("record 1 has label 10, expected 0..=9"),
        "{message}"
    );
}

#[test]
fn empty_cifar_batch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), b"").unwrap();
    let message = names(
        load_cifar10(dir.path(), false).unwrap_err(),
        "test_batch.bin",
    );
    assert!(message.contains("0 bytes"), "{message}");
}

fn config(dir: &Path) -> DataConfig {
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.dir = Some(dir.to_path_buf());
    config.valid_size = Some(0);
    config
}

#[test]
fn a_train_limit_of_zero_is_an_empty_data_set() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 10);
    let mut config = config(dir.path());
    config.train_limit = Some(0);
    let message = load(&config).unwrap_err().to_string();
    assert!(
        message.contains("the train split of mnist") && message.contains("is empty"),
        "{message}"
    );
}

#[test]
fn a_validation_split_of_every_example_is_an_empty_data_set() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 10);
    let mut config = config(dir.path());
    config.valid_size = Some(30);
    let message = load(&config).unwrap_err().to_string();
    assert!(
        message.contains("valid-size 30 leaves no training examples") && message.contains("has 30"),
        "{message}"
    );
}

#[test]
fn a_test_file_with_no_images_is_an_empty_data_set() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 0);
    let message = load(&config(dir.path())).unwrap_err().to_string();
    assert!(message.contains("the test split of mnist"), "{message}");
}

#[test]
fn pixels_that_do_not_fit_the_shape_are_an_error() {
    let err = Dataset::from_u8(vec![0; 7], vec![0, 1], (2, 1, 2, 2), 10).unwrap_err();
    assert!(err.to_string().contains("7 pixels and 2 labels"), "{err}");
    let err = Dataset::from_u8(vec![0; 8], vec![0], (2, 1, 2, 2), 10).unwrap_err();
    assert!(err.to_string().contains("1 labels"), "{err}");
}

#[test]
fn a_data_folder_that_does_not_exist_is_named_with_how_to_point_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let err = load(&config(&missing)).unwrap_err();
    assert!(matches!(err, Error::NoFolder { .. }), "{err:?}");
    let message = names(err, "nowhere");
    assert!(
        message.contains("data set mnist")
            && message.contains("does not exist")
            && message.contains("--data-dir"),
        "{message}"
    );
}

#[test]
fn multi_member_gzip_reads_as_gzip_dc_does() {
    // `cat a.gz b.gz` and pigz write several gzip members; `gzip -dc` reads them as one stream.
    let dir = tempfile::tempdir().unwrap();
    let bytes = idx_images(3, 2, 2, &[9; 12]);
    let mut joined = gzip(&bytes[..10]);
    joined.extend(gzip(&bytes[10..]));
    let path = dir.path().join("joined-images.gz");
    std::fs::write(&path, joined).unwrap();
    let (n, rows, cols, pixels) = load_idx_images(&path).unwrap();
    assert_eq!((n, rows, cols, pixels), (3, 2, 2, vec![9; 12]));
}

#[test]
fn a_gzip_expanding_past_its_header_stops_one_byte_after_the_promised_size() {
    // 4 GiB of zeros behind a header promising 4 bytes, in 1 MiB gzip members (about 4 MB on
    // disk): refused after reading 5 payload bytes, not after inflating the gigabytes.
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = gzip(&idx_images(1, 2, 2, &[0; 4]));
    let member = gzip(&vec![0u8; 1 << 20]);
    // Inflating it all takes seconds, stopping early milliseconds: a bound that does not flake
    // under load.
    for _ in 0..4096 {
        bomb.extend_from_slice(&member);
    }
    let path = dir.path().join("bomb-images.gz");
    std::fs::write(&path, bomb).unwrap();
    let started = std::time::Instant::now();
    let message = names(load_idx_images(&path).unwrap_err(), "bomb-images.gz");
    assert!(
        message.contains("need 4 bytes of data, the file has more"),
        "{message}"
    );
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_header_promising_more_than_deflate_can_hold_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims-images.gz");
    std::fs::write(&path, gzip(&idx_images(60_000, 1000, 1000, &[0; 16]))).unwrap();
    let message = names(load_idx_images(&path).unwrap_err(), "claims-images.gz");
    assert!(
        message.contains("compressed bytes") && message.contains("truncated?"),
        "{message}"
    );
}

#[test]
fn the_test_split_loads_from_a_folder_without_training_files() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 10);
    std::fs::remove_file(dir.path().join("train-labels-idx1-ubyte")).unwrap();
    // A corrupt training file does not matter to the test split either.
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), b"garbage").unwrap();
    let mut config = config(dir.path());
    config.test_limit = Some(4);
    let split = gauntlet_data::load_test(&config).unwrap();
    assert_eq!(split.test.len(), 4);
    let files: Vec<&str> = split
        .identity
        .files
        .iter()
        .map(|f| f.file.as_str())
        .collect();
    assert_eq!(files, ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]);
    // The whole data set still needs the training files.
    assert!(load(&config).is_err());
}

#[test]
fn the_data_identity_changes_with_the_bytes_read() {
    let dir = tempfile::tempdir().unwrap();
    mnist_dir(dir.path(), 30, 10);
    let before = load(&config(dir.path())).unwrap().identity;
    assert_eq!(before.files.len(), 4);
    assert_eq!(before.files[2].bytes, 16 + 40);
    let labels: Vec<u8> = (0..10).map(|i| ((i + 1) % 10) as u8).collect();
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte"),
        idx_labels(&labels),
    )
    .unwrap();
    let after = load(&config(dir.path())).unwrap().identity;
    assert_ne!(before.digest(), after.digest());
    assert_eq!(before.files[..3], after.files[..3]);
    // The identity is that of the files as stored: recompressing one is another file.
    let plain = dir.path().join("t10k-labels-idx1-ubyte");
    let gz = gzip(&std::fs::read(&plain).unwrap());
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte.gz"), &gz).unwrap();
    std::fs::remove_file(plain).unwrap();
    let zipped = load(&config(dir.path())).unwrap().identity;
    assert_eq!(zipped.files[3].file, "t10k-labels-idx1-ubyte.gz");
    assert_eq!(zipped.files[3].bytes, gz.len() as u64);
    // `identify` finds the same without loading anything.
    assert_eq!(
        gauntlet_data::identify(&config(dir.path())).unwrap(),
        zipped
    );
}

#[test]
fn mnist_files_read_as_fashion_mnist_are_named_for_what_they_are() {
    let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let mut config = DataConfig::new(DatasetName::FashionMnist);
    config.dir = Some(embedded);
    let message = gauntlet_data::load_test(&config).unwrap_err().to_string();
    assert!(
        message.contains("t10k-images-idx3-ubyte.gz")
            && message.contains("this is mnist's t10k-images-idx3-ubyte")
            && message.contains("not fashion-mnist's"),
        "{message}"
    );
}

#[test]
fn fashion_mnist_files_read_as_mnist_are_refused_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    if !dir.is_dir() {
        return; // The shared folder is optional; the MNIST-as-Fashion case above runs always.
    }
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.dir = Some(dir);
    let message = gauntlet_data::load_test(&config).unwrap_err().to_string();
    assert!(message.contains("this is fashion-mnist's"), "{message}");
}
