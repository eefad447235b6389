//! The data of every figure and table, computed from the results alone (no drawing here), so
//! tests can check what a plot shows without comparing pixels.

use serde::Serialize;

use crate::schema::{AttackKind, Lp, ModelResult, Results, RobustnessRow, TrainingRow};
use gauntlet_results::wilson_interval;

/// A value with its 95% interval, at `x`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

/// One model's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub model: String,
    pub points: Vec<Point>,
}

/// Model names in the order of `results.models`, then any other name the rows mention.
pub fn model_order(results: &Results) -> Vec<String> {
    let mut names: Vec<String> = results.models.iter().map(|m| m.name.clone()).collect();
    let mentioned = results
        .robustness
        .iter()
        .map(|r| &r.model)
        .chain(results.noise.iter().map(|r| &r.model))
        .chain(results.transfer.iter().flat_map(|r| [&r.source, &r.target]))
        .chain(results.masking.iter().map(|r| &r.model));
    for name in mentioned {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

fn position(order: &[String], name: &str) -> usize {
    order.iter().position(|n| n == name).unwrap_or(usize::MAX)
}

/// Accuracy against ε for one attack and norm, one series per model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccuracyPanel {
    /// The suite's name for the attack.
    pub attack: String,
    pub norm: Lp,
    /// The attack's own name (`pgd-linf`), when the results give it.
    pub method: Option<String>,
    pub kind: Option<String>,
    /// Examples per point (the largest n of the panel's rows).
    pub n: usize,
    pub series: Vec<Series>,
    /// The budgets written as fractions (`8/255`), by value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eps_written: Vec<(f64, String)>,
}

impl AccuracyPanel {
    /// How budget `eps` was written, if as a fraction.
    pub fn eps_written(&self, eps: f64) -> Option<&str> {
        self.eps_written
            .iter()
            .find(|(value, _)| *value == eps)
            .map(|(_, text)| text.as_str())
    }

    /// The ε values of the panel, sorted, without the clean point.
    pub fn eps_values(&self) -> Vec<f64> {
        let mut eps: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x))
            .filter(|&x| x > 0.0)
            .collect();
        eps.sort_by(f64::total_cmp);
        eps.dedup();
        eps
    }
}

/// One panel per (attack, norm), in order of first appearance; each model's series starts with
/// its clean accuracy on the attacked examples at ε = 0 (unless the attack was run at ε = 0),
/// then the robust accuracy at each ε, ascending, with Wilson 95% intervals.
pub fn accuracy_panels(results: &Results) -> Vec<AccuracyPanel> {
    let order = model_order(results);
    let mut groups: Vec<((String, Lp), Vec<&RobustnessRow>)> = Vec::new();
    for row in &results.robustness {
        let key = (row.attack.clone(), row.norm);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((key, vec![row])),
        }
    }
    groups
        .into_iter()
        .map(|((attack, norm), rows)| {
            let mut models: Vec<&str> = Vec::new();
            for r in &rows {
                if !models.contains(&r.model.as_str()) {
                    models.push(&r.model);
                }
            }
            models.sort_by_key(|m| position(&order, m));
            let series = models
                .iter()
                .map(|&model| {
                    let mut mine: Vec<&&RobustnessRow> =
                        rows.iter().filter(|r| r.model == model).collect();
                    mine.sort_by(|a, b| a.eps.total_cmp(&b.eps));
                    let mut points = Vec::with_capacity(mine.len() + 1);
                    if let Some(first) = mine.first().filter(|r| r.eps > 0.0) {
                        let (low, high) = wilson_interval(first.clean_correct, first.n);
                        points.push(Point {
                            x: 0.0,
                            y: first.clean_accuracy,
                            low,
                            high,
                        });
                    }
                    points.extend(mine.iter().map(|r| Point {
                        x: r.eps,
                        y: r.adversarial_accuracy,
                        low: r.ci_low,
                        high: r.ci_high,
                    }));
                    Series {
                        model: model.to_string(),
                        points,
                    }
                })
                .collect();
            AccuracyPanel {
                // Shown beside the attack's name only when it says something more.
                method: rows
                    .first()
                    .map(|r| r.method.clone())
                    .filter(|m| *m != attack),
                kind: rows.first().map(|r| r.kind.name().to_string()),
                eps_written: {
                    let mut written: Vec<(f64, String)> = rows
                        .iter()
                        .filter_map(|r| Some((r.eps, r.eps_written.clone()?)))
                        .collect();
                    written.sort_by(|a, b| a.0.total_cmp(&b.0));
                    written.dedup();
                    written
                },
                n: rows.iter().map(|r| r.n).max().unwrap_or(0),
                attack,
                norm,
                series,
            }
        })
        .collect()
}

