//! Checkpoints: one safetensors file holding every parameter, with the [`ModelSpec`] as JSON in
//! its metadata (key `gauntlet.spec`) and in a `.json` file beside it. Names and layouts are
//! documented in docs/checkpoints.md. A PyTorch `state_dict` written by
//! `safetensors.torch.save_file` loads with its own tensor names when its spec (a layer graph
//! named as the module path, docs/models.md) is beside it as `.toml` or `.json`; an `.onnx`
//! file loads through [`crate::onnx`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Error, Result, Tensor};

use crate::io::{canonical_safetensors, write_atomic};
use crate::spec::build_with;
use crate::{Classifier, ModelSpec, ParamBuilder};

/// Metadata key holding the spec as JSON.
pub const SPEC_KEY: &str = "gauntlet.spec";
/// Metadata key holding the format version.
pub const FORMAT_KEY: &str = "gauntlet.format";
pub const FORMAT_VERSION: &str = "1";

fn with_path(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("{}: {e}", path.display()))
}

/// The `.json` file beside a checkpoint.
pub fn spec_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Saves `model` to `path` (atomically) and its spec to [`spec_path`]`(path)`.
pub fn save(model: &dyn Classifier, path: &Path) -> Result<()> {
    let spec_json = serde_json::to_string_pretty(model.spec()).map_err(|e| with_path(path, e))?;
    let metadata = HashMap::from([
        (SPEC_KEY.to_string(), spec_json.clone()),
        (FORMAT_KEY.to_string(), FORMAT_VERSION.to_string()),
    ]);
    // Copied to the host first, so a model trained on a GPU saves the same file (and a failed
    // copy is an error here, not a panic inside the serializer).
    let tensors = model
        .params()
        .tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .map_err(|e| with_path(path, e))?;
    let bytes = canonical_safetensors(bytes).map_err(|e| with_path(path, e))?;
    write_atomic(path, &bytes).map_err(|e| with_path(path, e))?;
    write_atomic(&spec_path(path), spec_json.as_bytes()).map_err(|e| with_path(&spec_path(path), e))
}

/// Reads the spec of a checkpoint: from its metadata, else from the `.json` or the `.toml`
/// beside it.
pub fn read_spec(path: &Path, bytes: &[u8]) -> Result<ModelSpec> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| with_path(path, format!("not a safetensors file: {e}")))?;
    let metadata = header.metadata().as_ref();
    if let Some(version) = metadata.and_then(|m| m.get(FORMAT_KEY)) {
        if version != FORMAT_VERSION {
            return Err(with_path(
                path,
                format!("checkpoint format `{version}` (metadata `{FORMAT_KEY}`) is not one this gauntlet reads (`{FORMAT_VERSION}`)"),
            ));
        }
    }
    if let Some(json) = metadata.and_then(|m| m.get(SPEC_KEY)) {
        return serde_json::from_str(json)
            .map_err(|e| with_path(path, format!("metadata `{SPEC_KEY}`: {e}")));
    }
    read_spec_beside(path)
}

/// The spec in the `.json` or `.toml` file beside `path`.
fn read_spec_beside(path: &Path) -> Result<ModelSpec> {
    let side = spec_path(path);
    if let Ok(json) = std::fs::read_to_string(&side) {
        return serde_json::from_str(&json).map_err(|e| with_path(&side, e));
    }
    let toml_side = path.with_extension("toml");
    match std::fs::read_to_string(&toml_side) {
        Ok(text) => read_spec_toml(&toml_side, &text),
        Err(e) => Err(with_path(
            path,
            format!(
                "no `{SPEC_KEY}` metadata and no spec file {} or {} ({e})",
                side.display(),
                toml_side.display()
            ),
        )),
    }
}

/// A [`ModelSpec`] from TOML text read from `path`; errors name the file and the line.
pub fn read_spec_toml(path: &Path, text: &str) -> Result<ModelSpec> {
    let spec: ModelSpec = toml::from_str(text).map_err(|e| with_path(path, e))?;
    spec.validate().map_err(|e| with_path(path, e))?;
    Ok(spec)
}

