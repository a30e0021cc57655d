//! Model errors. Each variant is an expected outcome of bad input or a full
//! pool, never a broken invariant (those are `assert!`s). Every variant has a
//! stable machine code that the REST API returns verbatim, and a message that
//! says what to do next.

use thiserror::Error;

/// Coarse class of an error, which decides the HTTP status in one place
/// (the manager's error conversion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (400).
    BadInput,
    /// A named thing does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The pool cannot satisfy the request (507 Insufficient Storage).
    Capacity,
    /// Stored state is inconsistent: refuse to run on it (500).
    Corrupt,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{kind} '{key}' does not exist; list them with `vsky {cli} list`")]
    NotFound {
        kind: &'static str,
        cli: &'static str,
        key: String,
    },
    #[error("{kind} '{key}' already exists; pick another name or remove it first")]
    AlreadyExists { kind: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
    #[error("volume '{volume}' is attached to server '{server}'; detach it there first")]
    AttachedElsewhere { volume: String, server: String },
    #[error(
        "volume '{volume}' is being released by server '{server}', whose devices are not gone yet; try again once that server has torn them down, or, if '{server}' is dead or cut off, fence it with `vsky volume detach --force {volume}`"
    )]
    ReleasingElsewhere { volume: String, server: String },
    #[error(
        "server '{server}' runs its agent with --storage-only and cannot assemble volumes; attach on a server whose agent runs without --storage-only"
    )]
    StorageOnly { server: String },
    #[error(
        "{replicas} replicas need {replicas} servers with free chunks{class}, but only {eligible} have any; add servers or lower --replicas"
    )]
    NotEnoughServers {
        replicas: u8,
        eligible: usize,
        class: String,
    },
    #[error(
        "not enough free chunks{class} on distinct servers: the request needs {needed} chunks and {free} are free; add disks or servers, or delete volumes"
    )]
    NotEnoughChunks {
        needed: u64,
        free: u64,
        class: String,
    },
    #[error("stored cluster state is inconsistent: {0}")]
    Corrupt(String),
}

impl ModelError {
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        ModelError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ModelError::Invalid { .. } => ErrorKind::BadInput,
            ModelError::NotFound { .. } => ErrorKind::NotFound,
            ModelError::AlreadyExists { .. }
            | ModelError::Conflict(_)
            | ModelError::AttachedElsewhere { .. }
            | ModelError::ReleasingElsewhere { .. }
            | ModelError::StorageOnly { .. } => ErrorKind::Conflict,
            ModelError::NotEnoughServers { .. } | ModelError::NotEnoughChunks { .. } => {
                ErrorKind::Capacity
            }
            ModelError::Corrupt(_) => ErrorKind::Corrupt,
        }
    }

    /// The stable machine code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::Invalid { .. } => "invalid_argument",
            ModelError::NotFound { .. } => "not_found",
            ModelError::AlreadyExists { .. } => "already_exists",
            ModelError::Conflict(_) => "conflict",
            ModelError::AttachedElsewhere { .. } => "attached_elsewhere",
            ModelError::ReleasingElsewhere { .. } => "releasing_elsewhere",
            ModelError::StorageOnly { .. } => "storage_only",
            ModelError::NotEnoughServers { .. } => "not_enough_servers",
            ModelError::NotEnoughChunks { .. } => "not_enough_space",
            ModelError::Corrupt(_) => "store_corrupt",
        }
    }
}
