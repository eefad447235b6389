//! Writing result files: JSON and CSV, always atomically.

use std::path::Path;

use anyhow::{Context, Result};
use gauntlet_models::io::write_atomic;
use serde::Serialize;

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The CSV table of `rows` with `columns` ([`gauntlet_results::write_table`]).
pub fn write_table<T: Serialize>(path: &Path, rows: &[T], columns: &[&str]) -> Result<()> {
    let bytes = gauntlet_results::write_table(rows, columns)
        .with_context(|| format!("writing {}", path.display()))?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    let bytes = writer.into_inner().context("flushing CSV")?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
