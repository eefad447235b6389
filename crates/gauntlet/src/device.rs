//! `--device auto|cpu|cuda[:i]|metal[:i]`.
//!
//! A named accelerator that was not compiled in or does not answer is an error, never a silent
//! fall-back. `auto` takes the first accelerator that opens and otherwise runs on the CPU, and
//! says on stderr which device it chose and why.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// An accelerator `auto` may try, in order of preference.
struct Backend {
    name: &'static str,
    feature: &'static str,
    compiled: bool,
    open: fn(usize) -> candle_core::Result<Device>,
}

const BACKENDS: [Backend; 2] = [
    Backend {
        name: "CUDA",
        feature: "cuda",
        compiled: cfg!(feature = "cuda"),
        open: Device::new_cuda,
    },
    Backend {
        name: "Metal",
        feature: "metal",
        compiled: cfg!(feature = "metal"),
        open: Device::new_metal,
    },
];

/// Parses a device name and opens the device; for `auto`, prints the one-line choice.
pub fn open(name: &str) -> Result<Device> {
    let (device, note) = resolve(name, &BACKENDS)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(device)
}

/// The device `name` asks for, and for `auto` the line saying what it chose and why.
fn resolve(name: &str, backends: &[Backend]) -> Result<(Device, Option<String>)> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (
            k,
            Some(
                i.parse::<usize>()
                    .with_context(|| format!("device index in `{name}` is not a whole number"))?,
            ),
        ),
        None => (name, None),
    };
    match (kind, index) {
        ("cpu", None) => Ok((Device::Cpu, None)),
        ("auto", None) => {
            let (device, note) = auto(backends);
            Ok((device, Some(note)))
        }
        (kind, index) => {
            let Some(backend) = backends.iter().find(|b| b.feature == kind) else {
                bail!("unknown device `{name}`, expected auto, cpu, cuda, cuda:N, metal or metal:N")
            };
            if !backend.compiled {
                bail!(
                    "device `{name}`: this gauntlet was built without {} (rebuild with `--features {}`)",
                    backend.name,
                    backend.feature
                )
            }
            let ordinal = index.unwrap_or(0);
            match (backend.open)(ordinal) {
                Ok(device) => Ok((device, None)),
                Err(e) => bail!(
                    "device `{name}`: no usable {} device {ordinal} (is the driver installed and the GPU visible?): {}",
                    backend.name,
                    message(&e)
                ),
            }
        }
    }
}

/// The first compiled-in accelerator that opens device 0, else the CPU; with the line to print.
fn auto(backends: &[Backend]) -> (Device, String) {
    let mut failures = Vec::new();
    for backend in backends.iter().filter(|b| b.compiled) {
        match (backend.open)(0) {
            Ok(device) => return (device, format!("device auto: {} device 0", backend.name)),
            Err(e) => failures.push(format!(
                "{} is compiled in but device 0 did not open: {}",
                backend.name,
                message(&e).replace('\n', " ")
            )),
        }
    }
    let why = if failures.is_empty() {
        let features: Vec<_> = backends
            .iter()
            .map(|b| format!("`--features {}`", b.feature))
            .collect();
        format!(
            "this gauntlet was built without GPU support (rebuild with {})",
            features.join(" or ")
        )
    } else {
        failures.join("; ")
    };
    (Device::Cpu, format!("device auto: using the CPU: {why}"))
}

