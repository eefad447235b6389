//! What `report.md` and `index.html` say: tables of clean accuracy, robust accuracy per attack
//! and ε, noise, the transfer matrix, the gradient-masking checks, and the figures.

use std::path::Path;

use crate::doc::{Block, Cell};
use crate::figures::named;
use crate::plot::fmt_num;
use crate::schema::{ModelResult, ReportSection, ResultsDir, RobustnessRow};
use crate::series::{AccuracyPanel, CurvePanel, NoiseSeries, Point, TransferMatrix};
use crate::FigureFile;

pub(crate) struct Data<'a> {
    pub panels: &'a [AccuracyPanel],
    pub matrices: &'a [TransferMatrix],
    pub curves: &'a [CurvePanel],
    pub noise: &'a [NoiseSeries],
}

/// The figures drawn, by section (same order as the data they show).
pub(crate) struct Figures<'a> {
    pub accuracy: &'a [FigureFile],
    pub tradeoff: &'a [FigureFile],
    pub transfer: &'a [FigureFile],
    pub curves: &'a [FigureFile],
    pub noise: Option<&'a FigureFile>,
    pub training: Option<&'a FigureFile>,
    pub training_loss: Option<&'a FigureFile>,
    pub perturbations: &'a [FigureFile],
    pub sweeps: &'a [FigureFile],
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn with_ci(v: f64, low: f64, high: f64) -> String {
    format!("{} [{:.1}, {:.1}]", pct(v), low * 100.0, high * 100.0)
}

fn point_cell(p: &Point) -> Cell {
    with_ci(p.y, p.low, p.high).into()
}