/// Loads a model file: a gauntlet or PyTorch safetensors checkpoint (every tensor must match
/// the spec's layers by name, shape and dtype) or an ONNX file (by its `.onnx` extension).
pub fn load(path: &Path, device: &Device) -> Result<Box<dyn Classifier>> {
    if is_onnx(path) {
        return crate::onnx::load(path, device);
    }
    if is_torch_pickle(path) {
        let spec = read_spec_beside(path)?;
        let tensors = read_torch_pickle(path)?;
        return build_with(&spec, ParamBuilder::load(&tensors, device))
            .map_err(|e| with_path(path, e));
    }
    let bytes = std::fs::read(path).map_err(|e| with_path(path, e))?;
    let spec = read_spec(path, &bytes)?;
    load_with_spec(path, &bytes, &spec, device)
}

/// The spec of any model file [`load`] reads, from its `bytes`, without building the model.
pub fn read_model_spec(path: &Path, bytes: &[u8]) -> Result<ModelSpec> {
    if is_onnx(path) {
        crate::onnx::translate(path, bytes).map(|(spec, _)| spec)
    } else if is_torch_pickle(path) {
        read_spec_beside(path)
    } else {
        read_spec(path, bytes)
    }
}

/// Whether `path` names a `torch.save` file (`.pt`, `.pth`, `.bin`).
pub fn is_torch_pickle(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_ascii_lowercase());
    matches!(
        ext.as_ref().and_then(|e| e.to_str()),
        Some("pt" | "pth" | "bin")
    )
}

/// The tensors of a `torch.save`d `state_dict` (PyTorch's zip format), read by Candle's
/// pickle reader: a plain `state_dict`, or one under the key `state_dict`.
fn read_torch_pickle(path: &Path) -> Result<HashMap<String, Tensor>> {
    let plain = candle_core::pickle::read_all(path);
    let tensors = match plain {
        Ok(t) if !t.is_empty() => t,
        _ => candle_core::pickle::read_all_with_key(path, Some("state_dict")).map_err(|e| {
            with_path(
                path,
                format!("not a torch.save state_dict that Candle's reader can read ({e}); save it with safetensors instead"),
            )
        })?,
    };
    if tensors.is_empty() {
        return Err(with_path(
            path,
            "no tensors found: expected a torch.save'd state_dict",
        ));
    }
    Ok(tensors.into_iter().collect())
}

/// Whether `path` names an ONNX file.
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads the tensors of `bytes` (read from `path`) into a model of architecture `spec`.
pub fn load_with_spec(
    path: &Path,
    bytes: &[u8],
    spec: &ModelSpec,
    device: &Device,
) -> Result<Box<dyn Classifier>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| with_path(path, e))?;
    build_with(spec, ParamBuilder::load(&tensors, device)).map_err(|e| with_path(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Arch};

    #[test]
    fn round_trip_is_bit_exact_and_mismatches_are_named() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![8, 6], 3));
        let model = build(&spec, 11, &Device::Cpu)?;
        save(model.as_ref(), &path)?;
        let loaded = load(&path, &Device::Cpu)?;
        assert_eq!(loaded.spec(), &spec);
        for ((na, a), (nb, b)) in model
            .params()
            .tensors()
            .iter()
            .zip(loaded.params().tensors())
        {
            assert_eq!(na, &nb);
            let (a, b) = (
                a.flatten_all()?.to_vec1::<f32>()?,
                b.flatten_all()?.to_vec1::<f32>()?,
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{na} differs"
            );
        }

        // A checkpoint of another format version is refused, not read as this one.
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu)?;
        let spec_json = serde_json::to_string(&spec).unwrap();
        let metadata = HashMap::from([
            (SPEC_KEY.to_string(), spec_json),
            (FORMAT_KEY.to_string(), "2".to_string()),
        ]);
        let future = dir.path().join("future.safetensors");
        std::fs::write(
            &future,
            safetensors::serialize(t.iter_mut().map(|(n, t)| (n.as_str(), &*t)), Some(metadata))
                .unwrap(),
        )
        .unwrap();
        let err = load(&future, &Device::Cpu).err().unwrap().to_string();
        assert!(
            err.contains("future.safetensors") && err.contains("format `2`"),
            "{err}"
        );

        // A spec that does not match the stored tensors is an error naming file and tensor.
        let other = ModelSpec::mnist(Arch::maxout_mlp(vec![9, 6], 3));
        let bytes = std::fs::read(&path).unwrap();
        let err = load_with_spec(&path, &bytes, &other, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("h0.weight"),
            "{err}"
        );
        let err = load(&dir.path().join("absent.safetensors"), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("absent.safetensors"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        let err = load(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        Ok(())
    }
}
