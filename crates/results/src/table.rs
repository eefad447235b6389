//! CSV tables of chosen columns from records that JSON holds whole (nested ones included,
//! which a CSV row cannot be).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Why a table could not be written: a row without one of the columns, or a column whose
/// value is not a scalar (both are bugs in the caller's column list, never bad data).
#[derive(Debug)]
pub struct TableError(String);

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TableError {}

/// The CSV text of `rows` with the header `columns` and, per row, those fields of its JSON
/// form in that order: numbers as JSON writes them (the shortest text that reads back the
/// same), `None` as an empty cell.
pub fn write_table<T: Serialize>(rows: &[T], columns: &[&str]) -> Result<Vec<u8>, TableError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| TableError(e.to_string());
    writer.write_record(columns).map_err(csv_error)?;
    for (i, row) in rows.iter().enumerate() {
        let value = serde_json::to_value(row).map_err(|e| TableError(e.to_string()))?;
        let mut cells = Vec::with_capacity(columns.len());
        for &column in columns {
            let cell = match value.get(column) {
                None => return Err(TableError(format!("row {i} has no field `{column}`"))),
                Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                Some(other) => {
                    return Err(TableError(format!(
                        "row {i}, field `{column}`: expected a scalar, got {other}"
                    )))
                }
            };
            cells.push(cell);
        }
        writer.write_record(&cells).map_err(csv_error)?;
    }
    writer
        .into_inner()
        .map_err(|e| TableError(e.into_error().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AttackKind, AttackRecord, Lp, NoiseRecord, NoiseRow, RobustnessRow, TransferRecord,
        NOISE_COLUMNS, ROBUSTNESS_COLUMNS, TRANSFER_COLUMNS,
    };

    #[derive(Serialize)]
    struct Flat {
        name: String,
        x: f64,
        k: usize,
        maybe: Option<f64>,
        on: bool,
    }

    #[test]
    fn cells_are_written_as_the_csv_crate_writes_the_same_struct() {
        let rows = [
            Flat {
                name: "a,b".into(),
                x: 0.1,
                k: 3,
                maybe: None,
                on: true,
            },
            Flat {
                name: "c".into(),
                x: 1e-7,
                k: 0,
                maybe: Some(2.0),
                on: false,
            },
        ];
        let mut direct = csv::Writer::from_writer(Vec::new());
        for row in &rows {
            direct.serialize(row).unwrap();
        }
        let direct = direct.into_inner().unwrap();
        let ours = write_table(&rows, &["name", "x", "k", "maybe", "on"]).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(direct).unwrap()
        );
    }

    #[test]
    fn a_missing_or_nested_column_is_an_error_naming_it() {
        let rows = [serde_json::json!({"a": 1, "b": [1, 2]})];
        let missing = write_table(&rows, &["a", "c"]).unwrap_err().to_string();
        assert!(missing.contains("`c`"), "{missing}");
        let nested = write_table(&rows, &["b"]).unwrap_err().to_string();
        assert!(
            nested.contains("`b`") && nested.contains("scalar"),
            "{nested}"
        );
    }

    #[test]
    fn every_declared_column_is_a_scalar_field_of_its_row() {
        let record = AttackRecord {
            method: "m".into(),
            kind: AttackKind::Ensemble,
            norm: Lp { p: 2.0 },
            eps: 0.5,
            n: 1,
            clean_correct: 1,
            clean_accuracy: 1.0,
            adversarial_correct: 0,
            adversarial_accuracy: 0.0,
            ci_low: 0.0,
            ci_high: 0.79,
            mean_perturbation: 0.5,
            max_perturbation: 0.5,
            mean_linf: 0.1,
            max_linf: 0.1,
            mean_l2: 0.5,
            max_l2: 0.5,
            mean_l1: 3.0,
            max_l1: 3.0,
            mistakes: 1,
            mean_confidence_on_mistakes: None,
            members: vec![crate::MemberRecord {
                attack: "a".into(),
                kind: AttackKind::Iterative,
                broken: 1,
            }],
            targeted_n: None,
            target_reached: None,
            constant_logits: true,
            queries: None,
        };
        let row = RobustnessRow {
            model: "x".into(),
            attack: "a".into(),
            record,
            seed: 0,
            spec: serde_json::json!({}),
            eps_written: None,
        };
        let text = String::from_utf8(write_table(&[row], ROBUSTNESS_COLUMNS).unwrap()).unwrap();
        assert_eq!(
            text.lines().nth(1).unwrap().split(',').count(),
            ROBUSTNESS_COLUMNS.len()
        );
        let noise = NoiseRow {
            model: "x".into(),
            record: NoiseRecord {
                sigma: 0.1,
                clip: true,
                seed: 1,
                n: 2,
                correct: 1,
                accuracy: 0.5,
                ci_low: 0.09,
                ci_high: 0.9,
                error: 0.5,
            },
        };
        write_table(&[noise], NOISE_COLUMNS).unwrap();
        let transfer = TransferRecord {
            source: "a".into(),
            target: "b".into(),
            attack: "pgd".into(),
            norm: Lp::LINF,
            eps: 0.1,
            n: 2,
            clean_correct: 2,
            adversarial_correct: 1,
            accuracy: 0.5,
            error: 0.5,
            ci_low: 0.09,
            ci_high: 0.9,
            target_mistakes: 1,
            mean_confidence_on_mistakes: Some(0.6),
            source_mistakes: 2,
            agreement: Some(0.5),
            agreement_when_both_wrong: Some(1.0),
        };
        let value = serde_json::to_value(&transfer).unwrap();
        assert_eq!(value.as_object().unwrap().len(), TRANSFER_COLUMNS.len());
        write_table(&[transfer], TRANSFER_COLUMNS).unwrap();
    }
}
