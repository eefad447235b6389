//! One module per subcommand.

mod attack;
mod eval;
mod noise;
mod report;
mod run;
mod train;
mod transfer;

use anyhow::Result;

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
    }
}
