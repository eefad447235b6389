//! What must not depend on the device a run uses: initial weights, dropout masks and the order
//! of the data all come from seeded ChaCha generators on the host and are copied to the device
//! afterwards; checkpoints hold host bytes. These tests pin the values a seed gives (drawn on
//! the CPU build); crates/gauntlet/tests/gpu.rs checks that a GPU gets the same bits.
//!
//! A pinned value that changes means every seeded run changes: cached suite results are then
//! stale, so bump the suite's `CODE_VERSION` along with the pin.

use candle_core::{DType, Device, Result, Tensor};
use gauntlet_data::Batches;
use gauntlet_models::layers::Dropout;
use gauntlet_models::{build, checkpoint, Arch, Classifier, CnnLayer, CnnSpec, ModelSpec};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1()
}

fn maxout() -> ModelSpec {
    ModelSpec::mnist(Arch::maxout_mlp(vec![8, 6], 3))
}

fn cnn() -> ModelSpec {
    ModelSpec::new(
        Arch::Cnn(CnnSpec {
            layers: vec![CnnLayer {
                channels: 2,
                kernel: 3,
                pad: 0,
                pool: 2,
                pool_stride: 2,
            }],
            ..CnnSpec::default()
        }),
        [1, 6, 6],
        3,
    )
}

/// The first three values and the sum of every parameter, in checkpoint order.
fn fingerprint(model: &dyn Classifier) -> Result<Vec<(String, [f32; 3], f64)>> {
    model
        .params()
        .tensors()
        .iter()
        .map(|(name, t)| {
            let v = values(t)?;
            let first = [v[0], v[1 % v.len()], v[2 % v.len()]];
            Ok((name.clone(), first, v.iter().map(|&x| x as f64).sum()))
        })
        .collect()
}

fn check_pinned(spec: &ModelSpec, pinned: &[(&str, [f32; 3], f64)]) -> Result<()> {
    let got = fingerprint(build(spec, 11, &Device::Cpu)?.as_ref())?;
    assert_eq!(got.len(), pinned.len(), "{got:?}");
    for ((name, first, sum), (p_name, p_first, p_sum)) in got.iter().zip(pinned) {
        assert_eq!(name, p_name, "{got:?}");
        assert_eq!(first, p_first, "{name}: {got:?}");
        assert!(
            (sum - p_sum).abs() <= 1e-9 * p_sum.abs().max(1.0),
            "{name}: {got:?}"
        );
    }
    Ok(())
}

#[test]
fn initial_weights_are_pinned_by_the_seed() -> Result<()> {
    check_pinned(&maxout(), PINNED_MAXOUT)?;
    check_pinned(&cnn(), PINNED_CNN)
}

const PINNED_MAXOUT: &[(&str, [f32; 3], f64)] = &[
    (
        "h0.weight",
        [-0.0017740154, -0.0014333713, 0.0044929087],
        -0.01974058081395924,
    ),
    ("h0.bias", [0.0, 0.0, 0.0], 0.0),
    (
        "h1.weight",
        [0.0041425033, 0.00030031428, -0.0041333437],
        -0.0048522737342864275,
    ),
    ("h1.bias", [0.0, 0.0, 0.0], 0.0),
    (
        "out.weight",
        [-0.002100823, -0.00203645, -0.004194206],
        -0.026922000804916024,
    ),
    ("out.bias", [0.0, 0.0, 0.0], 0.0),
];
const PINNED_CNN: &[(&str, [f32; 3], f64)] = &[
    (
        "h0.weight",
        [-0.1182677, -0.09555809, 0.29952726],
        1.0103387236595154,
    ),
    (
        "h0.bias",
        [0.0887104, -0.24970135, 0.0887104],
        -0.16099095344543457,
    ),
    (
        "out.weight",
        [0.24958453, -0.11659782, -0.06346616],
        -1.0597634762525558,
    ),
    (
        "out.bias",
        [0.12886044, 0.3267469, 0.09616107],
        0.55176842212677,
    ),
];

#[test]
fn dropout_masks_are_pinned_by_the_seed() -> Result<()> {
    let ones = Tensor::ones((2, 12), DType::F32, &Device::Cpu)?;
    let kept = Dropout::inverted(0.5).apply(&ones, 3)?;
    assert_eq!(values(&kept)?, PINNED_MASK.to_vec());
    Ok(())
}

const PINNED_MASK: [f32; 24] = [
    0.0, 2.0, 2.0, 2.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, //
    2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0,
];

#[test]
fn batch_order_is_pinned_by_the_seed() {
    let order: Vec<u32> = Batches::new(12, 5, Some(1))
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(order, PINNED_ORDER.to_vec());
}

const PINNED_ORDER: [u32; 12] = [3, 8, 5, 2, 7, 9, 11, 0, 4, 1, 6, 10];

/// A checkpoint holds the parameters' host bytes and nothing about the device it came from,
/// and loading puts every tensor on the device asked for.
#[test]
fn checkpoints_hold_host_bytes_and_load_onto_the_requested_device() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = build(&cnn(), 2, &Device::Cpu)?;
    checkpoint::save(model.as_ref(), &path)?;
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in model.params().tensors() {
        let stored = file.tensor(&name).unwrap();
        assert_eq!(stored.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(stored.shape(), t.dims(), "{name}");
        let host: Vec<u8> = values(&t)?.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(stored.data(), host.as_slice(), "{name}");
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut keys: Vec<_> = header.metadata().as_ref().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, [checkpoint::FORMAT_KEY, checkpoint::SPEC_KEY]);

    let device = Device::Cpu;
    let loaded = checkpoint::load(&path, &device)?;
    assert!(loaded
        .params()
        .tensors()
        .iter()
        .all(|(_, t)| t.device().same_device(&device)));
    Ok(())
}