fn figure(fig: &FigureFile, report_dir: &Path) -> Block {
    let rel = |p: &Path| {
        p.strip_prefix(report_dir)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    Block::Figure {
        title: fig.title.clone(),
        png: rel(&fig.png),
        svg: rel(&fig.svg),
    }
}

/// A table header: the `lead` columns, then one per ε.
fn eps_header(lead: &[&str], eps: &[f64], panel: &AccuracyPanel) -> Vec<String> {
    let mut header: Vec<String> = lead.iter().map(|s| s.to_string()).collect();
    header.extend(eps.iter().map(|&x| {
        let label = panel
            .eps_written(x)
            .map_or_else(|| fmt_num(x), str::to_string);
        format!("ε = {label}")
    }));
    header
}

/// For a targeted attack, the share of examples aimed at another class that reached their
/// target, per model and ε (robust accuracy alone does not show it); `None` otherwise.
fn targeted_success(rows: &[RobustnessRow], panel: &AccuracyPanel, eps: &[f64]) -> Option<Block> {
    let mine: Vec<&RobustnessRow> = rows
        .iter()
        .filter(|r| r.attack == panel.attack && r.targeted_n.is_some())
        .collect();
    if mine.is_empty() {
        return None;
    }
    let header = eps_header(&["model"], eps, panel);
    let rows = panel
        .series
        .iter()
        .map(|s| {
            let mut row = vec![Cell::from(s.model.clone())];
            for x in eps {
                let r = mine.iter().find(|r| r.model == s.model && r.eps == *x);
                row.push(
                    match r.and_then(|r| Some((r.targeted_n?, r.target_reached?))) {
                        Some((aimed, reached)) if aimed > 0 => {
                            format!("{} ({reached}/{aimed})", pct(reached as f64 / aimed as f64))
                                .into()
                        }
                        _ => "—".into(),
                    },
                );
            }
            row
        })
        .collect();
    Some(Block::Table {
        header,
        rows,
        caption: Some(
            "Targeted success: the share of examples aimed at a class other than their label that the attacked input is classified as (reached / aimed).".into(),
        ),
    })
}

/// `dataset = mnist, test-limit = 1000`, from the `data` object of results.json.
fn describe_data(value: &serde_json::Value) -> Option<String> {
    let obj = value.as_object()?;
    let parts: Vec<String> = obj
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k} = {s}"),
            other => format!("{k} = {other}"),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The suite's published numbers beside ours, then its protocol notes.
fn references(report: &ReportSection, b: &mut Vec<Block>) {
    if !report.references.is_empty() {
        b.push(Block::Heading(2, "Published numbers beside ours".into()));
        let pct2 = |v: f64| format!("{:.2}%", v * 100.0);
        let rows = report
            .references
            .iter()
            .map(|r| {
                let ours = match (r.ours, r.ci_low, r.ci_high) {
                    (Some(v), Some(lo), Some(hi)) => {
                        format!("{} [{:.2}, {:.2}]", pct2(v), lo * 100.0, hi * 100.0)
                    }
                    (Some(v), _, _) => pct2(v),
                    _ => "not run yet".into(),
                };
                vec![
                    Cell::from(r.what.clone()),
                    pct2(r.published).into(),
                    ours.into(),
                    r.n.map_or_else(|| "—".into(), |n| n.to_string()).into(),
                    r.source.clone().into(),
                ]
            })
            .collect();
        b.push(Block::Table {
            header: ["quantity (error rate)", "published", "ours [95% CI]", "n", "published in"]
                .map(String::from)
                .to_vec(),
            rows,
            caption: Some(
                "Error rates; ours with its Wilson 95% interval on n test examples. Differences in protocol are listed below.".into(),
            ),
        });
    }
    if !report.notes.is_empty() {
        b.push(Block::Heading(2, "Protocol notes".into()));
        b.push(Block::List(report.notes.clone()));
    }
}

/// The clean validation error of `model` at `epoch` (else its last epoch) in training.csv.
pub(crate) fn valid_error(data: &ResultsDir, model: &str, epoch: Option<usize>) -> Option<f64> {
    let rows: Vec<_> = data
        .training
        .as_ref()?
        .iter()
        .filter(|row| row.model == model)
        .collect();
    let row = match epoch {
        Some(e) => rows.iter().find(|row| row.epoch == e),
        None => rows.iter().max_by_key(|row| row.epoch),
    }?;
    row.valid_error
}

/// What models of one radius family share: architecture, spec and training config without the
/// regularizer's radius (and without the seed when `across_seeds`).
pub(crate) fn radius_family_key(m: &ModelResult, across_seeds: bool) -> String {
    let mut train = m.train.clone().unwrap_or_default();
    if let Some(t) = train.as_object_mut() {
        if across_seeds {
            t.remove("seed");
        }
        if let Some(r) = t.get_mut("regularizer").and_then(|r| r.as_object_mut()) {
            r.remove("eps");
        }
    }
    let spec = m.spec.as_ref().map(|s| s.to_string()).unwrap_or_default();
    format!("{} {spec} {train}", m.arch.as_deref().unwrap_or(""))
}

/// The families of models that differ only in the regularizer's radius (same architecture,
/// regularizer kind and norm; two members or more, each with a validation error), each with
/// the member of lowest validation error: `(members, best)`.
fn validation_families(data: &ResultsDir) -> Vec<(Vec<String>, String)> {
    let mut families: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for m in &data.results.models {
        let (Some(_), Some(valid), Some(_)) = (
            m.regularizer(),
            valid_error(data, &m.name, m.best_epoch),
            m.train.as_ref(),
        ) else {
            continue;
        };
        // Everything but the radius must agree, the seed included.
        let key = radius_family_key(m, false);
        match families.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push((m.name.clone(), valid)),
            None => families.push((key, vec![(m.name.clone(), valid)])),
        }
    }
    families
        .into_iter()
        .filter(|(_, members)| members.len() >= 2)
        .map(|(_, members)| {
            // The first of equal errors: the order of the suite.
            let best = members
                .iter()
                .fold(&members[0], |b, m| if m.1 < b.1 { m } else { b })
                .0
                .clone();
            (members.into_iter().map(|(name, _)| name).collect(), best)
        })
        .collect()
}

