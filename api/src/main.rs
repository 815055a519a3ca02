//! `lisledger`: the LIS Ledger binary.
//!
//! Subcommands: `db init` (roles and database, as a superuser), `migrate` (as the owner
//! role), `catalogue import FILE.csv`, `audit verify` / `audit prove`, `relay`,
//! `project [NAME…]`, `projections rebuild NAME`, `seal keygen`, `bench`.
//! Configuration: [`config::Config`].

/// Prints a line for the operator; a closed pipe (`lisledger audit verify | head -1`) is
/// not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod cli;
mod demo;
mod mix;
mod ops;

use lis_api::config;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Args::parse();
    let config = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lisledger: {e}");
            return ExitCode::from(2);
        }
    };
    cli::init_tracing(config.log_format);
    match cli::run(args, config).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "lisledger failed");
            eprintln!("lisledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}
