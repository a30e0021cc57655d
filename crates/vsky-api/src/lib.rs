//! The VastSky REST API v1 contract and its typed client.
//!
//! This crate is an API boundary: every type here is serialised on the wire,
//! so renaming a field is a breaking change. Requests refuse unknown fields
//! (a typo must not be silently ignored); responses may gain fields.
//!
//! - [`types`]: request and response bodies, with OpenAPI schemas.
//! - [`units`]: human sizes (`10GiB`) for the CLI and plugins.
//! - [`client`]: an async client used by the CLI, the agent and plugins.

pub mod client;
pub mod types;
pub mod units;

pub use client::{Client, ClientConfig, ClientError};

/// Path prefix of every v1 endpoint.
pub const API_PREFIX: &str = "/api/v1";

/// How much longer than other requests a client gives `POST
/// …/volumes/{name}/resize`: the manager answers the grow of an attached
/// volume once its head serves the new size, and waits up to
/// `vsky_model::limits::GROW_APPLY_WAIT_SECONDS` for that (a manager test
/// keeps this above it).
pub const RESIZE_EXTRA_WAIT: std::time::Duration = std::time::Duration::from_secs(75);

/// How much longer than other requests a client gives `POST
/// …/volumes/{name}/snapshot`: the snapshot of an attached volume is
/// answered once its head has switched the volume onto its new top, after
/// up to `vsky_model::limits::SNAPSHOT_SWITCH_WAIT_SECONDS`.
pub const SNAPSHOT_EXTRA_WAIT: std::time::Duration = std::time::Duration::from_secs(75);
