//! The tokens every test manager accepts, and the files that hold them.

use std::path::{Path, PathBuf};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// Unbound: any server's agent may use it.
pub const AGENT_TOKEN: &str = "agent-token-for-tests-0123456789";
/// Bound to server `s0`.
pub const BOUND_AGENT_TOKEN: &str = "bound-agent-token-for-s0-012345";
/// Bound to server `s2`, marked `storage-only`: it may not make s2 a head.
pub const STORAGE_AGENT_TOKEN: &str = "storage-only-token-for-s2-01234";

/// The token files in a manager's directory.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    /// `--token-file`: [`ADMIN_TOKEN`].
    pub admin: PathBuf,
    /// `--agent-token-file`: the agent tokens above.
    pub agents: PathBuf,
}

/// Writes `DIR/admin.token` and `DIR/agent.tokens` (overwriting them).
pub fn write_tokens(dir: &Path) -> TokenFiles {
    let files = TokenFiles {
        admin: dir.join("admin.token"),
        agents: dir.join("agent.tokens"),
    };
    std::fs::write(&files.admin, format!("# admin\n{ADMIN_TOKEN}\n")).expect("writing admin.token");
    std::fs::write(
        &files.agents,
        format!("{AGENT_TOKEN}\ns0 {BOUND_AGENT_TOKEN}\ns2 {STORAGE_AGENT_TOKEN} storage-only\n"),
    )
    .expect("writing agent.tokens");
    files
}
