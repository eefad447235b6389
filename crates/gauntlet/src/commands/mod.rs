//! One module per subcommand.

mod attack;
mod eval;
mod noise;
mod prune;
mod report;
mod run;
mod single;
mod slurm;
mod train;
mod transfer;

use anyhow::{anyhow, Result};

use crate::args::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Attack(args) => attack::run(args),
        Command::Noise(args) => noise::run(args),
        Command::Transfer(args) => transfer::run(args),
        Command::Run(args) => run::run(args, false),
        Command::Merge(args) => run::run(args, true),
        Command::Report(args) => report::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Slurm(args) => slurm::run(args),
    }
}

/// Checks that every value of a budget flag (`--eps`, `--sigma`) is finite and non-negative.
fn check_budgets(flag: &str, values: &[f64]) -> Result<()> {
    gauntlet_attacks::check_budgets("values", values)
        .map_err(|(_, message)| anyhow!("{flag} {message}"))
}
