//! CIFAR-10 in its binary format: records of one label byte then 1024 R, G and B bytes.
//!
//! A directory holds either the official batches (`data_batch_1.bin` … `data_batch_5.bin`,
//! `test_batch.bin`, possibly inside `cifar-10-batches-bin/`) or prefixes of them under
//! `partial/` (`data_batch_1.first4000.bin`, `test_batch.first1000.bin`).

use std::path::{Path, PathBuf};

use crate::identity::DataFile;
use crate::{Dataset, Error, Result};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Records of one binary batch file read from `path`.
fn parse_batch(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::format(
            path,
            format!(
                "CIFAR-10 batch of {} bytes is not a whole number of {RECORD}-byte records (truncated?)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] >= 10 {
            return Err(Error::format(
                path,
                format!("record {i} has label {}, expected 0..=9", record[0]),
            ));
        }
        labels.push(record[0]);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok((pixels, labels))
}

pub(crate) fn batch_files(dir: &Path, train: bool) -> Result<Vec<PathBuf>> {
    let roots = [dir.to_path_buf(), dir.join("cifar-10-batches-bin")];
    for root in &roots {
        let full: Vec<PathBuf> = if train {
            (1..=5)
                .map(|i| root.join(format!("data_batch_{i}.bin")))
                .collect()
        } else {
            vec![root.join("test_batch.bin")]
        };
        if full.iter().all(|p| p.is_file()) {
            return Ok(full);
        }
    }
    let partial = if train {
        dir.join("partial/data_batch_1.first4000.bin")
    } else {
        dir.join("partial/test_batch.first1000.bin")
    };
    if partial.is_file() {
        return Ok(vec![partial]);
    }
    Err(Error::Missing {
        dataset: "cifar10".into(),
        dir: dir.to_path_buf(),
        tried: if train {
            "data_batch_1.bin..data_batch_5.bin or partial/data_batch_1.first4000.bin".into()
        } else {
            "test_batch.bin or partial/test_batch.first1000.bin".into()
        },
    })
}

/// The training (`train = true`) or test split of CIFAR-10 in `dir`.
pub fn load_cifar10(dir: &Path, train: bool) -> Result<Dataset> {
    Ok(load_cifar10_identified(dir, train)?.0)
}

/// [`load_cifar10`] with the identity of the batch files read.
pub(crate) fn load_cifar10_identified(dir: &Path, train: bool) -> Result<(Dataset, Vec<DataFile>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut files = Vec::new();
    for file in batch_files(dir, train)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let (p, l) = parse_batch(&file, &bytes)?;
        files.push(DataFile::of(&file, &[&bytes]));
        pixels.extend(p);
        labels.extend(l);
    }
    let n = labels.len();
    Ok((Dataset::from_u8(pixels, labels, (n, 3, 32, 32), 10)?, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_planes_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = vec![7u8];
        record.extend((0..3 * 1024).map(|i| (i / 1024) as u8 * 100));
        std::fs::write(dir.path().join("test_batch.bin"), &record).unwrap();
        let ds = load_cifar10(dir.path(), false).unwrap();
        assert_eq!(ds.images.dims4().unwrap(), (1, 3, 32, 32));
        assert_eq!(ds.labels.to_vec1::<u32>().unwrap(), vec![7]);
        let planes = ds.images.mean((2, 3)).unwrap().to_vec2::<f32>().unwrap();
        assert!((planes[0][1] - 100.0 / 255.0).abs() < 1e-6);

        std::fs::write(dir.path().join("test_batch.bin"), &record[..100]).unwrap();
        let err = load_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("truncated"),
            "{err}"
        );
    }
}
