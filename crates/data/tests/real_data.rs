//! The embedded MNIST and the shared data sets, when present, load with the documented shapes.

use gauntlet_data::{load, DataConfig, DatasetName};

#[test]
fn embedded_mnist_has_the_published_shape_and_label_counts() {
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.valid_size = Some(10_000);
    let splits = load(&config).expect("data/mnist ships with the repository");
    assert_eq!(splits.train.images.dims4().unwrap(), (50_000, 1, 28, 28));
    assert_eq!(splits.valid.len(), 10_000);
    assert_eq!(splits.test.images.dims4().unwrap(), (10_000, 1, 28, 28));
    for set in [&splits.train, &splits.valid, &splits.test] {
        set.validate().unwrap();
    }
    // Published counts (data/mnist/README.md).
    assert_eq!(
        splits.test.class_counts().unwrap(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let train_all: Vec<usize> = splits
        .train
        .class_counts()
        .unwrap()
        .iter()
        .zip(splits.valid.class_counts().unwrap())
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(
        train_all,
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let min = splits
        .test
        .images
        .min_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let max = splits
        .test
        .images
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!((min, max), (0.0, 1.0));
}

#[test]
fn limits_apply_after_the_split() {
    let mut config = DataConfig::new(DatasetName::Mnist);
    config.train_limit = Some(2000);
    config.valid_limit = Some(500);
    config.test_limit = Some(300);
    let splits = load(&config).unwrap();
    assert_eq!(
        (splits.train.len(), splits.valid.len(), splits.test.len()),
        (2000, 500, 300)
    );
}

#[test]
fn missing_directory_is_a_clear_error() {
    let mut config = DataConfig::new(DatasetName::FashionMnist);
    config.dir = Some("/nonexistent/fashion".into());
    let err = load(&config).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/fashion") && err.contains("fashion-mnist"),
        "{err}"
    );
}

#[test]
fn shared_cifar10_prefix_loads_when_present() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10");
    if !dir.is_dir() {
        return; // The shared folder is optional; the format itself is tested in cifar10.rs.
    }
    let mut config = DataConfig::new(DatasetName::Cifar10);
    config.dir = Some(dir);
    config.valid_size = Some(0);
    let splits = load(&config).unwrap();
    assert_eq!(splits.train.images.dims4().unwrap(), (4000, 3, 32, 32));
    assert_eq!(
        splits.test.class_counts().unwrap(),
        vec![103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    );
}
