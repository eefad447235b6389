//! Interval estimates (the same formula as gauntlet-attacks, which the report does not depend on).

/// The two-sided 95% normal quantile, Φ⁻¹(0.975).
const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score 95% interval for `successes` out of `n`; `n = 0` gives `(0, 1)`.
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, nf) = (successes.min(n) as f64, n as f64);
    let phat = k / nf;
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / nf;
    let centre = (phat + z2 / (2.0 * nf)) / denom;
    let half = Z_95 / denom * (phat * (1.0 - phat) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let low = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if k == nf {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_newcombe_1998() {
        for ((k, n), (lo, hi)) in [((81, 263), (0.2553, 0.3662)), ((0, 20), (0.0, 0.1611))] {
            let (l, h) = wilson_interval(k, n);
            assert!(
                (l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5,
                "{k}/{n}: ({l}, {h})"
            );
        }
        assert_eq!(wilson_interval(5, 5).1, 1.0);
    }
}
