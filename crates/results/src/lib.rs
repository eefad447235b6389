//! The result records of gauntlet, declared once: what an evaluation returns, what the suite
//! and the single commands write (`results.json`, the CSV tables, job files) and what the
//! report reads. Serde only — no tensors — so a reader of results needs nothing heavier
//! (docs/results.md documents the files).
//!
//! - [`AttackRecord`]: one attack at one ε; [`RobustnessRow`] adds the model and the attack's
//!   name in its suite (a row of `robustness.csv` and of results.json's `robustness`).
//! - [`NoiseRecord`] / [`NoiseRow`]: accuracy under Gaussian noise of one σ.
//! - [`TransferRecord`]: examples crafted against one model, scored on another.
//! - [`MinNormExample`] / [`SecurityCurve`]: a minimum-norm attack's per-example distances and
//!   the robust accuracy at every ε they give.
//! - [`MaskingFlag`] / [`MaskingEntry`]: a gradient-masking check.
//! - [`Timed`]: a record with the wall time it took, kept out of the results files.
//! - [`write_table`]: a CSV table of chosen columns from any of them.

mod min_norm;
mod norm;
mod records;
mod stats;
mod table;

pub use min_norm::{
    curve_point, CurvePoint, CurvePointRow, Envelope, MinNormExample, Optimality, OptimalityRow,
    SecurityCurve, SecurityCurveRow, CURVE_COLUMNS, OPTIMALITY_COLUMNS, SECURITY_CURVE_COLUMNS,
};
pub use norm::Lp;
pub use records::{
    AttackKind, AttackRecord, MaskingCheck, MaskingEntry, MaskingFlag, MemberRecord, NoiseRecord,
    NoiseRow, Queries, RobustnessRow, Timed, TransferRecord, NOISE_COLUMNS, ROBUSTNESS_COLUMNS,
    TRANSFER_COLUMNS,
};
pub use stats::wilson_interval;
pub use table::{write_table, TableError};
