//! Interval estimates for accuracies.

/// The two-sided 95% normal quantile, Φ⁻¹(0.975).
const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score 95% interval for a proportion of `successes` out of `n` trials.
///
/// Unlike the normal ("Wald") interval it stays inside `[0, 1]` and does not collapse to a
/// point at 0% or 100%, which robust accuracies often are. `n = 0` gives `(0, 1)`.
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (successes.min(n) as f64, n as f64);
    let phat = k / n;
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / n;
    let centre = (phat + z2 / (2.0 * n)) / denom;
    let half = Z_95 / denom * (phat * (1.0 - phat) / n + z2 / (4.0 * n * n)).sqrt();
    // At 0 and n successes the bound is exactly 0 or 1; say so rather than round near it.
    let low = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if k == n {
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
    fn wilson_interval_matches_newcombe_1998() {
        // Newcombe (1998), "Two-sided confidence intervals for the single proportion",
        // Statistics in Medicine 17:857-872, Table I, method 3 (score, no continuity correction).
        let cases = [
            ((81, 263), (0.2553, 0.3662)),
            ((15, 148), (0.0624, 0.1605)),
            ((0, 20), (0.0, 0.1611)),
            ((1, 29), (0.0061, 0.1718)),
        ];
        for ((k, n), (lo, hi)) in cases {
            let (l, h) = wilson_interval(k, n);
            assert!(
                (l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5,
                "{k}/{n}: ({l}, {h})"
            );
        }
        // 8/10 (Python, same formula): (0.490_162, 0.943_318); all successes reach 1.
        let (l, h) = wilson_interval(8, 10);
        assert!(
            (l - 0.490_162).abs() < 1e-6 && (h - 0.943_318).abs() < 1e-6,
            "({l}, {h})"
        );
        assert_eq!(wilson_interval(10, 10).1, 1.0);
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }
}
