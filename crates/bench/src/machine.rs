//! The machine's f32 peak, estimated two ways.
//!
//! - **Theoretical**: threads × clock × f32 FLOPs per cycle per core. The clock is the
//!   `cpu MHz` of `/proc/cpuinfo` (in a VM the nominal clock: boost can exceed it), the FLOPs
//!   per cycle follow from the vector extensions and the core family (two FMA pipes of the
//!   widest native width, an FMA counting two FLOPs); [`flops_per_cycle`] lists the rules.
//! - **Practical**: the best of a few large square f32 matrix products through Candle's gemm
//!   on the benchmark's threads — the most any of our kernels could reach.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

/// What `/proc/cpuinfo` says about the first processor.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub model: String,
    pub vendor: String,
    pub family: u32,
    pub mhz: f64,
    pub logical_cpus: usize,
    pub flags: Vec<String>,
}

impl Cpu {
    /// Reads `/proc/cpuinfo`; an unreadable or unfamiliar file gives empty fields, not an error
    /// (the peak is then reported as unknown).
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> Self {
        let mut cpu = Cpu::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key == "processor" {
                cpu.logical_cpus += 1;
            }
            if cpu.logical_cpus > 1 {
                continue;
            }
            match key {
                "model name" => cpu.model = value.to_string(),
                "vendor_id" => cpu.vendor = value.to_string(),
                "cpu family" => cpu.family = value.parse().unwrap_or(0),
                "cpu MHz" => cpu.mhz = value.parse().unwrap_or(0.0),
                "flags" => cpu.flags = value.split_whitespace().map(str::to_string).collect(),
                _ => {}
            }
        }
        cpu
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// f32 FLOPs per cycle per core, and the rule that gave it.
    ///
    /// - AVX-512 on AMD family 25 (Zen 4): 512-bit instructions run on two 256-bit FMA pipes:
    ///   2 × 8 lanes × 2 = 32.
    /// - AVX-512 elsewhere (Intel server cores, Zen 5): two 512-bit FMA pipes: 2 × 16 × 2 = 64
    ///   (Intel parts with a single 512-bit FMA unit reach half).
    /// - AVX2 with FMA: two 256-bit FMA pipes: 32.
    /// - otherwise SSE: one 4-lane add and one 4-lane multiply per cycle: 8.
    pub fn flops_per_cycle(&self) -> (f64, &'static str) {
        if self.has("avx512f") {
            if self.vendor == "AuthenticAMD" && self.family == 25 {
                (32.0, "avx512 on Zen 4: 2 x 256-bit FMA pipes x 8 lanes x 2")
            } else {
                (64.0, "avx512: 2 x 512-bit FMA pipes x 16 lanes x 2")
            }
        } else if self.has("avx2") && self.has("fma") {
            (32.0, "avx2+fma: 2 x 256-bit FMA pipes x 8 lanes x 2")
        } else {
            (8.0, "sse: 4-lane add + 4-lane multiply")
        }
    }

    /// Theoretical f32 GFLOP/s on `threads` cores at the reported clock; `None` when the clock
    /// is unknown.
    pub fn theoretical_gflops(&self, threads: usize) -> Option<f64> {
        let cores = threads.min(self.logical_cpus.max(1));
        (self.mhz > 0.0).then(|| cores as f64 * self.mhz / 1e3 * self.flops_per_cycle().0)
    }
}

/// The best GFLOP/s of `reps` products of two `n × n` f32 matrices (after one warm-up).
pub fn measured_sgemm_gflops(n: usize, reps: usize) -> Result<f64> {
    let device = Device::Cpu;
    let values = |seed: usize| -> Vec<f32> {
        (0..n * n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let a = Tensor::from_vec(values(1), (n, n), &device)?;
    let b = Tensor::from_vec(values(2), (n, n), &device)?;
    a.matmul(&b).context("sgemm warm-up")?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        a.matmul(&b)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
        model name\t: AMD EPYC\ncpu MHz\t\t: 2596.140\nflags\t\t: fpu sse avx2 fma avx512f\n\n\
        processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 1.0\n";

    #[test]
    fn zen4_peak_is_cores_times_clock_times_32() {
        let cpu = Cpu::parse(ZEN4);
        assert_eq!(cpu.logical_cpus, 2);
        assert_eq!(cpu.model, "AMD EPYC");
        // The second processor's fields do not overwrite the first's.
        assert_eq!(cpu.mhz, 2596.140);
        assert_eq!(cpu.flops_per_cycle().0, 32.0);
        let peak = cpu.theoretical_gflops(2).unwrap();
        assert!((peak - 2.0 * 2.59614 * 32.0).abs() < 1e-9, "{peak}");
        // More threads than cores do not add peak.
        assert_eq!(cpu.theoretical_gflops(8), cpu.theoretical_gflops(2));
    }

    #[test]
    fn unknown_cpuinfo_gives_no_theoretical_peak() {
        let cpu = Cpu::parse("garbage without colons");
        assert_eq!(cpu.theoretical_gflops(2), None);
        assert_eq!(cpu.flops_per_cycle().0, 8.0);
    }
}
