//! Bearer-token authentication.
//!
//! Two token files are read at start-up: the admin file (full access) and
//! the agent file (agent endpoints only). Each non-empty line that is not a
//! `#` comment is one token, so tokens can be rotated by listing old and new
//! side by side. An agent line may be `SERVER-NAME TOKEN`, which binds the
//! token to that server: it can then register, heartbeat and read desired
//! state for that server only, so one leaked agent token does not expose
//! other servers' export secrets. A bound line may end in `storage-only`
//! (`SERVER-NAME TOKEN storage-only`): that token cannot make its server a
//! head, so it cannot attach volumes (whose legs' secrets a head learns)
//! and must register the server as storage-only.
//!
//! Tokens are compared in constant time and never logged.

use std::path::Path;

/// Who a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// An agent, bound to one server if its token line names one.
    Agent {
        server: Option<String>,
        /// The token line ends in `storage-only`: its server may not head
        /// volumes.
        storage_only: bool,
    },
    /// A metrics scraper: may read `/metrics` and nothing else.
    Metrics,
}

impl Principal {
    /// May this principal act for `server` on the agent endpoints?
    pub fn may_act_for(&self, server: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Agent { server: None, .. } => true,
            Principal::Agent {
                server: Some(s), ..
            } => s == server,
            Principal::Metrics => false,
        }
    }

    /// May this principal make its server a head: register it without
    /// `--storage-only`, attach volumes to it? Not with a `storage-only`
    /// agent token.
    pub fn may_head(&self) -> bool {
        !matches!(
            self,
            Principal::Agent {
                storage_only: true,
                ..
            }
        )
    }
}

/// The last word of an agent token line for a server that may not head
/// volumes.
const STORAGE_ONLY: &str = "storage-only";

/// Shortest token accepted; shorter ones are guessable.
const TOKEN_LEN_MIN: usize = 16;

#[derive(Clone, Default)]
pub struct Tokens {
    admin: Vec<Vec<u8>>,
    /// (bound server, storage-only, token)
    agents: Vec<(Option<String>, bool, Vec<u8>)>,
    metrics: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens {{ admin: {}, agents: {}, metrics: {} }}",
            self.admin.len(),
            self.agents.len(),
            self.metrics.len()
        )
    }
}

fn lines(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if lines.is_empty() {
        return Err(format!("token file {} holds no token", path.display()));
    }
    Ok(lines)
}

fn check_token(path: &Path, token: &str) -> Result<(), String> {
    if token.len() < TOKEN_LEN_MIN || token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "a token in {} is shorter than {TOKEN_LEN_MIN} characters or not printable ASCII; generate one with `head -c 32 /dev/urandom | base64`",
            path.display()
        ));
    }
    Ok(())
}

impl Tokens {
    pub fn load(admin_file: &Path, agent_file: Option<&Path>) -> Result<Self, String> {
        let mut tokens = Tokens::default();
        for line in lines(admin_file)? {
            check_token(admin_file, &line)?;
            tokens.admin.push(line.into_bytes());
        }
        if let Some(path) = agent_file {
            for line in lines(path)? {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (server, token, storage_only) = match fields[..] {
                    [token] => (None, token, false),
                    [server, token] => (Some(server.to_string()), token, false),
                    [server, token, STORAGE_ONLY] => (Some(server.to_string()), token, true),
                    _ => {
                        return Err(format!(
                            "a line of {} is neither `TOKEN`, `SERVER-NAME TOKEN` nor `SERVER-NAME TOKEN {STORAGE_ONLY}`",
                            path.display()
                        ));
                    }
                };
                check_token(path, token)?;
                tokens
                    .agents
                    .push((server, storage_only, token.as_bytes().to_vec()));
            }
        }
        Ok(tokens)
    }

    /// Adds the tokens of a metrics scraper (one per line, like the admin
    /// file): they may read `/metrics` only, so a Prometheus server holds
    /// no token that can change the cluster.
    pub fn with_metrics_file(mut self, path: &Path) -> Result<Self, String> {
        for line in lines(path)? {
            check_token(path, &line)?;
            self.metrics.push(line.into_bytes());
        }
        Ok(self)
    }

    /// Resolves a presented bearer token. Every stored token is compared,
    /// each in constant time, so the timing says nothing about which one
    /// (or how much of one) matched.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let presented = presented.as_bytes();
        let mut found = None;
        for t in &self.admin {
            if constant_time_eq(t, presented) && found.is_none() {
                found = Some(Principal::Admin);
            }
        }
        for (server, storage_only, t) in &self.agents {
            if constant_time_eq(t, presented) && found.is_none() {
                found = Some(Principal::Agent {
                    server: server.clone(),
                    storage_only: *storage_only,
                });
            }
        }
        for t in &self.metrics {
            if constant_time_eq(t, presented) && found.is_none() {
                found = Some(Principal::Metrics);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_admin_and_bound_agent_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        let agent = dir.path().join("agent");
        std::fs::write(&admin, "# admin\n\nadmin-token-0123456789\n").unwrap();
        std::fs::write(
            &agent,
            "any-agent-token-0123456789\nnode-a node-a-token-0123456789\n",
        )
        .unwrap();
        let t = Tokens::load(&admin, Some(&agent)).unwrap();
        assert_eq!(
            t.authenticate("admin-token-0123456789"),
            Some(Principal::Admin)
        );
        assert_eq!(
            t.authenticate("any-agent-token-0123456789"),
            Some(Principal::Agent {
                server: None,
                storage_only: false
            })
        );
        let bound = t.authenticate("node-a-token-0123456789").unwrap();
        assert!(bound.may_act_for("node-a") && !bound.may_act_for("node-b"));
        assert!(bound.may_head());
        assert_eq!(t.authenticate("admin-token-012345678"), None);
        assert_eq!(t.authenticate(""), None);
    }

    #[test]
    fn a_storage_only_agent_token_may_not_head() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        let agent = dir.path().join("agent");
        std::fs::write(&admin, "admin-token-0123456789\n").unwrap();
        std::fs::write(
            &agent,
            "node-a node-a-token-0123456789 storage-only\nnode-b\tnode-b-token-0123456789\n",
        )
        .unwrap();
        let t = Tokens::load(&admin, Some(&agent)).unwrap();
        let a = t.authenticate("node-a-token-0123456789").unwrap();
        assert!(a.may_act_for("node-a") && !a.may_act_for("node-b"));
        assert!(!a.may_head());
        assert!(
            t.authenticate("node-b-token-0123456789")
                .unwrap()
                .may_head()
        );
        assert!(t.authenticate("admin-token-0123456789").unwrap().may_head());
        for bad in [
            "node-a node-a-token-0123456789 head\n",
            "node-a node-a-token-0123456789 storage-only extra\n",
        ] {
            std::fs::write(&agent, bad).unwrap();
            let e = Tokens::load(&admin, Some(&agent)).unwrap_err();
            assert!(e.contains("SERVER-NAME TOKEN storage-only"), "{e}");
        }
    }

    #[test]
    fn refuses_weak_or_missing_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let weak = dir.path().join("weak");
        std::fs::write(&weak, "short\n").unwrap();
        assert!(Tokens::load(&weak, None).unwrap_err().contains("shorter"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        assert!(Tokens::load(&empty, None).unwrap_err().contains("no token"));
        assert!(
            Tokens::load(&dir.path().join("missing"), None)
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
