//! Helpers shared by the integration tests: deterministic values without an RNG crate, and
//! gradients against central finite differences.
#![allow(dead_code)] // each test crate uses its own subset

use candle_core::{Device, Result, Tensor, Var};

/// Deterministic pseudo-random values in [0, 1) (xorshift64).
pub fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// [`uniform`] spread over [−1, 1): distinct enough that a 1e-6 step flips no maximum.
pub fn signed(n: usize, seed: u64) -> Vec<f64> {
    uniform(n, seed)
        .into_iter()
        .map(|v| 2.0 * v - 1.0)
        .collect()
}

/// An f64 variable of `shape` filled with [`signed`] values.
pub fn var(shape: &[usize], seed: u64) -> Result<Var> {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(signed(n, seed), shape, &Device::Cpu)?)
}

/// Worst relative error between the autograd gradients of the scalar `f` at every entry of
/// `vars` and central differences (step 1e-5; f64: at 1e-6 the rounding of `f` alone, over
/// `2h`, reached 1e-6 of the small gradients).
pub fn fd_error(vars: &[&Var], f: impl Fn() -> Result<Tensor>) -> Result<f64> {
    let grads = f()?.backward()?;
    let h = 1e-5;
    let mut worst = 0f64;
    for var in vars {
        let analytic = grads
            .get(var.as_tensor())
            .expect("every variable gets a gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for (i, a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                f()?.to_scalar::<f64>()
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
            worst = worst.max((a - numeric).abs() / numeric.abs().max(a.abs()).max(1e-4));
        }
    }
    Ok(worst)
}
