//! IDX files (MNIST, Fashion-MNIST), gzipped or not: the format is detected from the bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Dataset, Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Whole file contents, gunzipped when the file starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Header and payload of an IDX file with `n_dims` dimensions and the given magic number.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    n_dims: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * n_dims;
    if bytes.len() < header {
        return Err(Error::format(
            path,
            format!(
                "truncated IDX header: {} bytes, expected at least {header}",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(Error::format(
            path,
            format!("bad IDX magic number {found:#010x}, expected {magic:#010x}"),
        ));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    let body = &bytes[header..];
    // Checked: dimensions from a damaged header may overflow (and wrap to a plausible size).
    let Some(payload) = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
        return Err(Error::format(
            path,
            format!("IDX dimensions {dims:?} are too large (damaged header?)"),
        ));
    };
    if body.len() != payload {
        return Err(Error::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {payload} bytes of data, the file has {}{}",
                body.len(),
                if body.len() < payload {
                    " (truncated?)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok((dims, body))
}

/// Images of an IDX3 file as `(n, rows, cols, pixels)`.
pub fn load_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let (dims, body) = parse_idx(path, &bytes, IMAGES_MAGIC, 3)?;
    Ok((dims[0], dims[1], dims[2], body.to_vec()))
}

/// Labels of an IDX1 file; each must be `< n_classes`.
pub fn load_idx_labels(path: &Path, n_classes: usize) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (_, body) = parse_idx(path, &bytes, LABELS_MAGIC, 1)?;
    if let Some(pos) = body.iter().position(|&l| l as usize >= n_classes) {
        return Err(Error::format(
            path,
            format!(
                "label {} at index {pos} is not below {n_classes}",
                body[pos]
            ),
        ));
    }
    Ok(body.to_vec())
}

/// `dir/name.gz` or `dir/name`, whichever exists (gzipped first).
pub(crate) fn find(dir: &Path, dataset: &str, name: &str) -> Result<PathBuf> {
    let candidates = [dir.join(format!("{name}.gz")), dir.join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::Missing {
            dataset: dataset.to_string(),
            dir: dir.to_path_buf(),
            tried: candidates
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect::<Vec<_>>()
                .join(" or "),
        })
}

/// One split (`"train"` or `"t10k"`) of an MNIST-format data set in `dir`.
pub fn load_mnist_like(dir: &Path, dataset: &str, split: &str) -> Result<Dataset> {
    let images_path = find(dir, dataset, &format!("{split}-images-idx3-ubyte"))?;
    let labels_path = find(dir, dataset, &format!("{split}-labels-idx1-ubyte"))?;
    let (n, rows, cols, pixels) = load_idx_images(&images_path)?;
    let labels = load_idx_labels(&labels_path, 10)?;
    if labels.len() != n {
        return Err(Error::CountMismatch {
            images: images_path,
            n_images: n,
            labels: labels_path,
            n_labels: labels.len(),
        });
    }
    Dataset::from_u8(pixels, labels, (n, 1, rows, cols), 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [IMAGES_MAGIC, n, rows, cols] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(pixels);
        out
    }

    #[test]
    fn parses_plain_and_gzipped_files_alike() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx_images(2, 2, 2, &[0, 255, 128, 1, 2, 3, 4, 5]);
        std::fs::write(dir.path().join("plain"), &bytes).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        std::fs::write(dir.path().join("zipped"), gz.finish().unwrap()).unwrap();
        let a = load_idx_images(&dir.path().join("plain")).unwrap();
        let b = load_idx_images(&dir.path().join("zipped")).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.0, a.1, a.2), (2, 2, 2));
    }

    #[test]
    fn truncated_payload_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short-images");
        std::fs::write(&path, idx_images(3, 2, 2, &[0; 7])).unwrap();
        let err = load_idx_images(&path).unwrap_err().to_string();
        assert!(err.contains("short-images"), "{err}");
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn wrong_magic_and_bad_gzip_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels");
        std::fs::write(&path, idx_images(1, 1, 1, &[0])).unwrap();
        let err = load_idx_labels(&path, 10).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        let gz = dir.path().join("broken.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let err = load_idx_images(&gz).unwrap_err().to_string();
        assert!(err.contains("broken.gz") && err.contains("gzip"), "{err}");
    }

    #[test]
    fn out_of_range_label_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&[3, 12]);
        std::fs::write(&path, bytes).unwrap();
        let err = load_idx_labels(&path, 10).unwrap_err().to_string();
        assert!(err.contains("label 12"), "{err}");
    }
}
