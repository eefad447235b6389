//! `--device auto|cpu|cuda[:i]|metal[:i]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a device name and opens the device; an accelerator that was not compiled in or is
/// absent is an error, never a silent fall-back, except for `auto`.
pub fn open(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (
            k,
            Some(
                i.parse::<usize>()
                    .with_context(|| format!("device index in `{name}` is not a number"))?,
            ),
        ),
        None => (name, None),
    };
    match (kind, index) {
        ("cpu", None) => Ok(Device::Cpu),
        ("auto", None) => Ok(auto()),
        ("cuda", i) => {
            if !cfg!(feature = "cuda") {
                bail!("device `{name}`: this gauntlet was built without CUDA (rebuild with `--features cuda`)")
            }
            Device::new_cuda(i.unwrap_or(0))
                .with_context(|| format!("opening CUDA device `{name}`"))
        }
        ("metal", i) => {
            if !cfg!(feature = "metal") {
                bail!("device `{name}`: this gauntlet was built without Metal (rebuild with `--features metal`)")
            }
            Device::new_metal(i.unwrap_or(0))
                .with_context(|| format!("opening Metal device `{name}`"))
        }
        _ => bail!("unknown device `{name}`, expected auto, cpu, cuda, cuda:N, metal or metal:N"),
    }
}

/// The first accelerator that was compiled in and answers, else the CPU.
fn auto() -> Device {
    if cfg!(feature = "cuda") {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if cfg!(feature = "metal") {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_names_and_rejects_unknown_ones() {
        assert!(super::open("cpu").unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            assert!(super::open("auto").unwrap().is_cpu());
            let err = super::open("cuda:0").unwrap_err().to_string();
            assert!(err.contains("without CUDA"), "{err}");
        }
        let err = super::open("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        assert!(super::open("cuda:x").is_err());
    }
}