/// An error's message without the backtrace Candle attaches when `RUST_BACKTRACE` is set.
fn message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => message(inner),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As Candle reports it with RUST_BACKTRACE set: the message, a newline, a backtrace.
    fn no_device(_: usize) -> candle_core::Result<Device> {
        Err(candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg(
                "no CUDA-capable device is detected".into(),
            )),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        })
    }

    // Stands in for a GPU: the CPU device, opened only as device 0.
    fn one_device(ordinal: usize) -> candle_core::Result<Device> {
        match ordinal {
            0 => Ok(Device::Cpu),
            _ => Err(candle_core::Error::Msg("invalid device ordinal".into())),
        }
    }

    fn backends(cuda: Option<fn(usize) -> candle_core::Result<Device>>) -> [Backend; 2] {
        [
            Backend {
                name: "CUDA",
                feature: "cuda",
                compiled: cuda.is_some(),
                open: cuda.unwrap_or(no_device),
            },
            Backend {
                name: "Metal",
                feature: "metal",
                compiled: false,
                open: no_device,
            },
        ]
    }

    fn err(name: &str, backends: &[Backend]) -> String {
        format!("{:#}", resolve(name, backends).unwrap_err())
    }

    #[test]
    fn auto_without_gpu_support_runs_on_the_cpu_and_says_why() {
        let (device, note) = resolve("auto", &backends(None)).unwrap();
        assert!(device.is_cpu());
        let note = note.unwrap();
        assert!(
            note.starts_with(
                "device auto: using the CPU: this gauntlet was built without GPU support"
            ) && note.contains("--features cuda")
                && note.contains("--features metal"),
            "{note}"
        );
        assert!(!note.contains('\n'), "{note}");
    }

    #[test]
    fn auto_with_cuda_compiled_but_no_device_names_the_error() {
        let (device, note) = resolve("auto", &backends(Some(no_device))).unwrap();
        assert!(device.is_cpu());
        assert_eq!(
            note.unwrap(),
            "device auto: using the CPU: CUDA is compiled in but device 0 did not open: \
             no CUDA-capable device is detected"
        );
    }

    #[test]
    fn auto_takes_the_gpu_that_opens() {
        let (_, note) = resolve("auto", &backends(Some(one_device))).unwrap();
        assert_eq!(note.unwrap(), "device auto: CUDA device 0");
    }

    #[test]
    fn a_named_gpu_that_is_absent_is_an_error_never_the_cpu() {
        let e = err("cuda:1", &backends(None));
        assert!(
            e.contains("device `cuda:1`: this gauntlet was built without CUDA")
                && e.contains("--features cuda"),
            "{e}"
        );
        let e = err("cuda:1", &backends(Some(one_device)));
        assert!(
            e.starts_with("device `cuda:1`: no usable CUDA device 1")
                && e.contains("invalid device ordinal"),
            "{e}"
        );
        assert!(resolve("cuda", &backends(Some(one_device))).is_ok());
        let e = err("metal", &backends(Some(one_device)));
        assert!(e.contains("built without Metal"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        let (device, note) = resolve("cpu", &BACKENDS).unwrap();
        assert!(device.is_cpu() && note.is_none());
        for (name, expected) in [
            ("tpu", "unknown device `tpu`"),
            ("cpu:0", "unknown device `cpu:0`"),
            ("auto:1", "unknown device `auto:1`"),
            ("cuda:x", "device index in `cuda:x` is not a whole number"),
            ("cuda:-1", "device index in `cuda:-1` is not a whole number"),
        ] {
            let e = err(name, &BACKENDS);
            assert!(e.contains(expected), "{name}: {e}");
        }
    }

    /// The real backends of this build: without the features, `auto` is the CPU and a named
    /// GPU is an error; with them (make check-cuda, no GPU present) the error is the driver's.
    #[test]
    fn this_build_behaves_as_compiled() {
        let (device, note) = resolve("auto", &BACKENDS).unwrap();
        let note = note.unwrap();
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert!(device.is_cpu(), "{note}");
            assert!(note.contains("built without GPU support"), "{note}");
            let e = err("cuda:1", &BACKENDS);
            assert!(e.contains("built without CUDA"), "{e}");
        } else if device.is_cpu() {
            assert!(
                note.contains("is compiled in but device 0 did not open"),
                "{note}"
            );
        }
        // No machine has this many GPUs: always an error naming it, whatever was compiled in.
        let e = err("cuda:4096", &BACKENDS);
        assert!(e.contains("device `cuda:4096`"), "{e}");
        eprintln!("{note}");
    }
}
