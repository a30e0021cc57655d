//! A real `vsky-manager` process on loopback, killed when dropped.
//!
//! Cargo tells only the manager's own tests where its binary is
//! (`env!("CARGO_BIN_EXE_vsky-manager")`), so callers pass the path in.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use vsky_api::Client;

use crate::rest::client;
use crate::tokens::{ADMIN_TOKEN, write_tokens};

pub struct ManagerProcess {
    pub child: Child,
    pub url: String,
}

impl ManagerProcess {
    /// Starts `binary` on a redb store in `DIR/data`, with the kit's
    /// tokens (see [`crate::tokens`]) and `extra_args`, and waits until it
    /// listens.
    pub fn start(binary: impl AsRef<Path>, dir: &Path, extra_args: &[&str]) -> ManagerProcess {
        let tokens = write_tokens(dir);
        let mut cmd = Command::new(binary.as_ref());
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--token-file")
            .arg(&tokens.admin)
            .arg("--agent-token-file")
            .arg(&tokens.agents)
            .args(extra_args)
            .env("RUST_LOG", "warn");
        let (child, url) = spawn_listening(cmd);
        ManagerProcess { child, url }
    }

    /// SIGKILL, like a crash: no graceful shutdown, no flush.
    pub fn kill9(&mut self) {
        self.child.kill().expect("the manager can be killed");
        self.child.wait().expect("the manager is reaped");
    }

    pub fn client(&self, token: &str) -> Client {
        client(&self.url, token)
    }

    pub fn admin(&self) -> Client {
        self.client(ADMIN_TOKEN)
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the manager command `cmd` on a free loopback port and returns it
/// with its URL, read from its first line (`listening on …`). The caller
/// owns the child: kill it when done.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vsky-manager starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("reading vsky-manager's first line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from vsky-manager: {line:?}"))
        .to_string();
    (child, url)
}
