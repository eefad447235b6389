//! IDX files (MNIST, Fashion-MNIST), gzipped or not: the format is detected from the bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::identity::{self, DataFile};
use crate::{Dataset, Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Deflate never expands more than about 1032:1; a payload larger than that bound cannot be in
/// the file, so it is refused before anything is allocated.
const MAX_DEFLATE_RATIO: u64 = 1032;

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An IDX file with `n_dims` dimensions and the given magic number: its dimensions, its payload,
/// and the identity (size and SHA-256) of its decompressed bytes.
///
/// Gzip (one member or several, as `pigz` and `cat a.gz b.gz` write) is detected from the magic
/// bytes. Decompression stops one byte past the size the header promises, so a small file that
/// expands to gigabytes is refused without being held in memory.
fn read_idx(path: &Path, magic: u32, n_dims: usize) -> Result<(Vec<usize>, Vec<u8>, DataFile)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let on_disk = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut file = std::io::BufReader::new(file);
    let mut gz_magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut gz_magic).map_err(|e| Error::io(path, e))?;
    let prefix = std::io::Cursor::new(gz_magic[..n].to_vec());
    let gzipped = gz_magic[..n] == [0x1f, 0x8b];
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(prefix.chain(file)))
    } else {
        Box::new(prefix.chain(file))
    };
    let read_err = |e: std::io::Error| {
        if gzipped {
            Error::format(path, format!("corrupt gzip stream: {e}"))
        } else {
            Error::io(path, e)
        }
    };

    let header_len = 4 + 4 * n_dims;
    let mut header = vec![0u8; header_len];
    let got = read_up_to(&mut reader, &mut header).map_err(read_err)?;
    if got < header_len {
        return Err(Error::format(
            path,
            format!("truncated IDX header: {got} bytes, expected at least {header_len}"),
        ));
    }
    let found = be_u32(&header, 0);
    if found != magic {
        return Err(Error::format(
            path,
            format!("bad IDX magic number {found:#010x}, expected {magic:#010x}"),
        ));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|i| be_u32(&header, 4 + 4 * i) as usize)
        .collect();
    // Checked: dimensions from a damaged header may overflow (and wrap to a plausible size).
    let Some(payload) = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
        return Err(Error::format(
            path,
            format!("IDX dimensions {dims:?} are too large (damaged header?)"),
        ));
    };
    let mismatch = |has: String, short: bool| {
        Error::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {payload} bytes of data, the file has {has}{}",
                if short { " (truncated?)" } else { "" }
            ),
        )
    };
    if !gzipped {
        let body = on_disk.saturating_sub(header_len as u64);
        if body != payload as u64 {
            return Err(mismatch(body.to_string(), body < payload as u64));
        }
    } else if payload as u64 > on_disk.saturating_mul(MAX_DEFLATE_RATIO) {
        return Err(mismatch(
            format!(
                "at most {} ({on_disk} compressed bytes)",
                on_disk * MAX_DEFLATE_RATIO
            ),
            true,
        ));
    }
    // Grown as the data arrives: the header's size is a claim until the bytes are there.
    let mut body = Vec::with_capacity(payload.min(64 << 20));
    reader
        .take(payload as u64 + 1)
        .read_to_end(&mut body)
        .map_err(read_err)?;
    if body.len() != payload {
        return Err(if body.len() > payload {
            mismatch(format!("more (data after the {payload} bytes)"), false)
        } else {
            mismatch(body.len().to_string(), true)
        });
    }
    let identity = DataFile::of(path, &[&header, &body]);
    Ok((dims, body, identity))
}

/// Images of an IDX3 file as `(n, rows, cols, pixels)`.
pub fn load_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, body, _) = read_idx(path, IMAGES_MAGIC, 3)?;
    Ok((dims[0], dims[1], dims[2], body))
}

/// Labels of an IDX1 file; each must be `< n_classes`.
pub fn load_idx_labels(path: &Path, n_classes: usize) -> Result<Vec<u8>> {
    Ok(read_labels(path, n_classes)?.0)
}

fn read_labels(path: &Path, n_classes: usize) -> Result<(Vec<u8>, DataFile)> {
    let (_, body, identity) = read_idx(path, LABELS_MAGIC, 1)?;
    if let Some(pos) = body.iter().position(|&l| l as usize >= n_classes) {
        return Err(Error::format(
            path,
            format!(
                "label {} at index {pos} is not below {n_classes}",
                body[pos]
            ),
        ));
    }
    Ok((body, identity))
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
    Ok(load_mnist_like_identified(dir, dataset, split)?.0)
}

/// [`load_mnist_like`] with the identity of the two files read (as stored); a file whose
/// decompressed contents are known to belong to the
/// other MNIST-format data set (MNIST for Fashion-MNIST or the reverse) is an error.
pub(crate) fn load_mnist_like_identified(
    dir: &Path,
    dataset: &str,
    split: &str,
) -> Result<(Dataset, Vec<DataFile>)> {
    let images_path = find(dir, dataset, &format!("{split}-images-idx3-ubyte"))?;
    let labels_path = find(dir, dataset, &format!("{split}-labels-idx1-ubyte"))?;
    let (dims, pixels, images_id) = read_idx(&images_path, IMAGES_MAGIC, 3)?;
    identity::check_known(dataset, &images_path, &images_id)?;
    let (labels, labels_id) = read_labels(&labels_path, 10)?;
    identity::check_known(dataset, &labels_path, &labels_id)?;
    let n = dims[0];
    if labels.len() != n {
        return Err(Error::CountMismatch {
            images: images_path,
            n_images: n,
            labels: labels_path,
            n_labels: labels.len(),
        });
    }
    let data = Dataset::from_u8(pixels, labels, (n, 1, dims[1], dims[2]), 10)?;
    // Hashed again as stored (from the page cache): the identity of the file, not its contents.
    let files = vec![
        DataFile::of_file(&images_path)?,
        DataFile::of_file(&labels_path)?,
    ];
    Ok((data, files))
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
