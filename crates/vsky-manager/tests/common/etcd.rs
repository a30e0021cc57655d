//! A real 3-member etcd cluster on loopback ports for the HA tests (Debian's
//! `etcd-server`, `/usr/bin/etcd`), and managers that use it.
//!
//! Members can be killed and restarted on the same data directory, which is
//! how quorum loss and recovery are tested. `EtcdCluster::start_tls` serves
//! the client port over TLS and requires client certificates, with a test
//! CA made by rcgen; peers stay on plain HTTP (not what is under test).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use vsky_api::{Client, ClientConfig};
use vsky_testkit::free_port;

use super::{ADMIN_TOKEN, AGENT_TOKEN, write_tokens};

/// The etcd binary, or `None` with a skip message. Under CI a missing etcd
/// fails the test instead: the suite must not pass by skipping.
pub fn etcd_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "etcd is not installed but CI is set: run scripts/install-deps (it installs etcd-server)"
            );
        }
        eprintln!(
            "SKIPPED: etcd is not installed; install Debian's etcd-server (scripts/install-deps) to run the HA tests"
        );
    }
    found
}

/// A PEM certificate and its private key.
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A throwaway certificate authority: its certificate is written as PEM,
/// its key stays in memory to sign more certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_file: PathBuf,
}

impl TestCa {
    /// A new self-signed CA, written to `DIR/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("vsky test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            cert_file,
        }
    }

    /// Issues a certificate for `names` (IP addresses become IP SANs) with
    /// the given uses, written to `DIR/NAME.pem` and `DIR/NAME-key.pem`.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        names: &[&str],
        uses: &[ExtendedKeyUsagePurpose],
    ) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = uses.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = CertFiles {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        files
    }

    /// A client certificate (client authentication only).
    pub fn issue_client(&self, dir: &Path, name: &str) -> CertFiles {
        self.issue(dir, name, &[], &[ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// The client-port TLS of a cluster from `EtcdCluster::start_tls`.
pub struct EtcdTls {
    /// Signs the members' and the client's certificates; the members trust
    /// client certificates it signed (etcd's --trusted-ca-file).
    pub ca: TestCa,
    /// The members' certificate, for 127.0.0.1.
    pub server: CertFiles,
    /// A client certificate the members accept.
    pub client: CertFiles,
}

impl EtcdTls {
    fn new(dir: &Path) -> EtcdTls {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new(dir, "etcd");
        // Client use too: etcd's JSON gateway dials its own client port
        // with the member's certificate, which --client-cert-auth checks.
        let server = ca.issue(
            dir,
            "etcd-server",
            &["127.0.0.1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let client = ca.issue_client(dir, "vsky-manager");
        EtcdTls { ca, server, client }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics`, reachable without a client
    /// certificate when the client port requires one.
    metrics_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    tls: Option<EtcdTls>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(binary: PathBuf, n: usize) -> EtcdCluster {
        Self::launch(binary, n, false)
    }

    /// Like `start`, but clients must use TLS and present a certificate
    /// signed by the cluster's CA (etcd's `--client-cert-auth`); see `tls`.
    pub fn start_tls(binary: PathBuf, n: usize) -> EtcdCluster {
        Self::launch(binary, n, true)
    }

    fn launch(binary: PathBuf, n: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            binary,
            token: format!("vsky-test-{}", dir.path().display()),
            tls: tls.then(|| EtcdTls::new(&dir.path().join("tls"))),
            dir,
            members,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The client port's certificates; panics unless started with
    /// `start_tls`.
    pub fn tls(&self) -> &EtcdTls {
        self.tls
            .as_ref()
            .expect("the cluster was started with start_tls")
    }

    /// This cluster's scratch directory (for more test certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client_scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let client_url = format!("{}://127.0.0.1:{}", self.client_scheme(), m.client_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        let mut cmd = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.cert_file)
                .arg("--key-file")
                .arg(&tls.server.key_file)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca.cert_file);
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", m.metrics_port))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--max-txn-ops", "4096"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    /// `etcd://…/PREFIX` over every member (`etcds://` with TLS).
    pub fn store_url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}/{prefix}", hosts.join(","))
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a killed member on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    fn healthy(port: u16) -> bool {
        let Ok(resp) = http_get(&format!("http://127.0.0.1:{port}/health")) else {
            return false;
        };
        resp.contains("\"health\":\"true\"")
    }

    /// Waits until every running member reports health (a quorum with a
    /// leader).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let all = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .all(|m| Self::healthy(m.metrics_port));
            if all {
                return;
            }
            if Instant::now() > deadline {
                let logs: String = self
                    .members
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                            .unwrap_or_default()
                    })
                    .collect();
                let tail: String = logs.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!("etcd did not become healthy within {within:?}; last log lines:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A tiny blocking GET over a raw socket (the tests need no extra HTTP
/// client for etcd's health endpoint).
fn http_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A `vsky-manager --store etcd://…` process, killed when dropped.
pub struct HaManager {
    pub child: Child,
    pub url: String,
    pub pid: u32,
}

/// The lease TTL the HA tests run with: short, so failover tests are fast.
pub const TEST_LEASE_TTL_SECONDS: u64 = 3;

/// A manager that did not start (see `HaManager::start_failing`).
pub struct FailedStart {
    pub status: ExitStatus,
    pub stderr: String,
}

impl HaManager {
    /// The command line of a manager on `store_url`, tokens in `dir`.
    fn command(dir: &Path, store_url: &str, extra: &[&str]) -> Command {
        write_tokens(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsky-manager"));
        cmd.arg("--store")
            .arg(store_url)
            .arg("--lease-ttl")
            .arg(TEST_LEASE_TTL_SECONDS.to_string())
            .arg("--token-file")
            .arg(dir.join("admin.token"))
            .arg("--agent-token-file")
            .arg(dir.join("agent.tokens"))
            .args(extra)
            .env("RUST_LOG", "warn,vsky_manager::leader=info");
        cmd
    }

    pub fn start(dir: &Path, store_url: &str, extra: &[&str]) -> HaManager {
        let (child, url) = super::spawn_listening(Self::command(dir, store_url, extra));
        let pid = child.id();
        HaManager { child, url, pid }
    }

    /// Starts a manager that is expected to give up: returns how it exited
    /// and what it wrote on stderr. Panics if it starts serving, or is
    /// still running after `within` (a hang must fail the test, not block
    /// it).
    pub fn start_failing(
        dir: &Path,
        store_url: &str,
        extra: &[&str],
        within: Duration,
    ) -> FailedStart {
        // Files, not pipes: nothing has to drain them while we wait.
        let out = tempfile::tempdir_in(dir).unwrap();
        let stdout = out.path().join("stdout");
        let stderr = out.path().join("stderr");
        let mut child = Self::command(dir, store_url, extra)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("vsky-manager starts");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vsky-manager {extra:?} was still running after {within:?}; stdout:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&stdout).unwrap_or_default(),
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&stdout).unwrap();
        let stderr = std::fs::read_to_string(&stderr).unwrap();
        assert!(
            !stdout.contains("listening on"),
            "vsky-manager {extra:?} started serving before it exited ({status}):\n{stdout}{stderr}"
        );
        FailedStart { status, stderr }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.pid);
    }

    /// One POST to this manager only (no failover, no following of a named
    /// leader): the status and the error code, if any.
    pub async fn post_raw(&self, path: &str, body: serde_json::Value) -> (u16, String, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = body["code"].as_str().unwrap_or_default().to_string();
        let message = body["message"].as_str().unwrap_or_default().to_string();
        (status, code, message)
    }

    /// A client of this manager first. It still follows a leader named in
    /// a `not_leader` answer; use `post_raw` to see the answer itself.
    pub fn direct(&self) -> Client {
        Client::new(ClientConfig {
            manager_url: self.url.clone(),
            token: Some(ADMIN_TOKEN.into()),
            ..ClientConfig::default()
        })
        .unwrap()
        .with_failover_wait(Duration::ZERO)
    }

    /// This manager's role from /health.
    pub async fn role(&self) -> Option<(String, Option<String>)> {
        let h = self.direct().health().await.ok()?;
        Some((h.role, h.leader))
    }
}

impl Drop for HaManager {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until continued.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A failover client over several managers.
pub fn client_of(managers: &[&HaManager]) -> Client {
    failover_client(managers, ADMIN_TOKEN)
}

/// A failover client over several managers with the (unbound) agent
/// token: what agents use to heartbeat to whichever manager leads.
pub fn agent_client_of(managers: &[&HaManager]) -> Client {
    failover_client(managers, AGENT_TOKEN)
}

fn failover_client(managers: &[&HaManager], token: &str) -> Client {
    let urls: Vec<&str> = managers.iter().map(|m| m.url.as_str()).collect();
    Client::new(ClientConfig {
        manager_url: urls.join(","),
        token: Some(token.into()),
        ..ClientConfig::default()
    })
    .unwrap()
}

/// Waits until `m` reports `role`; returns how long that took.
pub async fn wait_role(m: &HaManager, role: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((r, _)) = m.role().await
            && r == role
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} did not become {role} within {within:?}",
            m.url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
