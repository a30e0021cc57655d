//! One module per resource, each translating a parsed subcommand into
//! client calls and rendering the answer.
//!
//! Commands return their whole output as a `String` instead of printing:
//! the binary writes it in one place (where a closed pipe is handled), and
//! tests and future in-process callers can inspect it. Each module keeps
//! its renderers as plain functions of API types, so the human output is
//! unit-tested without a manager.

pub mod cluster;
pub mod disk;
pub mod group;
pub mod pool;
pub mod recovery;
pub mod server;
pub mod volume;

use vsky_api::Client;

use crate::args::Command;
use crate::error::CliError;

/// Runs one subcommand against the manager and returns what to print.
pub async fn run(command: &Command, client: &Client, json: bool) -> Result<String, CliError> {
    match command {
        Command::Cluster(cmd) => cluster::run(cmd, client, json).await,
        Command::Server(cmd) => server::run(cmd, client, json).await,
        Command::Disk(cmd) => disk::run(cmd, client, json).await,
        Command::Volume(cmd) => volume::run(cmd, client, json).await,
        Command::Group(cmd) => group::run(cmd, client, json).await,
        Command::Pool(cmd) => pool::run(cmd, client, json).await,
        Command::Rebuild(cmd) => recovery::rebuild(cmd, client, json).await,
        Command::Events {
            since,
            limit,
            follow,
        } => recovery::events(client, *since, limit.map(usize::from), *follow, json).await,
    }
}
