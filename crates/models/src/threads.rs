//! The compute threads: how many, and how they treat subnormal floats.
//!
//! Candle's CPU kernels run on rayon's global pool (convolutions, gemm) and size their gemm
//! parallelism from `RAYON_NUM_THREADS`, which Candle reads at every matrix product. [`init`]
//! sets both from one number, before any pool exists, and starts every worker with
//! flush-to-zero and denormals-are-zero: the momentum buffers of unused maxout pieces decay
//! into subnormal floats, which made CPU epochs 25–50× slower (research/candle.md,
//! "Denormal floats"), and gemm runs on the workers, not only on the calling thread.
//!
//! Candle 0.11 also runs element-wise ops on a pool of its own (`CANDLE_NUM_THREADS − 1`
//! workers, by default one fewer than the compute threads), whose workers spin after every op
//! and start without flush-to-zero. On two cores the spinning worker took the core gemm's
//! second thread needed: a perf profile of the Maxout MLP's training step at two threads found
//! 30% of all samples in it (BENCHMARKS.md). [`init`] therefore leaves that pool empty
//! (`CANDLE_NUM_THREADS=1`) unless the caller set the variable: element-wise ops then run on
//! the calling thread, with flush-to-zero.

use candle_core::{bail, Result};

/// Sets the number of compute threads (`None`: Candle's default, one per physical core) and
/// flush-to-zero on every compute thread, the caller's included. Returns the thread count.
///
/// Call it once, first thing in `main`, before any other thread starts: it sets the
/// `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` environment variables, which must not race
/// with readers.
///
/// # Errors
/// `threads == Some(0)`, or rayon's global pool already started.
pub fn init(threads: Option<usize>) -> Result<usize> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("threads must be at least 1, got 0")
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let n = candle_core::utils::get_num_threads();
    flush_denormals();
    if let Err(err) = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(|_| flush_denormals())
        .build_global()
    {
        bail!("the compute thread pool was already started before setting {n} threads: {err}")
    }
    Ok(n)
}

/// Sets flush-to-zero (MXCSR bit 15) and denormals-are-zero (bit 6) on this thread.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the two MXCSR flags only change how this thread rounds subnormal floats; they
    // cannot violate memory safety.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_is_rejected() {
        let err = init(Some(0)).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn flushed_thread_rounds_subnormals_to_zero() {
        // Run on a fresh thread so the flag does not leak into other tests.
        let product = std::thread::spawn(|| {
            flush_denormals();
            let tiny = std::hint::black_box(1e-30f32);
            std::hint::black_box(tiny) * std::hint::black_box(1e-10f32)
        })
        .join()
        .unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(product, 0.0);
        }
        let unflushed = std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
        assert!(unflushed > 0.0, "subnormal results exist without the flag");
    }
}