/// Error of the target on examples crafted against the source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TransferCell {
    pub error: f64,
    /// Wilson 95% interval of the error.
    pub low: f64,
    pub high: f64,
    pub n: usize,
    /// Share of the source's mistakes on which the target predicts the same wrong class.
    pub agreement: Option<f64>,
}

/// One transfer experiment (attack, norm, ε): `cells[source][target]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransferMatrix {
    pub attack: String,
    pub norm: Lp,
    pub eps: f64,
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub cells: Vec<Vec<Option<TransferCell>>>,
}

pub fn transfer_matrices(results: &Results) -> Vec<TransferMatrix> {
    let order = model_order(results);
    let mut out: Vec<TransferMatrix> = Vec::new();
    for row in &results.transfer {
        let same =
            |m: &TransferMatrix| m.attack == row.attack && m.norm == row.norm && m.eps == row.eps;
        if !out.iter().any(same) {
            out.push(TransferMatrix {
                attack: row.attack.clone(),
                norm: row.norm,
                eps: row.eps,
                sources: Vec::new(),
                targets: Vec::new(),
                cells: Vec::new(),
            });
        }
        let m = out.iter_mut().find(|m| same(m)).expect("just pushed");
        for (list, name) in [(&mut m.sources, &row.source), (&mut m.targets, &row.target)] {
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
    }
    for m in &mut out {
        m.sources.sort_by_key(|s| position(&order, s));
        m.targets.sort_by_key(|s| position(&order, s));
        m.cells = vec![vec![None; m.targets.len()]; m.sources.len()];
        for row in &results.transfer {
            if row.attack == m.attack && row.norm == m.norm && row.eps == m.eps {
                let i = m
                    .sources
                    .iter()
                    .position(|s| *s == row.source)
                    .expect("collected");
                let j = m
                    .targets
                    .iter()
                    .position(|t| *t == row.target)
                    .expect("collected");
                m.cells[i][j] = Some(TransferCell {
                    error: row.error,
                    low: 1.0 - row.ci_high,
                    high: 1.0 - row.ci_low,
                    n: row.n,
                    agreement: row.agreement,
                });
            }
        }
    }
    out
}

/// One model's training log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingCurves {
    pub model: String,
    /// `(epoch, value)`; the validation lists are empty when there was no validation.
    pub train_loss: Vec<(f64, f64)>,
    pub valid_loss: Vec<(f64, f64)>,
    pub train_error: Vec<(f64, f64)>,
    pub valid_error: Vec<(f64, f64)>,
    pub valid_adv_error: Vec<(f64, f64)>,
    pub valid_pgd_error: Vec<(f64, f64)>,
    /// The norm and ε of the attacked validation check (`L∞ ε = 0.25`), when results.json
    /// records it.
    pub check: Option<String>,
    /// The train loss is the regularized objective, not comparable with the validation loss.
    pub regularized: bool,
}

pub fn training_curves(
    rows: &[TrainingRow],
    order: &[String],
    records: &[ModelResult],
) -> Vec<TrainingCurves> {
    let mut models: Vec<&str> = Vec::new();
    for r in rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    models.sort_by_key(|m| position(order, m));
    models
        .into_iter()
        .map(|model| {
            let mut mine: Vec<&TrainingRow> = rows.iter().filter(|r| r.model == model).collect();
            mine.sort_by_key(|r| r.epoch);
            let pick = |f: &dyn Fn(&TrainingRow) -> Option<f64>| -> Vec<(f64, f64)> {
                mine.iter()
                    .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v)))
                    .collect()
            };
            let record = records.iter().find(|m| m.name == model);
            TrainingCurves {
                check: record
                    .and_then(ModelResult::adversarial_check)
                    .map(|(p, eps)| format!("{p} ε = {}", crate::plot::fmt_num(eps))),
                regularized: record.is_some_and(|m| m.regularizer().is_some()),
                model: model.to_string(),
                train_loss: pick(&|r| Some(r.train_loss)),
                valid_loss: pick(&|r| r.valid_loss),
                train_error: pick(&|r| Some(r.train_error)),
                valid_error: pick(&|r| r.valid_error),
                valid_adv_error: pick(&|r| r.valid_adv_error),
                valid_pgd_error: pick(&|r| r.valid_pgd_error),
            }
        })
        .collect()
}

/// A value with its interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TradeoffPoint {
    pub model: String,
    /// Accuracy on the attacked examples without attack.
    pub clean: Estimate,
    pub robust: Estimate,
}

/// Robust against clean accuracy for one attack and norm at one ε.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TradeoffPanel {
    pub attack: String,
    pub norm: Lp,
    pub eps: f64,
    pub points: Vec<TradeoffPoint>,
}

