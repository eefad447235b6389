//! Atomic file writes: a reader never sees a half-written file, and a killed writer leaves
//! the previous version in place.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Safetensors bytes with every key of the JSON header in sorted order.
///
/// `safetensors::serialize` writes its metadata from a `HashMap`, whose order changes from
/// process to process; sorted, the same tensors and metadata always give the same bytes, so
/// results written twice can be compared byte for byte. Offsets and data are unchanged.
pub fn canonical_safetensors(mut bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let Some(len) = bytes.get(..8) else {
        return Err(invalid("safetensors: no header length".into()));
    };
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return Err(invalid(format!(
            "safetensors: header of {len} bytes is cut short"
        )));
    };
    // serde_json's map is ordered by key (no `preserve_order` feature in this workspace).
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| invalid(format!("safetensors header: {e}")))?;
    let sorted = serde_json::to_vec(&value).map_err(|e| invalid(e.to_string()))?;
    if sorted.len() > len {
        return Err(invalid("safetensors header grew when sorted".into()));
    }
    // The writer pads the header with spaces to its alignment; keep its length.
    let padded = sorted.into_iter().chain(std::iter::repeat(b' '));
    bytes.splice(8..8 + len, padded.take(len));
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_header_keeps_tensors_and_metadata() {
        use candle_core::{Device, Tensor};
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let u = Tensor::new(&[4u32], &Device::Cpu).unwrap();
        let metadata = std::collections::HashMap::from([
            ("zeta".to_string(), "1".to_string()),
            ("alpha".to_string(), "2".to_string()),
        ]);
        let bytes = safetensors::serialize([("b", &t), ("a", &u)], Some(metadata)).unwrap();
        let sorted = super::canonical_safetensors(bytes.clone()).unwrap();
        assert_eq!(sorted.len(), bytes.len());
        let header = String::from_utf8_lossy(&sorted[8..]).into_owned();
        assert!(header.find("alpha").unwrap() < header.find("zeta").unwrap());
        let loaded = candle_core::safetensors::load_buffer(&sorted, &Device::Cpu).unwrap();
        assert_eq!(loaded["b"].to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(loaded["a"].to_vec1::<u32>().unwrap(), [4]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&sorted).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["zeta"], "1");
        assert!(super::canonical_safetensors(sorted[..20].to_vec()).is_err());
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.json");
        super::write_atomic(&path, b"one").unwrap();
        super::write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
