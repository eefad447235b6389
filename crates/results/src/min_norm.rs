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
    /// The forward and backward passes the search spent, per example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<crate::Queries>,
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
            queries: None,
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

/// One attack's place against the envelope of a model and norm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimality {
    /// The attack's name in its suite, and its own.
    pub attack: String,
    pub method: String,
    /// Area under its security curve up to the envelope's largest distance.
    pub area: f64,
    /// AttackBench's local optimality ([`Envelope::new`]); `None` when the envelope leaves
    /// nothing to compare (no example broken at a positive distance).
    pub local_optimality: Option<f64>,
}

/// The per-example best over several minimum-norm attacks of one model and norm: the smallest
/// distance any of them found for each example, its security curve, and each attack's
/// optimality against it (AttackBench, Cinà et al., AAAI 2025).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub model: String,
    pub norm: Lp,
    /// The envelope's own curve (its `method` is `envelope`).
    pub curve: SecurityCurve,
    /// Area under the envelope's curve up to its largest distance.
    pub area: f64,
    pub attacks: Vec<Optimality>,
}

impl Envelope {
    /// The envelope of `attacks` (`(suite name, method, per-example distances)`, each over the
    /// same examples in the same order), and each attack's local optimality as AttackBench's
    /// `analysis/plot.py` computes it: with `d*` the envelope's largest finite distance, every
    /// distance clipped to `d*` (not found counts as `d*`), `A` the trapezoidal area under a
    /// curve's points up to `d*`, and `c` the clean accuracy,
    /// `LO = 1 − (A_attack − A_envelope) / (c · d* − A_envelope)`: 1 for an attack that is the
    /// envelope, 0 for one that breaks nothing correct clean.
    ///
    /// # Errors
    /// When the attacks do not cover the same examples.
    pub fn new(
        model: String,
        norm: Lp,
        attacks: &[(String, String, &[MinNormExample])],
    ) -> Result<Self, String> {
        let Some((_, _, first)) = attacks.first() else {
            return Err("no attacks to take the envelope of".into());
        };
        let n = first.len();
        for (attack, _, examples) in attacks {
            let same = examples.len() == n
                && examples
                    .iter()
                    .zip(first.iter())
                    .all(|(a, b)| a.index == b.index && a.label == b.label);
            if !same {
                return Err(format!(
                    "attack `{attack}` was run on other examples than `{}` ({} against {n})",
                    attacks[0].0,
                    examples.len()
                ));
            }
        }
        // Per example, the attack with the smallest distance (the first on ties).
        let best: Vec<MinNormExample> = (0..n)
            .map(|i| {
                attacks
                    .iter()
                    .map(|(_, _, e)| &e[i])
                    .min_by(|a, b| {
                        let d = |e: &MinNormExample| e.distance.unwrap_or(f64::INFINITY);
                        d(a).total_cmp(&d(b))
                    })
                    .expect("at least one attack")
                    .clone()
            })
            .collect();
        let distances = |e: &[MinNormExample]| -> Vec<f64> {
            e.iter()
                .map(|x| x.distance.unwrap_or(f64::INFINITY))
                .collect()
        };
        let envelope = distances(&best);
        let max = envelope
            .iter()
            .copied()
            .filter(|d| d.is_finite())
            .fold(0.0f64, f64::max);
        let clean =
            first.iter().filter(|e| e.clean_pred == e.label).count() as f64 / n.max(1) as f64;
        let area = curve_area(&envelope, max);
        let span = clean * max - area;
        let attacks = attacks
            .iter()
            .map(|(attack, method, examples)| {
                let own = curve_area(&distances(examples), max);
                Optimality {
                    attack: attack.clone(),
                    method: method.clone(),
                    area: own,
                    local_optimality: (span > 0.0).then(|| 1.0 - (own - area) / span),
                }
            })
            .collect();
        Ok(Self {
            curve: SecurityCurve::new("envelope".into(), norm, &best),
            model,
            norm,
            area,
            attacks,
        })
    }
}

