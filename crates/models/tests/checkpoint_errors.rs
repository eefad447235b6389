//! A checkpoint whose tensors do not match its spec, or whose spec is not a known and valid
//! architecture, is an error naming the file and the tensor or field, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gauntlet_models::checkpoint::{self, SPEC_KEY};
use gauntlet_models::{build, Arch, ModelSpec};

/// A small Maxout MLP saved in `dir`: its path and its tensors by name.
fn saved(dir: &Path) -> (PathBuf, HashMap<String, Tensor>) {
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![6], 2));
    let model = build(&spec, 3, &Device::Cpu).unwrap();
    let path = dir.join("net.safetensors");
    checkpoint::save(model.as_ref(), &path).unwrap();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (path, tensors)
}

/// Rewrites the checkpoint at `path` with `tensors` and the spec JSON `spec`.
fn rewrite(path: &Path, tensors: &HashMap<String, Tensor>, spec: &str) {
    let metadata = HashMap::from([(SPEC_KEY.to_string(), spec.to_string())]);
    let bytes = safetensors::serialize(tensors.iter(), Some(metadata)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn spec_json(path: &Path) -> String {
    std::fs::read_to_string(checkpoint::spec_path(path)).unwrap()
}

/// The load error, which must name the file.
fn load_error(path: &Path) -> String {
    let message = checkpoint::load(path, &Device::Cpu)
        .err()
        .expect("the checkpoint must be rejected")
        .to_string();
    assert!(message.contains("net.safetensors"), "{message}");
    message
}

#[test]
fn a_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut tensors) = saved(dir.path());
    tensors.remove("out.bias").unwrap();
    rewrite(&path, &tensors, &spec_json(&path));
    let message = load_error(&path);
    assert!(
        message.contains("tensor `out.bias` is missing (expected shape [10])"),
        "{message}"
    );
}

#[test]
fn an_extra_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut tensors) = saved(dir.path());
    let extra = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    tensors.insert("h9.weight".into(), extra);
    rewrite(&path, &tensors, &spec_json(&path));
    let message = load_error(&path);
    assert!(
        message.contains("tensors not used by the architecture: h9.weight"),
        "{message}"
    );
}

#[test]
fn a_tensor_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut tensors) = saved(dir.path());
    let bias = Tensor::zeros(11, DType::F32, &Device::Cpu).unwrap();
    tensors.insert("out.bias".into(), bias);
    rewrite(&path, &tensors, &spec_json(&path));
    let message = load_error(&path);
    assert!(
        message.contains("tensor `out.bias` has shape [11], expected [10]"),
        "{message}"
    );
}

#[test]
fn a_tensor_of_the_wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut tensors) = saved(dir.path());
    let bias = tensors["out.bias"].to_dtype(DType::F64).unwrap();
    tensors.insert("out.bias".into(), bias);
    rewrite(&path, &tensors, &spec_json(&path));
    let message = load_error(&path);
    assert!(
        message.contains("tensor `out.bias` has dtype F64, expected f32"),
        "{message}"
    );
}

#[test]
fn a_spec_that_is_not_a_known_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = saved(dir.path());
    let spec = spec_json(&path).replace("\"maxout-mlp\"", "\"resnet\"");
    rewrite(&path, &tensors, &spec);
    let message = load_error(&path);
    assert!(
        message.contains(SPEC_KEY) && message.contains("unknown variant `resnet`"),
        "{message}"
    );
}

#[test]
fn a_spec_with_impossible_hyper_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = saved(dir.path());
    let spec = spec_json(&path).replace("\"pieces\": 2", "\"pieces\": 0");
    assert!(spec.contains("\"pieces\": 0"));
    rewrite(&path, &tensors, &spec);
    let message = load_error(&path);
    assert!(message.contains("pieces 0"), "{message}");
}

#[test]
fn no_spec_in_the_file_and_none_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = saved(dir.path());
    let bytes = safetensors::serialize(tensors.iter(), None).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(checkpoint::spec_path(&path)).unwrap();
    let message = load_error(&path);
    assert!(message.contains("no spec file"), "{message}");
}

#[test]
fn a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let message = load_error(&path);
    assert!(message.contains("not a safetensors file"), "{message}");
}
