//! What a minimum-norm attack finds: each example's smallest adversarial perturbation, and the
//! security curve they give.

use serde::{Deserialize, Serialize};

use crate::{wilson_interval, Lp};

/// One example under a minimum-norm attack (a row of a per-example distances CSV).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinNormExample {
    /// Position of the example in the evaluated images.
    pub index: usize,
    pub label: u32,
    /// Predicted class of the clean and of the returned input.
    pub clean_pred: u32,
    pub adv_pred: u32,
    /// `‖x_adv − x‖` in the attack's norm, measured on the returned input, which the model
    /// misclassifies; 0 for an example misclassified clean; `None` (an empty cell) when the
    /// attack found no adversarial input within its budget.
    pub distance: Option<f64>,
    /// The returned perturbation in L∞, L2 and L1 (0 where none was found).
    pub linf: f64,
    pub l2: f64,
    pub l1: f64,
}

impl MinNormExample {
    /// Broken at budget `eps`: misclassified clean, or an adversarial input within `eps`.
    pub fn broken_at(&self, eps: f64) -> bool {
        self.distance.is_some_and(|d| d <= eps)
    }
}

/// Robust accuracy at one ε of a security curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub eps: f64,
    /// Examples correct clean whose minimal perturbation is larger than `eps` (or not found).
    pub robust: usize,
    pub robust_accuracy: f64,
    /// Wilson 95% interval of `robust_accuracy`.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Robust accuracy at every ε from one minimum-norm run: a step function that falls at each
/// example's minimal distance. `points` holds ε = 0 and every distinct distance found, in
/// increasing order; between two points the accuracy is that of the lower one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityCurve {
    /// The attack's own name (e.g. `fmn-l2`).
    pub method: String,
    pub norm: Lp,
    pub n: usize,
    pub clean_correct: usize,
    /// Examples correct clean that the attack broke (at some distance).
    pub found: usize,
    /// Median minimal distance over all `n` examples (0 for those misclassified clean);
    /// `None` when more than half were never broken.
    pub median_distance: Option<f64>,
    /// Mean distance over the examples broken by the attack (correct clean); `None` if none.
    pub mean_distance: Option<f64>,
    pub points: Vec<CurvePoint>,
}

impl SecurityCurve {
    /// The curve of `examples` (one per evaluated example).
    pub fn new(method: String, norm: Lp, examples: &[MinNormExample]) -> Self {
        let n = examples.len();
        let clean_correct = examples.iter().filter(|e| e.clean_pred == e.label).count();
        let found: Vec<f64> = examples
            .iter()
            .filter(|e| e.clean_pred == e.label)
            .filter_map(|e| e.distance)
            .collect();
        let mut all: Vec<f64> = examples
            .iter()
            .map(|e| e.distance.unwrap_or(f64::INFINITY))
            .collect();
        all.sort_by(f64::total_cmp);
        let median_distance = (n > 0).then(|| all[(n - 1) / 2]).filter(|d| d.is_finite());
        let mean_distance =
            (!found.is_empty()).then(|| found.iter().sum::<f64>() / found.len() as f64);
        let mut eps: Vec<f64> = std::iter::once(0.0).chain(found.iter().copied()).collect();
        eps.sort_by(f64::total_cmp);
        eps.dedup();
        let points = eps.into_iter().map(|e| curve_point(examples, e)).collect();
        Self {
            method,
            norm,
            n,
            clean_correct,
            found: found.len(),
            median_distance,
            mean_distance,
            points,
        }
    }

    /// Robust accuracy at `eps`, read off the step function.
    pub fn at(&self, eps: f64) -> Option<&CurvePoint> {
        self.points.iter().take_while(|p| p.eps <= eps).last()
    }
}

/// Robust accuracy of `examples` at `eps`.
pub fn curve_point(examples: &[MinNormExample], eps: f64) -> CurvePoint {
    let n = examples.len();
    let robust = examples
        .iter()
        .filter(|e| e.clean_pred == e.label && !e.broken_at(eps))
        .count();
    let (ci_low, ci_high) = wilson_interval(robust, n);
    CurvePoint {
        eps,
        robust,
        robust_accuracy: if n == 0 {
            0.0
        } else {
            robust as f64 / n as f64
        },
        ci_low,
        ci_high,
    }
}

/// The columns of a security curve's CSV, in order.
pub const CURVE_COLUMNS: &[&str] = &["eps", "robust", "robust_accuracy", "ci_low", "ci_high"];

/// A model's security curve under one attack of a suite: an entry of results.json's
/// `security_curves`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityCurveRow {
    pub model: String,
    /// The attack's name in its suite.
    pub attack: String,
    #[serde(flatten)]
    pub curve: SecurityCurve,
}

impl SecurityCurveRow {
    /// One row per point, for `security-curves.csv`.
    pub fn point_rows(&self) -> Vec<CurvePointRow> {
        self.curve
            .points
            .iter()
            .map(|point| CurvePointRow {
                model: self.model.clone(),
                attack: self.attack.clone(),
                method: self.curve.method.clone(),
                norm: self.curve.norm,
                point: point.clone(),
            })
            .collect()
    }
}

/// One point of a suite's security curve: a row of `security-curves.csv`
/// ([`SECURITY_CURVE_COLUMNS`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePointRow {
    pub model: String,
    pub attack: String,
    pub method: String,
    pub norm: Lp,
    #[serde(flatten)]
    pub point: CurvePoint,
}

/// The columns of `security-curves.csv`, in order.
pub const SECURITY_CURVE_COLUMNS: &[&str] = &[
    "model",
    "attack",
    "method",
    "norm",
    "eps",
    "robust",
    "robust_accuracy",
    "ci_low",
    "ci_high",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn example(label: u32, clean_pred: u32, distance: Option<f64>) -> MinNormExample {
        MinNormExample {
            index: 0,
            label,
            clean_pred,
            adv_pred: 9,
            distance,
            linf: 0.0,
            l2: 0.0,
            l1: 0.0,
        }
    }

    #[test]
    fn the_curve_falls_at_each_distance() {
        let examples = [
            example(1, 1, Some(0.5)),
            example(1, 1, Some(0.2)),
            example(1, 1, None),
            example(2, 1, Some(0.0)),
        ];
        let curve = SecurityCurve::new("fmn-l2".into(), Lp { p: 2.0 }, &examples);
        assert_eq!(curve.clean_correct, 3);
        assert_eq!(curve.found, 2);
        let at: Vec<(f64, usize)> = curve.points.iter().map(|p| (p.eps, p.robust)).collect();
        assert_eq!(at, [(0.0, 3), (0.2, 2), (0.5, 1)]);
        assert_eq!(curve.at(0.1).unwrap().robust, 3);
        assert_eq!(curve.at(0.3).unwrap().robust, 2);
        assert_eq!(curve.at(10.0).unwrap().robust, 1);
        // Sorted distances 0, 0.2, 0.5, ∞: the lower median.
        assert_eq!(curve.median_distance, Some(0.2));
        assert!((curve.mean_distance.unwrap() - 0.35).abs() < 1e-12);
        let point = curve_point(&examples, 0.3);
        assert_eq!((point.robust, point.robust_accuracy), (2, 0.5));
        assert!(point.ci_low < 0.5 && point.ci_high > 0.5);
    }
}
