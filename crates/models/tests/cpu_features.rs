//! Which matrix-product kernels this run uses. gemm takes its AVX-512 kernels where the CPU
//! has AVX-512F and its AVX2/FMA ones elsewhere, decided at run time. `make test-no-avx512`
//! runs this and the kernel and PyTorch-fixture tests under QEMU emulating a CPU without
//! AVX-512, with `GAUNTLET_EXPECT_AVX512=0`: this test then proves the fallback was taken.

#[cfg(target_arch = "x86_64")]
#[test]
fn the_cpu_has_the_features_the_run_expects() {
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let fma = std::arch::is_x86_feature_detected!("fma");
    eprintln!("avx512f: {avx512}, fma: {fma}");
    match std::env::var("GAUNTLET_EXPECT_AVX512").as_deref() {
        Ok("0") => assert!(!avx512, "expected a CPU without AVX-512F"),
        Ok("1") => assert!(avx512, "expected a CPU with AVX-512F"),
        Ok(other) => panic!("GAUNTLET_EXPECT_AVX512 must be 0 or 1, got {other:?}"),
        Err(_) => {}
    }
}

/// A product large enough for gemm's vector kernels, against a float64 reference summed
/// here: whichever kernel set runs, the result is the product to f32 rounding.
#[test]
fn matrix_products_are_right_on_this_cpus_kernels() -> candle_core::Result<()> {
    use candle_core::{Device, Tensor};
    let (m, k, n) = (67, 131, 45);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
        .collect();
    let got = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu)?
        .matmul(&Tensor::from_vec(b.clone(), (k, n), &Device::Cpu)?)?
        .to_vec2::<f32>()?;
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k)
                .map(|t| a[i * k + t] as f64 * b[t * n + j] as f64)
                .sum();
            let err = (got[i][j] as f64 - want).abs();
            assert!(
                err <= 1e-4 * want.abs().max(1.0),
                "({i}, {j}): {} against {want}",
                got[i][j]
            );
        }
    }
    Ok(())
}
