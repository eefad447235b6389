//! Replicates over seeds (a suite entry's `seeds`): mean and spread per entry, the radius each
//! regularizer family selects on validation per seed, and McNemar's exact test between
//! families on the test set's per-example correctness (`predictions.csv`).

use crate::content::{radius_family_key, valid_error};
use crate::doc::{Block, Cell};
use crate::schema::{ModelResult, Predictions, ResultsDir};

/// A replicated suite entry: its models, one per seed, in seed order.
struct Group<'a> {
    name: &'a str,
    eps: Option<f64>,
    models: Vec<&'a ModelResult>,
}

/// Entries that differ only in the regularizer's radius (and so in nothing but `eps` and the
/// seed): the candidates validation selects from.
struct Family<'a> {
    label: String,
    groups: Vec<Group<'a>>,
}

impl Family<'_> {
    /// The seeds every entry of the family was trained with.
    fn seeds(&self) -> Vec<u64> {
        let mut seeds: Vec<u64> = self.groups[0]
            .models
            .iter()
            .filter_map(|m| m.seed)
            .collect();
        seeds.retain(|s| {
            self.groups
                .iter()
                .all(|g| g.models.iter().any(|m| m.seed == Some(*s)))
        });
        seeds
    }
}

/// The family's model of seed `seed` with the lowest validation error (the first in suite
/// order on ties), with its radius; `None` when a candidate has no validation error.
fn selected<'a>(
    data: &ResultsDir,
    f: &Family<'a>,
    seed: u64,
) -> Option<(&'a ModelResult, Option<f64>)> {
    let mut best: Option<(&ModelResult, Option<f64>, f64)> = None;
    for g in &f.groups {
        let m = *g.models.iter().find(|m| m.seed == Some(seed))?;
        let valid = valid_error(data, &m.name, m.best_epoch)?;
        if best.as_ref().is_none_or(|b| valid < b.2) {
            best = Some((m, g.eps, valid));
        }
    }
    best.map(|(m, eps, _)| (m, eps))
}

fn regularizer_eps(m: &ModelResult) -> Option<f64> {
    m.train.as_ref()?.get("regularizer")?.get("eps")?.as_f64()
}

fn family_label(m: &ModelResult) -> String {
    match m.regularizer() {
        None => "baseline".into(),
        Some((kind, Some(p))) => format!("{kind} p = {}", p_text(p.p)),
        Some((kind, None)) => kind,
    }
}

fn p_text(p: f64) -> String {
    if p.is_infinite() {
        "∞".into()
    } else {
        format!("{p}")
    }
}

fn families(data: &ResultsDir) -> Vec<Family<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for m in &data.results.models {
        let Some(name) = m.group.as_deref() else {
            continue;
        };
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.models.push(m),
            None => groups.push(Group {
                name,
                eps: regularizer_eps(m),
                models: vec![m],
            }),
        }
    }
    let mut out: Vec<(String, Family<'_>)> = Vec::new();
    for mut g in groups {
        g.models.sort_by_key(|m| m.seed);
        let m = g.models[0];
        // Everything but the radius and the seed must agree.
        let key = radius_family_key(m, true);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, f)) => f.groups.push(g),
            None => out.push((
                key,
                Family {
                    label: family_label(m),
                    groups: vec![g],
                },
            )),
        }
    }
    out.into_iter().map(|(_, f)| f).collect()
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn mean_sd_text(values: &[f64]) -> String {
    let (mean, sd) = mean_sd(values);
    format!("{:.2}% ± {:.2}", mean * 100.0, sd * 100.0)
}

