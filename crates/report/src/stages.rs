//! Two-stage training (a suite model's `continue`): per second stage, what each stage took
//! and what it gave, so a full-protocol number can be read beside the published one.

use crate::doc::{Block, Cell};
use crate::schema::{ModelResult, ResultsDir};
use crate::seeds::{discordant, mcnemar_exact, p_value_text};

fn hours(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s >= 3600.0 => format!("{:.2} h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{s:.0} s"),
        None => "—".into(),
    }
}

fn error_cell(m: &ModelResult) -> Cell {
    format!(
        "{:.2}% [{:.2}, {:.2}]",
        m.test_error * 100.0,
        (1.0 - m.test_ci_high) * 100.0,
        (1.0 - m.test_ci_low) * 100.0
    )
    .into()
}

fn epochs(m: &ModelResult) -> String {
    match (m.epochs_run, m.best_epoch) {
        (Some(run), Some(best)) if run != best => format!("{run} (kept {best})"),
        (Some(run), _) => run.to_string(),
        _ => "—".into(),
    }
}

/// The last epoch's mean training objective of `model`, from training.csv.
fn last_objective(data: &ResultsDir, model: &str) -> Option<f64> {
    data.training
        .as_ref()?
        .iter()
        .filter(|r| r.model == model)
        .max_by_key(|r| r.epoch)
        .map(|r| r.train_loss)
}

pub(crate) fn section(data: &ResultsDir, b: &mut Vec<Block>) {
    let models = &data.results.models;
    let pairs: Vec<(&ModelResult, &ModelResult)> = models
        .iter()
        .filter_map(|second| {
            let first = models
                .iter()
                .find(|m| Some(&m.name) == second.continues.as_ref())?;
            Some((first, second))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    b.push(Block::Heading(2, "Training stages".into()));
    let rows = pairs
        .iter()
        .map(|(first, second)| {
            let target = second
                .train
                .as_ref()
                .and_then(|t| t.get("stop-at-train-loss"))
                .and_then(|v| v.as_f64());
            let objective = match (target, last_objective(data, &second.name)) {
                (Some(t), Some(l)) => format!("{t:.4} → {l:.4}"),
                (Some(t), None) => format!("{t:.4} → —"),
                _ => "—".into(),
            };
            vec![
                Cell::from(second.name.clone()),
                first.name.clone().into(),
                epochs(first).into(),
                hours(data.training_seconds(&first.name)).into(),
                error_cell(first),
                epochs(second).into(),
                second
                    .stopped_by
                    .clone()
                    .unwrap_or_else(|| "—".into())
                    .into(),
                objective.into(),
                hours(data.training_seconds(&second.name)).into(),
                error_cell(second),
            ]
        })
        .collect();
    b.push(Block::Table {
        header: [
            "model",
            "stage 1",
            "stage-1 epochs",
            "stage-1 wall",
            "stage-1 test error [95% CI]",
            "stage-2 epochs",
            "stage 2 stopped by",
            "objective: target → last epoch",
            "stage-2 wall",
            "test error [95% CI]",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: Some("Stage 1 trains on the training split and keeps the epoch of lowest validation error (early stopping); stage 2 continues those weights on the training and validation splits together, at stage 1's learning rate and momentum of that epoch, until the epoch's mean training objective falls to stage 1's at that epoch (the target). Wall times are the training epochs' own, summed over resumed runs.".into()),
    });
    paired_tests(data, &pairs, b);
}

/// McNemar's exact test between every two second-stage models on the test set's per-example
/// correctness, where predictions.csv has their columns.
fn paired_tests(data: &ResultsDir, pairs: &[(&ModelResult, &ModelResult)], b: &mut Vec<Block>) {
    let Some(pred) = &data.predictions else {
        return;
    };
    let mut rows = Vec::new();
    for (i, (_, a)) in pairs.iter().enumerate() {
        for (_, c) in &pairs[i + 1..] {
            let Some((ac, ca)) = discordant(pred, &a.name, &c.name) else {
                continue;
            };
            rows.push(vec![
                Cell::from(format!("{} vs {}", a.name, c.name)),
                ac.to_string().into(),
                ca.to_string().into(),
                p_value_text(mcnemar_exact(ac, ca)).into(),
            ]);
        }
    }
    if rows.is_empty() {
        return;
    }
    b.push(Block::Table {
        header: ["pair (a vs b)", "only a right", "only b right", "McNemar exact p"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: Some("Paired tests between the second-stage models on the test split's per-example predictions (predictions.csv): the examples exactly one of the two classifies correctly, and the two-sided exact binomial p-value on them. One seed: a test of these weights, not of the training recipes.".into()),
    });
}