/// One trade-off panel per accuracy panel, at its middle ε (index `k / 2` of the `k` sorted
/// values, so 0.2 of `[0.05, 0.1, 0.2, 0.3]`).
pub fn tradeoff_panels(panels: &[AccuracyPanel]) -> Vec<TradeoffPanel> {
    panels
        .iter()
        .filter_map(|panel| {
            let eps_values = panel.eps_values();
            let eps = *eps_values.get(eps_values.len() / 2)?;
            let points = panel
                .series
                .iter()
                .filter_map(|s| {
                    let clean = s.points.first()?;
                    let robust = s.points.iter().find(|p| p.x == eps)?;
                    let est = |p: &Point| Estimate {
                        value: p.y,
                        low: p.low,
                        high: p.high,
                    };
                    Some(TradeoffPoint {
                        model: s.model.clone(),
                        clean: est(clean),
                        robust: est(robust),
                    })
                })
                .collect();
            Some(TradeoffPanel {
                attack: panel.attack.clone(),
                norm: panel.norm,
                eps,
                points,
            })
        })
        .collect()
}

/// Accuracy against σ for one model, clipped to `[0, 1]` or not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseSeries {
    pub model: String,
    pub clip: bool,
    pub points: Vec<Point>,
}

/// One series per model and clipping, sorted by σ; the model's clean test accuracy is added at
/// σ = 0 when the noise was scored on as many examples as the test accuracy.
pub fn noise_series(results: &Results) -> Vec<NoiseSeries> {
    let order = model_order(results);
    let mut keys: Vec<(String, bool)> = Vec::new();
    for r in &results.noise {
        if !keys.iter().any(|(m, c)| *m == r.model && *c == r.clip) {
            keys.push((r.model.clone(), r.clip));
        }
    }
    keys.sort_by_key(|(m, c)| (position(&order, m), !*c));
    keys.into_iter()
        .map(|(model, clip)| {
            let mut rows: Vec<_> = results
                .noise
                .iter()
                .filter(|r| r.model == model && r.clip == clip)
                .collect();
            rows.sort_by(|a, b| a.sigma.total_cmp(&b.sigma));
            let mut points = Vec::new();
            let clean = results.models.iter().find(|m| m.name == model);
            if let (Some(clean), Some(first)) = (clean, rows.first()) {
                if first.sigma > 0.0 && clean.test_n == first.n {
                    points.push(Point {
                        x: 0.0,
                        y: clean.test_accuracy(),
                        low: clean.test_ci_low,
                        high: clean.test_ci_high,
                    });
                }
            }
            points.extend(rows.iter().map(|r| Point {
                x: r.sigma,
                y: r.accuracy,
                low: r.ci_low,
                high: r.ci_high,
            }));
            NoiseSeries {
                model,
                clip,
                points,
            }
        })
        .collect()
}

/// The security curves of one model in one norm, with the fixed-ε attacks' points beside them.
#[derive(Clone, Debug)]
pub struct CurvePanel {
    pub model: String,
    pub norm: Lp,
    /// `(attack, its curve)`, in the order of results.json.
    pub curves: Vec<(String, gauntlet_results::SecurityCurve)>,
    /// `(attack, method, points)` of the other attacks of the same model and norm.
    pub fixed: Vec<(String, String, Vec<Point>)>,
    /// The envelope over the curves (with two or more of them).
    pub envelope: Option<gauntlet_results::Envelope>,
}

/// One [`CurvePanel`] per model and norm with a security curve.
pub fn curve_panels(results: &Results) -> Vec<CurvePanel> {
    let mut panels: Vec<CurvePanel> = Vec::new();
    for row in &results.security_curves {
        let norm = row.curve.norm;
        let at = panels
            .iter()
            .position(|p| p.model == row.model && p.norm == norm)
            .unwrap_or_else(|| {
                panels.push(CurvePanel {
                    model: row.model.clone(),
                    norm,
                    curves: Vec::new(),
                    fixed: Vec::new(),
                    envelope: None,
                });
                panels.len() - 1
            });
        panels[at]
            .curves
            .push((row.attack.clone(), row.curve.clone()));
    }
    for panel in &mut panels {
        if panel.curves.len() > 1 {
            panel.envelope = results
                .optimality
                .iter()
                .find(|e| e.model == panel.model && e.norm == panel.norm)
                .cloned();
        }
        for r in results.robustness.iter().filter(|r| {
            r.model == panel.model && r.norm == panel.norm && r.kind != AttackKind::MinimumNorm
        }) {
            let point = Point {
                x: r.eps,
                y: r.adversarial_accuracy,
                low: r.ci_low,
                high: r.ci_high,
            };
            match panel.fixed.iter_mut().find(|(a, _, _)| *a == r.attack) {
                Some((_, _, points)) => points.push(point),
                None => panel
                    .fixed
                    .push((r.attack.clone(), r.method.clone(), vec![point])),
            }
        }
        for (_, _, points) in &mut panel.fixed {
            points.sort_by(|a, b| a.x.total_cmp(&b.x));
        }
    }
    panels
}
