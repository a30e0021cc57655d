//! The `vsky` binary: parse the command line, run it, pick the exit status.
//!
//! Kept thin on purpose (the library does the work); the exit status of
//! every failure is decided here, from `CliError::exit_status`, and nowhere
//! else. Usage errors never get this far: clap prints them and exits 2.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use vsky_cli::args::Cli;
use vsky_cli::error::ExitStatus;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match vsky_cli::run(&cli) {
        Ok(text) => match vsky_cli::write_output(&mut io::stdout().lock(), &text) {
            Ok(()) => ExitStatus::Success,
            Err(e) => {
                report(&format!("cannot write output: {e}"));
                ExitStatus::Config
            }
        },
        Err(e) => {
            report(&e.to_string());
            e.exit_status()
        }
    };
    status.into()
}

/// Prints an error for people. `eprintln!` would panic if stderr were
/// closed; there is nowhere left to complain then, so the error is dropped.
fn report(message: &str) {
    let _ = writeln!(io::stderr().lock(), "vsky: error: {message}");
}