/// McNemar's exact two-sided p-value for `b` and `c` discordant pairs: twice the binomial
/// (n = b + c, ½) tail at min(b, c), at most 1. Summed in log space, so large counts do not
/// underflow (statrs would bring nalgebra for this one sum).
pub(crate) fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k_max = b.min(c);
    // ln P(X = k) for k = 0..=k_max, X ~ Binomial(n, ½).
    let mut log_p = n as f64 * 0.5f64.ln();
    let mut logs = Vec::with_capacity(k_max + 1);
    logs.push(log_p);
    for k in 1..=k_max {
        log_p += ((n - k + 1) as f64 / k as f64).ln();
        logs.push(log_p);
    }
    let top = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * logs.iter().map(|l| (l - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Discordant counts of models `a` and `b` on the test set: (a right and b wrong, a wrong and
/// b right); `None` without both columns.
pub(crate) fn discordant(p: &Predictions, a: &str, b: &str) -> Option<(usize, usize)> {
    let (pa, pb) = (p.column(a)?, p.column(b)?);
    let (mut ab, mut ba) = (0, 0);
    for ((y, x), z) in p.labels.iter().zip(pa).zip(pb) {
        match (x == y, z == y) {
            (true, false) => ab += 1,
            (false, true) => ba += 1,
            _ => {}
        }
    }
    Some((ab, ba))
}

pub(crate) fn p_value_text(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The section, when results.json has replicated models.
pub(crate) fn section(data: &ResultsDir, b: &mut Vec<Block>) {
    let families = families(data);
    if families.is_empty() {
        return;
    }
    b.push(Block::Heading(2, "Seeds and paired tests".into()));
    let mut rows = Vec::new();
    for f in &families {
        for g in &f.groups {
            let test: Vec<f64> = g.models.iter().map(|m| m.test_error).collect();
            let valid: Vec<f64> = g
                .models
                .iter()
                .filter_map(|m| valid_error(data, &m.name, m.best_epoch))
                .collect();
            let seeds: Vec<String> = g
                .models
                .iter()
                .map(|m| {
                    format!(
                        "{}: {:.2}%",
                        m.seed.map_or("?".into(), |s| s.to_string()),
                        m.test_error * 100.0
                    )
                })
                .collect();
            rows.push(vec![
                Cell::from(g.name),
                f.label.clone().into(),
                g.eps.map_or("—".into(), |e| format!("{e}")).into(),
                g.models.len().to_string().into(),
                if valid.len() == g.models.len() {
                    mean_sd_text(&valid)
                } else {
                    "—".into()
                }
                .into(),
                mean_sd_text(&test).into(),
                seeds.join(", ").into(),
            ]);
        }
    }
    b.push(Block::Table {
        header: ["entry", "member", "ε", "seeds", "valid error", "test error", "test error by seed"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: Some("Every replicated entry: mean ± standard deviation (n − 1) over its seeds, in %. Valid error at the epoch each model keeps.".into()),
    });

    // Selection on validation, per family and seed.
    let mut picks: Vec<Vec<(u64, &ModelResult)>> = Vec::new();
    let mut rows = Vec::new();
    for f in &families {
        let mut chosen = Vec::new();
        let mut text = Vec::new();
        for seed in f.seeds() {
            if let Some((m, eps)) = selected(data, f, seed) {
                chosen.push((seed, m));
                text.push(format!(
                    "{seed}: {}",
                    eps.map_or("—".into(), |e| format!("{e}"))
                ));
            }
        }
        let grid: Vec<String> = f
            .groups
            .iter()
            .map(|g| g.eps.map_or("—".into(), |e| format!("{e}")))
            .collect();
        let test: Vec<f64> = chosen.iter().map(|(_, m)| m.test_error).collect();
        rows.push(vec![
            Cell::from(f.label.clone()),
            grid.join(", ").into(),
            text.join(", ").into(),
            chosen.len().to_string().into(),
            if test.is_empty() {
                "—".into()
            } else {
                mean_sd_text(&test)
            }
            .into(),
        ]);
        picks.push(chosen);
    }
    b.push(Block::Table {
        header: ["member", "radius grid", "selected ε by seed", "seeds", "test error"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: Some("For each member and seed, the radius of lowest validation error (the test split is not used to choose); test error of the selected models, mean ± standard deviation over seeds, in %.".into()),
    });

    let Some(pred) = &data.predictions else {
        b.push(Block::Para("No predictions.csv in the results folder (set `predictions = true` under the suite's [eval]): no paired tests.".into()));
        return;
    };
    let mut rows = Vec::new();
    for i in 0..families.len() {
        for j in i + 1..families.len() {
            let (mut sum_ab, mut sum_ba, mut per_seed) = (0, 0, Vec::new());
            for (seed, a) in &picks[i] {
                let Some((_, bm)) = picks[j].iter().find(|(s, _)| s == seed) else {
                    continue;
                };
                let Some((ab, ba)) = discordant(pred, &a.name, &bm.name) else {
                    continue;
                };
                sum_ab += ab;
                sum_ba += ba;
                per_seed.push(format!(
                    "{seed}: {ab}/{ba}, p = {}",
                    p_value_text(mcnemar_exact(ab, ba))
                ));
            }
            if per_seed.is_empty() {
                continue;
            }
            rows.push(vec![
                Cell::from(format!("{} vs {}", families[i].label, families[j].label)),
                per_seed.join("; ").into(),
                format!("{sum_ab}/{sum_ba}").into(),
                p_value_text(mcnemar_exact(sum_ab, sum_ba)).into(),
            ]);
        }
    }
    // A selected model without a column (its predict job has not run) leaves its pairs out.
    let mut untested: Vec<&str> = picks
        .iter()
        .flatten()
        .filter(|(_, m)| pred.column(&m.name).is_none())
        .map(|(_, m)| m.name.as_str())
        .collect();
    untested.dedup();
    let mut caption = format!(
        "McNemar's exact two-sided test on the {} test examples, between the validation-selected models of the same seed: A only right counts the examples A classifies correctly and B does not. Pooled: the discordant counts summed over seeds, tested once. No correction for the number of pairs.",
        pred.labels.len()
    );
    if !untested.is_empty() {
        caption.push_str(&format!(
            " Not tested, for want of a predictions.csv column: {}.",
            untested.join(", ")
        ));
    }
    b.push(Block::Table {
        header: [
            "pair (A vs B)",
            "by seed: A only right / B only right, p",
            "pooled",
            "pooled p",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: Some(caption),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discordant_counts_the_examples_one_model_alone_gets_right() {
        let p = Predictions {
            labels: vec![0, 1, 2, 3, 4],
            columns: vec![
                ("a".into(), vec![0, 1, 9, 9, 4]),
                ("b".into(), vec![0, 9, 2, 9, 9]),
            ],
        };
        // a alone: examples 1 and 4; b alone: example 2; both wrong on 3.
        assert_eq!(discordant(&p, "a", "b"), Some((2, 1)));
        assert_eq!(discordant(&p, "b", "a"), Some((1, 2)));
        assert_eq!(discordant(&p, "a", "missing"), None);
    }

    /// Exact values from the binomial sums, computed by hand (b + c small) or with integer
    /// arithmetic: 2 · Σ_{k ≤ min} C(n, k) / 2^n.
    #[test]
    fn mcnemar_exact_matches_the_binomial_tail() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // n = 10, min 0: 2 / 1024.
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-15);
        // n = 10, min 2: 2 (1 + 10 + 45) / 1024.
        assert!((mcnemar_exact(8, 2) - 112.0 / 1024.0).abs() < 1e-14);
        assert_eq!(mcnemar_exact(2, 8), mcnemar_exact(8, 2));
        // n = 20, min 5: 2 (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20.
        assert!((mcnemar_exact(5, 15) - 2.0 * 21700.0 / 1048576.0).abs() < 1e-14);
        // Large counts do not underflow to 0 or overflow.
        let p = mcnemar_exact(1000, 1200);
        assert!(p > 1e-6 && p < 1e-4, "{p}");
    }

    #[test]
    fn mean_sd_is_the_sample_deviation() {
        let (m, s) = mean_sd(&[0.01, 0.02, 0.03]);
        assert!((m - 0.02).abs() < 1e-15 && (s - 0.01).abs() < 1e-15);
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
    }
}
