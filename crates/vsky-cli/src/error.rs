//! The CLI's error type and the one place that maps errors to exit codes.
//!
//! Scripts around `vsky` need to tell "the manager said no" (fix the
//! request) from "the manager is not there" (retry later, check the
//! network) from "this machine is misconfigured" (fix the token or CA
//! file). So every failure is classified here once, and `main` only asks
//! [`CliError::exit_status`]. Usage errors found by clap exit with clap's own
//! status 2, which [`ExitStatus::Usage`] mirrors for the few usage checks
//! that can only run after parsing.

use std::fmt;

use vsky_api::ClientError;

/// The process exit statuses of `vsky`, documented in `vsky --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    Success = 0,
    /// The manager answered with an error (4xx/5xx).
    Manager = 1,
    /// Bad command line (clap's own status for usage errors).
    Usage = 2,
    /// The manager could not be reached, or the connection broke.
    Transport = 3,
    /// Local configuration or environment: unreadable token or CA file,
    /// bad manager URL, stdout not writable (other than a closed pipe).
    Config = 4,
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status as u8)
    }
}

#[derive(Debug)]
pub enum CliError {
    /// Anything the API client reports.
    Client(ClientError),
    /// A local configuration problem found by the CLI itself.
    Config(String),
    /// A usage problem only visible after parsing (e.g. a repeated label).
    Usage(String),
    /// A `--wait` ran out of time before the operation finished.
    WaitTimedOut(String),
    /// What a `--wait` watched ended without completing: a planned move
    /// failed, or a drain was stopped.
    Incomplete(String),
}

impl CliError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            CliError::Client(ClientError::Api { .. }) => ExitStatus::Manager,
            CliError::Client(ClientError::Transport { .. }) => ExitStatus::Transport,
            // A gateway error page means a proxy in front of the manager could
            // not reach it: that is "cannot reach", worth a retry, not a refusal.
            CliError::Client(ClientError::Decode {
                status: 502..=504, ..
            }) => ExitStatus::Transport,
            // Anything else undecodable still came from an HTTP server that
            // answered; most likely a wrong URL or a version mismatch, which
            // retrying will not fix.
            CliError::Client(ClientError::Decode { .. }) => ExitStatus::Manager,
            CliError::Client(ClientError::Config(_)) | CliError::Config(_) => ExitStatus::Config,
            CliError::Usage(_) => ExitStatus::Usage,
            // Like a refusal: the cluster did not get there (in time).
            CliError::WaitTimedOut(_) | CliError::Incomplete(_) => ExitStatus::Manager,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // ClientError's Display already carries the manager's code and
            // HTTP status in brackets, and the transport hint.
            CliError::Client(e) => {
                write!(f, "{e}")?;
                // reqwest's own message ("error sending request") hides why;
                // the innermost cause ("Connection refused", "operation timed
                // out", a certificate complaint) is what the admin can act on.
                if let ClientError::Transport { source, .. } = e {
                    let mut root: Option<&dyn std::error::Error> = None;
                    let mut next = std::error::Error::source(source);
                    while let Some(cause) = next {
                        root = Some(cause);
                        next = cause.source();
                    }
                    if let Some(root) = root {
                        write!(f, " (cause: {root})")?;
                    }
                }
                Ok(())
            }
            CliError::Config(msg)
            | CliError::Usage(msg)
            | CliError::WaitTimedOut(msg)
            | CliError::Incomplete(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Client(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_errors_exit_1_with_the_code_in_brackets() {
        let e = CliError::from(ClientError::Api {
            status: 409,
            code: "conflict".into(),
            message: "volume v1 is attached to n1; detach it first".into(),
        });
        assert_eq!(e.exit_status(), ExitStatus::Manager);
        assert_eq!(
            e.to_string(),
            "volume v1 is attached to n1; detach it first [conflict, HTTP 409]"
        );
        let e = CliError::from(ClientError::Api {
            status: 500,
            code: "internal".into(),
            message: "x".into(),
        });
        assert_eq!(e.exit_status(), ExitStatus::Manager);
    }

    #[test]
    fn undecodable_answers_split_between_gateway_and_manager() {
        let decode = |status| {
            CliError::from(ClientError::Decode {
                url: "http://m/api/v1/volumes".into(),
                status,
                detail: "x".into(),
            })
        };
        assert_eq!(decode(502).exit_status(), ExitStatus::Transport);
        assert_eq!(decode(503).exit_status(), ExitStatus::Transport);
        assert_eq!(decode(504).exit_status(), ExitStatus::Transport);
        assert_eq!(decode(404).exit_status(), ExitStatus::Manager);
        assert_eq!(decode(200).exit_status(), ExitStatus::Manager);
    }

    #[test]
    fn local_problems_exit_4_and_usage_2() {
        assert_eq!(
            CliError::from(ClientError::Config("bad URL".into())).exit_status(),
            ExitStatus::Config
        );
        assert_eq!(
            CliError::Config("cannot read token file".into()).exit_status(),
            ExitStatus::Config
        );
        assert_eq!(
            CliError::Usage("label given twice".into()).exit_status(),
            ExitStatus::Usage
        );
        assert_eq!(
            CliError::Incomplete("1 of 3 moves failed".into()).exit_status(),
            ExitStatus::Manager
        );
    }

    #[test]
    fn statuses_have_the_documented_numbers() {
        assert_eq!(ExitStatus::Success as u8, 0);
        assert_eq!(ExitStatus::Manager as u8, 1);
        assert_eq!(ExitStatus::Usage as u8, 2);
        assert_eq!(ExitStatus::Transport as u8, 3);
        assert_eq!(ExitStatus::Config as u8, 4);
    }
}
