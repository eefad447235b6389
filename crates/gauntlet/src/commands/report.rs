//! `gauntlet report`: figures and documents from a results folder.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use gauntlet_report::write_report;

use crate::args::ReportArgs;

pub fn run(args: ReportArgs) -> Result<()> {
    let out = match args.out {
        Some(dir) => dir,
        None => {
            let name = args.results.file_name().ok_or_else(|| {
                anyhow!(
                    "{}: expected a results folder such as results/quickstart",
                    args.results.display()
                )
            })?;
            PathBuf::from("report").join(name)
        }
    };
    let summary = write_report(&args.results, &out)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} figures, {} and {}",
        summary.figures.len(),
        summary.report_md.display(),
        summary.index_html.display()
    );
    Ok(())
}
