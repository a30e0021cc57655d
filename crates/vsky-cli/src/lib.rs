//! `vsky`, the VastSky admin command line, as a library.
//!
//! The binary (`src/main.rs`) only parses arguments, calls [`run`] and maps
//! the result to an exit status; everything else lives here so that it is
//! unit-tested and can be driven in-process by end-to-end tests:
//!
//! - [`args`]: the clap grammar and `--help` texts; values are parsed into
//!   their final types (bytes, durations, label pairs) at parse time.
//! - [`config`]: global options and the token file into a `ClientConfig`.
//! - [`commands`]: one module per resource, translating a subcommand into
//!   `vsky_api::Client` calls and rendering the answer.
//! - [`render`]: tables, key/value blocks, sizes, JSON.
//! - [`error`]: the error type and its exit statuses, decided in one place.
//!
//! The CLI holds no cluster rules: what is allowed is the manager's
//! decision, and its error messages are printed as they are.

pub mod args;
pub mod commands;
pub mod config;
pub mod error;
pub mod render;

use std::io::{self, Write};

use vsky_api::Client;

use crate::args::Cli;
use crate::error::CliError;

/// Runs a parsed command line against the manager and returns the text to
/// print on stdout.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    let env_token = match std::env::var(config::TOKEN_ENV) {
        Ok(token) => Some(token),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(CliError::Config(format!(
                "{} is not valid UTF-8",
                config::TOKEN_ENV
            )));
        }
    };
    let config = config::client_config(&cli.global, env_token)?;
    // One request at a time needs no worker threads: a current-thread
    // runtime starts faster and keeps the process small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Config(format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(async {
        let client = Client::new(config)?;
        commands::run(&cli.command, &client, cli.global.json).await
    })
}

/// Writes the command's output. A reader that went away early (`vsky
/// volume list | head -1`) is not an error: the output was wanted only in
/// part, so this succeeds quietly like other Unix tools, instead of
/// panicking as `println!` would.
pub fn write_output(out: &mut impl Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    /// A writer on a full disk.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::StorageFull))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn broken_pipe_is_success_other_write_errors_are_not() {
        assert!(write_output(&mut ClosedPipe, "NAME\nv1\n").is_ok());
        assert!(write_output(&mut Full, "x").is_err());
        let mut buf = Vec::new();
        write_output(&mut buf, "a\n").unwrap();
        assert_eq!(buf, b"a\n");
    }
}