pub(crate) fn document(
    data: &ResultsDir,
    d: &Data<'_>,
    figs: &Figures<'_>,
    report_dir: &Path,
    notes: &[String],
) -> Vec<Block> {
    let r = &data.results;
    let mut b = vec![Block::Heading(1, format!("gauntlet report: {}", r.suite))];
    let mut about = Vec::new();
    if let Some(data) = describe_data(&r.data) {
        about.push(format!("Data: {data}."));
    }
    if let Some(seed) = r.seed {
        about.push(format!("Seed {seed}."));
    }
    match (&r.gauntlet_version, &r.code_version) {
        (Some(v), Some(c)) => about.push(format!("Written by gauntlet {v} (code version {c}).")),
        (Some(v), None) => about.push(format!("Written by gauntlet {v}.")),
        _ => {}
    }
    about.push(format!(
        "Results: {} (schema_version {}). Every accuracy carries its number of examples and a Wilson 95% interval [low, high], in %.",
        data.dir.display(),
        r.schema_version
    ));
    b.push(Block::Para(about.join(" ")));
    if !r.missing.is_empty() {
        let shown: Vec<&str> = r.missing.iter().take(12).map(String::as_str).collect();
        let more = if r.missing.len() > shown.len() {
            format!(" and {} more", r.missing.len() - shown.len())
        } else {
            String::new()
        };
        b.push(Block::Warning(format!(
            "{} planned job(s) have no output yet, so these results are incomplete: {}{more}.",
            r.missing.len(),
            shown.join(", ")
        )));
    }
    let failed = r.masking.iter().filter(|m| !m.passed).count();
    if failed > 0 {
        b.push(Block::Warning(format!(
            "{failed} gradient-masking check(s) failed: some robust accuracies may be overestimates (see \"Gradient-masking checks\")."
        )));
    }

    references(&r.report, &mut b);

    // Clean accuracy.
    b.push(Block::Heading(2, "Clean accuracy".into()));
    if r.models.is_empty() {
        b.push(Block::Para("results.json lists no trained model.".into()));
    } else {
        let families = validation_families(data);
        let rows = r
            .models
            .iter()
            .map(|m| {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
                let name = if families.iter().any(|(_, best)| *best == m.name) {
                    format!("{} (validation-best)", m.name)
                } else {
                    m.name.clone()
                };
                vec![
                    Cell::from(name),
                    opt(m.arch.clone()).into(),
                    opt(m.n_params.map(|n| n.to_string())).into(),
                    opt(m.epochs_run.map(|e| match m.best_epoch {
                        Some(best) => format!("{e} (best {best})"),
                        None => e.to_string(),
                    }))
                    .into(),
                    opt(m.stopped_by.clone()).into(),
                    opt(valid_error(data, &m.name, m.best_epoch)
                        .map(|v| format!("{:.2}%", v * 100.0)))
                    .into(),
                    m.test_n.to_string().into(),
                    with_ci(m.test_accuracy(), m.test_ci_low, m.test_ci_high).into(),
                    opt(m.test_loss.map(|l| format!("{l:.4}"))).into(),
                ]
            })
            .collect();
        b.push(Block::Table {
            header: [
                "model",
                "architecture",
                "parameters",
                "epochs",
                "stopped by",
                "valid error",
                "test n",
                "accuracy [95% CI]",
                "loss",
            ]
            .map(String::from)
            .to_vec(),
            rows,
            caption: Some({
                let mut caption = "Accuracy on the clean test split; valid error: the clean validation error at the epoch the model keeps (the one to select hyper-parameters by, never the test split).".to_string();
                for (members, best) in &families {
                    caption.push_str(&format!(
                        " {best} (validation-best): the lowest valid error of {}, which differ only in the regularizer's radius.",
                        members.join(", ")
                    ));
                }
                caption
            }),
        });
    }
    if figs.training.is_some() || figs.training_loss.is_some() {
        b.push(Block::Heading(3, "Training curves".into()));
    }
    for f in [figs.training, figs.training_loss].into_iter().flatten() {
        b.push(figure(f, report_dir));
    }

    crate::stages::section(data, &mut b);
    crate::seeds::section(data, &mut b);

    // Robust accuracy.
    b.push(Block::Heading(2, "Robust accuracy".into()));
    if d.panels.is_empty() {
        b.push(Block::Para("No attack results.".into()));
    }
    for (i, panel) in d.panels.iter().enumerate() {
        let mut heading = format!("{} ({})", panel.attack, panel.norm);
        if let Some(m) = &panel.method {
            heading.push_str(&format!(": {m}"));
        }
        if let Some(k) = &panel.kind {
            heading.push_str(&format!(", {k}"));
        }
        b.push(Block::Heading(3, heading));
        let eps = panel.eps_values();
        let header = eps_header(&["model", "clean"], &eps, panel);
        let rows = panel
            .series
            .iter()
            .map(|s| {
                let mut row = vec![Cell::from(s.model.clone())];
                row.push(match s.points.first().filter(|p| p.x == 0.0) {
                    Some(p) => point_cell(p),
                    None => "—".into(),
                });
                for x in &eps {
                    row.push(match s.points.iter().find(|p| p.x == *x) {
                        Some(p) => point_cell(p),
                        None => "—".into(),
                    });
                }
                row
            })
            .collect();
        b.push(Block::Table {
            header,
            rows,
            caption: Some(format!(
                "Accuracy [95% CI] on n = {} examples; an example counts as robust only if classified correctly both clean and attacked.",
                panel.n
            )),
        });
        if let Some(table) = targeted_success(&data.results.robustness, panel, &eps) {
            b.push(table);
        }
        if let Some(f) = figs.accuracy.get(i) {
            b.push(figure(f, report_dir));
        }
    }
    if !figs.tradeoff.is_empty() {
        b.push(Block::Heading(
            3,
            "Robustness against clean accuracy".into(),
        ));
        b.push(Block::Para(
            "One point per model, at the middle ε of each attack's list; bars are Wilson 95% intervals.".into(),
        ));
        for f in figs.tradeoff {
            b.push(figure(f, report_dir));
        }
    }

    // Transfer.
    b.push(Block::Heading(2, "Transfer".into()));
    if d.matrices.is_empty() {
        b.push(Block::Para("No transfer results.".into()));
    }
    for (i, m) in d.matrices.iter().enumerate() {
        b.push(Block::Heading(
            3,
            format!("{} ({}) at ε = {}", m.attack, m.norm, fmt_num(m.eps)),
        ));
        let mut header = vec!["source ↓ / target →".to_string()];
        header.extend(m.targets.iter().cloned());
        let rows = m
            .sources
            .iter()
            .zip(&m.cells)
            .map(|(source, cells)| {
                let mut row = vec![Cell::from(source.clone())];
                for (target, cell) in m.targets.iter().zip(cells) {
                    row.push(match cell {
                        Some(c) if source == target => {
                            Cell::strong(format!("{} (white-box)", with_ci(c.error, c.low, c.high)))
                        }
                        Some(c) => with_ci(c.error, c.low, c.high).into(),
                        None => "—".into(),
                    });
                }
                row
            })
            .collect();
        b.push(Block::Table {
            header,
            rows,
            caption: Some(
                "Error [95% CI] of the target (column) on examples crafted against the source (row); the diagonal, in bold, is white-box."
                    .into(),
            ),
        });
        let agreement: Vec<String> = m
            .sources
            .iter()
            .zip(&m.cells)
            .flat_map(|(s, cells)| {
                m.targets.iter().zip(cells).filter_map(move |(t, c)| {
                    let a = c.as_ref()?.agreement?;
                    (s != t).then(|| format!("{s} → {t}: {}", pct(a)))
                })
            })
            .collect();
        if !agreement.is_empty() {
            b.push(Block::Para(format!(
                "Agreement (share of the source's mistakes on which the target predicts the same wrong class): {}.",
                agreement.join("; ")
            )));
        }
        if let Some(f) = figs.transfer.get(i) {
            b.push(figure(f, report_dir));
        }
    }

    // Security curves.
    if !d.curves.is_empty() {
        b.push(Block::Heading(
            2,
            "Minimum-norm attacks and security curves".into(),
        ));
        b.push(Block::Para(
            "A minimum-norm attack searches, for each example, the smallest perturbation that breaks it; the robust accuracy at ε is the share of examples correct clean whose smallest perturbation found is larger than ε. One search gives the whole curve; a fixed-ε attack's point should lie on or above the curve of a stronger attack.".into(),
        ));
        let rows = d
            .curves
            .iter()
            .flat_map(|panel| {
                panel.curves.iter().map(move |(attack, c)| {
                    let dist = |d: Option<f64>| d.map_or("—".to_string(), |v| format!("{v:.4}"));
                    vec![
                        Cell::from(panel.model.clone()),
                        Cell::from(named(attack, &c.method)),
                        Cell::from(c.norm.to_string()),
                        Cell::from(format!("{} / {}", c.found, c.clean_correct)),
                        Cell::from(dist(c.median_distance)),
                        Cell::from(dist(c.mean_distance)),
                        Cell::from(c.queries.map_or("—".to_string(), |q| {
                            format!("{:.0} / {:.0}", q.forward, q.backward)
                        })),
                    ]
                })
            })
            .collect();
        b.push(Block::Table {
            header: ["model", "attack", "norm", "broken / correct clean", "median distance", "mean distance (broken)", "passes per example (forward / backward)"]
                .iter()
                .map(|h| h.to_string())
                .collect(),
            rows,
            caption: Some(
                "The median is over all examples (0 for those misclassified clean); — where more than half were never broken.".into(),
            ),
        });
        let envelopes: Vec<_> = d
            .curves
            .iter()
            .filter_map(|p| p.envelope.as_ref())
            .collect();
        if !envelopes.is_empty() {
            b.push(Block::Heading(3, "Optimality".into()));
            b.push(Block::Para(
                "The envelope takes, for each example, the smallest perturbation any of the minimum-norm attacks found. Each attack's local optimality (AttackBench, Cinà et al. 2025) compares the area under its security curve with the envelope's, both clipped at the envelope's largest distance d*: 1 − (A − A*) / (c·d* − A*), with c the clean accuracy; 100% is the envelope itself, 0% an attack that breaks nothing.".into(),
            ));
            let rows = envelopes
                .iter()
                .flat_map(|env| {
                    env.attacks.iter().map(move |a| {
                        vec![
                            Cell::from(env.model.clone()),
                            Cell::from(env.norm.to_string()),
                            Cell::from(named(&a.attack, &a.method)),
                            Cell::from(format!("{:.4}", a.area)),
                            Cell::from(format!("{:.4}", env.area)),
                            Cell::from(a.local_optimality.map_or("—".to_string(), pct)),
                        ]
                    })
                })
                .collect();
            b.push(Block::Table {
                header: [
                    "model",
                    "norm",
                    "attack",
                    "area",
                    "envelope area",
                    "local optimality",
                ]
                .iter()
                .map(|h| h.to_string())
                .collect(),
                rows,
                caption: None,
            });
        }
        for f in figs.curves {
            b.push(figure(f, report_dir));
        }
    }

    // Noise.
    if !d.noise.is_empty() {
        b.push(Block::Heading(2, "Gaussian noise".into()));
        let mut sigmas: Vec<f64> = d
            .noise
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x))
            .filter(|&x| x > 0.0)
            .collect();
        sigmas.sort_by(f64::total_cmp);
        sigmas.dedup();
        let mut header = vec!["model".to_string(), "clipped".to_string()];
        header.extend(sigmas.iter().map(|s| format!("σ = {}", fmt_num(*s))));
        let rows = d
            .noise
            .iter()
            .map(|s| {
                let mut row = vec![
                    Cell::from(s.model.clone()),
                    if s.clip { "yes" } else { "no" }.into(),
                ];
                for x in &sigmas {
                    row.push(match s.points.iter().find(|p| p.x == *x) {
                        Some(p) => point_cell(p),
                        None => "—".into(),
                    });
                }
                row
            })
            .collect();
        b.push(Block::Table {
            header,
            rows,
            caption: Some(
                "Accuracy [95% CI] on test images plus N(0, σ²) noise, clipped to [0, 1] or not."
                    .into(),
            ),
        });
        if let Some(f) = figs.noise {
            b.push(figure(f, report_dir));
        }
    }

    // Masking checks.
    b.push(Block::Heading(2, "Gradient-masking checks".into()));
    if r.masking.is_empty() {
        b.push(Block::Para(
            "results.json has no gradient-masking checks.".into(),
        ));
    } else {
        b.push(Block::Para(format!(
            "{} of {} checks passed. A failed check is a symptom of gradient masking (an attack that does not work), not proof of robustness.",
            r.masking.len() - failed,
            r.masking.len()
        )));
        let mut rows: Vec<_> = r.masking.iter().collect();
        rows.sort_by_key(|m| m.passed);
        let rows = rows
            .into_iter()
            .map(|m| {
                vec![
                    Cell::from(m.model.clone()),
                    m.check.name().into(),
                    m.attack.clone().into(),
                    m.norm.to_string().into(),
                    if m.passed {
                        Cell::from("passed")
                    } else {
                        Cell::strong("FAILED")
                    },
                    m.detail.clone().into(),
                ]
            })
            .collect();
        b.push(Block::Table {
            header: ["model", "check", "attack", "norm", "result", "detail"]
                .map(String::from)
                .to_vec(),
            rows,
            caption: None,
        });
    }

    if !figs.perturbations.is_empty() || !figs.sweeps.is_empty() {
        b.push(Block::Heading(2, "Perturbations".into()));
        for f in figs.perturbations {
            b.push(figure(f, report_dir));
        }
        for f in figs.sweeps {
            b.push(figure(f, report_dir));
        }
    }

    if !notes.is_empty() {
        b.push(Block::Heading(2, "Notes".into()));
        b.push(Block::List(notes.to_vec()));
    }
    b
}
