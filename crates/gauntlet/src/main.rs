//! The `gauntlet` command line: train, evaluate and attack classifiers.

mod args;
mod commands;
mod config;
mod device;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

// Candle allocates a fresh buffer for every op; mimalloc made training steps 15-20% faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a failure after the command line was parsed (clap exits with 2 for usage
/// errors, before `main` sees the arguments).
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    // Candle attaches a backtrace to its errors when RUST_BACKTRACE is set, and their message
    // then prints it: library backtraces stay off (panics still honour RUST_BACKTRACE) unless
    // RUST_LIB_BACKTRACE asks for them. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Rust ignores SIGPIPE, so printing into a closed pipe (`gauntlet run --dry-run | head`)
    // would panic; end quietly instead, as other Unix tools do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = args::Cli::parse();
    // Before any other thread starts: the thread count is read from the environment.
    if let Err(err) = gauntlet_models::threads::init(cli.compute_threads()) {
        eprintln!("error: --threads: {err}");
        return ExitCode::from(FAILURE);
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(FAILURE)
        }
    }
}
