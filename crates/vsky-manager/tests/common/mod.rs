//! Test harness: a real `vsky-manager` process on loopback with its own
//! scratch directory, killed (SIGKILL) when dropped.

#![allow(dead_code)]

pub mod agents;
pub mod etcd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use vsky_api::{Client, ClientConfig};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const AGENT_TOKEN: &str = "agent-token-for-tests-0123456789";
pub const BOUND_AGENT_TOKEN: &str = "bound-agent-token-for-s0-012345";
/// Bound to server `s2`, marked `storage-only`: it may not make s2 a head.
pub const STORAGE_AGENT_TOKEN: &str = "storage-only-token-for-s2-01234";
pub const MIB: u64 = 1 << 20;
/// Small chunks keep tests fast: 8 MiB chunks, 7 MiB of data each.
pub const CHUNK: u64 = 8 * MIB;

pub struct ManagerProcess {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub extra_args: Vec<String>,
}

pub fn write_tokens(dir: &Path) {
    std::fs::write(dir.join("admin.token"), format!("# admin\n{ADMIN_TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("agent.tokens"),
        format!("{AGENT_TOKEN}\ns0 {BOUND_AGENT_TOKEN}\ns2 {STORAGE_AGENT_TOKEN} storage-only\n"),
    )
    .unwrap();
}

impl ManagerProcess {
    pub fn start(dir: &Path, extra_args: &[&str]) -> Self {
        write_tokens(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsky-manager"));
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--token-file")
            .arg(dir.join("admin.token"))
            .arg("--agent-token-file")
            .arg(dir.join("agent.tokens"))
            .args(extra_args)
            .env("RUST_LOG", "warn");
        let (child, url) = spawn_listening(cmd);
        ManagerProcess {
            child,
            url,
            dir: dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// SIGKILL, like a crash: no graceful shutdown, no flush.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(ClientConfig {
            manager_url: self.url.clone(),
            token: Some(token.to_string()),
            ..ClientConfig::default()
        })
        .unwrap()
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

/// Starts `vsky-manager` with `cmd`'s arguments on a free loopback port
/// and returns it with its URL, read from the `listening on …` line.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vsky-manager starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from vsky-manager: {line:?}"))
        .to_string();
    (child, url)
}

/// Registers `servers` servers with `disks` disks of `chunks` chunks each,
/// servers spread over `racks` racks.
pub async fn make_pool(client: &Client, servers: usize, disks: usize, chunks: u64, racks: usize) {
    use vsky_api::types::{CreateDisk, CreateServer};
    for s in 0..servers {
        let mut labels = std::collections::BTreeMap::new();
        if racks > 0 {
            labels.insert("rack".to_string(), format!("r{}", s % racks));
        }
        client
            .create_server(&CreateServer {
                name: format!("s{s}"),
                address: format!("127.0.0.1:{}", 20000 + s),
                labels,
            })
            .await
            .unwrap();
        for d in 0..disks {
            client
                .create_disk(&CreateDisk {
                    server: format!("s{s}"),
                    path: format!("/dev/vd{}", (b'b' + d as u8) as char),
                    size_bytes: MIB + chunks * CHUNK,
                    class: None,
                })
                .await
                .unwrap();
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written into
/// `dir`: the paths of its PEM chain and key (the chain is its own CA).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A plain create-volume request: default replicas, no stripe or class.
pub fn volume(name: &str, size: u64) -> vsky_api::types::CreateVolume {
    vsky_api::types::CreateVolume {
        name: name.into(),
        size_bytes: size,
        ..Default::default()
    }
}