/// The trapezoidal area under the robust-accuracy points of `distances` clipped to `max`:
/// at each distinct distance, the share of examples whose distance is larger (AttackBench's
/// curve; an example never broken counts as broken at `max`).
fn curve_area(distances: &[f64], max: f64) -> f64 {
    let n = distances.len();
    if n == 0 {
        return 0.0;
    }
    let mut clipped: Vec<f64> = distances.iter().map(|d| d.min(max)).collect();
    clipped.sort_by(f64::total_cmp);
    // (distance, robust accuracy just after it), one point per distinct distance.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (k, &d) in clipped.iter().enumerate() {
        let after = 1.0 - (k + 1) as f64 / n as f64;
        match points.last_mut() {
            Some(last) if last.0 == d => last.1 = after,
            _ => points.push((d, after)),
        }
    }
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// A row of `optimality.csv` ([`OPTIMALITY_COLUMNS`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimalityRow {
    pub model: String,
    pub norm: Lp,
    pub attack: String,
    pub method: String,
    pub area: f64,
    pub envelope_area: f64,
    pub local_optimality: Option<f64>,
}

impl Envelope {
    /// One row per attack, for `optimality.csv`.
    pub fn rows(&self) -> Vec<OptimalityRow> {
        self.attacks
            .iter()
            .map(|a| OptimalityRow {
                model: self.model.clone(),
                norm: self.norm,
                attack: a.attack.clone(),
                method: a.method.clone(),
                area: a.area,
                envelope_area: self.area,
                local_optimality: a.local_optimality,
            })
            .collect()
    }
}

/// The columns of `optimality.csv`, in order.
pub const OPTIMALITY_COLUMNS: &[&str] = &[
    "model",
    "norm",
    "attack",
    "method",
    "area",
    "envelope_area",
    "local_optimality",
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

    #[test]
    fn the_envelope_takes_each_examples_best_and_scores_each_attack_against_it() {
        let with_index = |mut e: Vec<MinNormExample>| {
            for (i, x) in e.iter_mut().enumerate() {
                x.index = i;
            }
            e
        };
        // Four examples, all correct clean.
        let a = with_index(vec![
            example(1, 1, Some(0.2)),
            example(1, 1, Some(0.4)),
            example(1, 1, Some(0.6)),
            example(1, 1, Some(0.8)),
        ]);
        let b = with_index(vec![
            example(1, 1, Some(0.4)),
            example(1, 1, Some(0.2)),
            example(1, 1, None),
            example(1, 1, Some(0.8)),
        ]);
        let env = Envelope::new(
            "m".into(),
            Lp { p: 2.0 },
            &[
                ("a".into(), "fmn-l2".into(), &a),
                ("b".into(), "ddn-l2".into(), &b),
            ],
        )
        .unwrap();
        // The envelope's distances are 0.2, 0.2, 0.6, 0.8: robust 4 at 0, 2 from 0.2, 1 from
        // 0.6, 0 from 0.8.
        let at: Vec<(f64, usize)> = env.curve.points.iter().map(|p| (p.eps, p.robust)).collect();
        assert_eq!(at, [(0.0, 4), (0.2, 2), (0.6, 1), (0.8, 0)]);
        // Areas by the trapezoidal rule over (d, accuracy after d), clipped at d* = 0.8:
        // envelope (0.2, .5), (0.6, .25), (0.8, 0): 0.4·0.375 + 0.2·0.125 = 0.175.
        assert!((env.area - 0.175).abs() < 1e-12);
        // a: (0.2, .75), (0.4, .5), (0.6, .25), (0.8, 0): 0.125 + 0.075 + 0.025 = 0.225.
        let la = &env.attacks[0];
        assert!((la.area - 0.225).abs() < 1e-12);
        // LO = 1 − (0.225 − 0.175) / (1 · 0.8 − 0.175).
        assert!((la.local_optimality.unwrap() - (1.0 - 0.05 / 0.625)).abs() < 1e-12);
        // b misses example 2, counted at d*: 0.2, 0.4, 0.8, 0.8 give (0.2, .75), (0.4, .5),
        // (0.8, 0): 0.125 + 0.1, the same area and optimality as a.
        assert!((env.attacks[1].area - 0.225).abs() < 1e-12);
        let lb = env.attacks[1].local_optimality.unwrap();
        assert!((lb - la.local_optimality.unwrap()).abs() < 1e-12);
        // The envelope scores itself 1.
        let alone = Envelope::new(
            "m".into(),
            Lp { p: 2.0 },
            &[("a".into(), "fmn-l2".into(), &a)],
        )
        .unwrap();
        assert!((alone.attacks[0].local_optimality.unwrap() - 1.0).abs() < 1e-12);
        // Other examples are refused.
        let short = &a[..3];
        assert!(Envelope::new(
            "m".into(),
            Lp { p: 2.0 },
            &[
                ("a".into(), "x".into(), &a),
                ("c".into(), "y".into(), short)
            ]
        )
        .is_err());
    }
}
