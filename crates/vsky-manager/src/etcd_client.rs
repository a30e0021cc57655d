//! A small blocking client of etcd's v3 API, through etcd's own JSON
//! gateway (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/*`,
//! `/v3/auth/authenticate`).
//!
//! Why the JSON gateway and not the gRPC `etcd-client` crate: the gateway is
//! part of every etcd v3 server (3.4 serves it under `/v3/`), so it needs no
//! protobuf compiler at build time and no tonic/prost stack to compile on
//! small build machines; the manager's `Store` trait is synchronous and runs
//! on tokio's blocking pool, which a blocking client fits exactly; and
//! `ureq` over rustls is already in the workspace (the SMAPIv3 plugins use
//! it). The four calls VastSky needs (range, txn, lease grant / keepalive /
//! revoke, authenticate) are plain JSON requests with base64 keys and
//! values; watches are not used (standbys poll, see `crate::leader`).
//!
//! Endpoints: several `host:port` members may be given. A request goes to
//! the member that last answered; when a member cannot be reached, the next
//! one is tried. A write is moved to another member only when it certainly
//! never left this process (connection refused), so an ambiguous write is
//! reported, never replayed blindly (replays are anyway guarded by revision
//! compares in the store).
//!
//! Size: about 850 lines, one concern: one blocking client of etcd's JSON
//! gateway (its config, errors and hints, encoding, TLS, endpoint failover,
//! and the calls); its tests are in `etcd_client/tests.rs`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
// The rustls that ureq runs on (the workspace has one), to read its TLS
// failures.
use tokio_rustls::rustls;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use vsky_sync::LockExt;

/// The largest answer we read (a full store range page is far smaller).
const BODY_MAX_BYTES: u64 = 64 << 20;

/// Where etcd is and how to log in: parsed from `--store etcd://…` and the
/// `--etcd-*` options.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Base URLs of the members, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix under which this cluster's keys live (e.g. `/vastsky`).
    pub prefix: String,
    /// PEM CA bundle that signs the members' certificates (`etcds://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for etcd's
    /// `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user (role-based auth) and a file holding its password.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The key prefix when the store URL names none.
pub const PREFIX_DEFAULT: &str = "/vastsky";

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` (plain HTTP) or
    /// `etcds://…` (TLS). Options are left unset.
    pub fn from_url(url: &str) -> Result<EtcdConfig, String> {
        let usage = "expected etcd://HOST:PORT[,HOST:PORT…][/PREFIX] (or etcds:// for TLS), e.g. etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379";
        let (scheme, rest) = if let Some(r) = url.strip_prefix("etcd://") {
            ("http", r)
        } else if let Some(r) = url.strip_prefix("etcds://") {
            ("https", r)
        } else {
            return Err(format!("'{url}' is not an etcd store URL; {usage}"));
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, PREFIX_DEFAULT),
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            PREFIX_DEFAULT
        } else {
            prefix
        };
        if prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
        {
            return Err(format!(
                "'{url}': the key prefix '{prefix}' may not hold spaces, '?' or '#'; {usage}"
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok || host.contains(['@', '/', ' ']) {
                return Err(format!(
                    "'{url}': '{host}' is not HOST:PORT (the port is required, etcd's client port is usually 2379); {usage}"
                ));
            }
            endpoints.push(format!("{scheme}://{host}"));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: prefix.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
            timeout: Duration::from_secs(5),
        })
    }

    fn tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member could be reached, or the exchange broke (including a
    /// failed TLS handshake, whose `hint` then names the TLS options).
    #[error("cannot reach etcd ({endpoints}): {detail}; {hint}")]
    Unreachable {
        endpoints: String,
        detail: String,
        hint: &'static str,
    },
    /// A member answered with an error.
    #[error("etcd at {endpoint} refused the request: {message}{hint}")]
    Server {
        endpoint: String,
        code: i64,
        message: String,
        hint: &'static str,
    },
    /// A member answered something that is not etcd's JSON.
    #[error("unexpected answer from etcd at {endpoint}: {detail}")]
    Decode { endpoint: String, detail: String },
    /// The configuration is unusable (bad CA file, unreadable password).
    #[error("{0}")]
    Config(String),
}

/// What to do when etcd says no, keyed on its messages (the gateway keeps
/// gRPC's message text, which is stable across 3.x releases).
fn hint_for(message: &str) -> &'static str {
    if message.contains("too many operations in txn request") {
        "; this change touches more records than etcd's --max-txn-ops allows: start every etcd member with a larger --max-txn-ops (e.g. 4096)"
    } else if message.contains("request is too large") {
        "; raise --max-request-bytes on every etcd member"
    } else if message.contains("permission denied") || message.contains("user name is empty") {
        "; give the etcd user read/write access to the store prefix (etcdctl role grant-permission --prefix)"
    } else if message.contains("authentication failed") {
        "; check --etcd-user and --etcd-password-file"
    } else if message.contains("no leader")
        || message.contains("timed out")
        || message.contains("leader changed")
    {
        "; etcd has no quorum right now: bring enough members back, the manager retries"
    } else {
        ""
    }
}

/// One key-value pair as etcd reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

#[derive(Clone, Debug, Default)]
pub struct RangeResponse {
    /// The store revision the answer reflects.
    pub revision: i64,
    pub kvs: Vec<Kv>,
    /// True when `limit` cut the answer short.
    pub more: bool,
    pub count: i64,
}

#[derive(Clone, Debug, Default)]
pub struct TxnResponse {
    /// The store revision after the transaction (its own, if it wrote).
    pub revision: i64,
    pub succeeded: bool,
    /// One entry per operation of the branch that ran; ranges carry their
    /// key-values, puts and deletes an empty list.
    pub ranges: Vec<Vec<Kv>>,
}

/// A transaction guard.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's mod revision equals this (0: the key does not exist).
    ModRevision(Vec<u8>, i64),
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    /// The key is attached to this lease (a missing key has lease 0).
    Lease(Vec<u8>, i64),
}

/// A transaction operation.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(Vec<u8>),
    Get(Vec<u8>),
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

impl Compare {
    fn to_json(&self) -> Value {
        match self {
            Compare::ModRevision(k, r) => {
                json!({"result": "EQUAL", "target": "MOD", "key": b64(k), "mod_revision": r.to_string()})
            }
            Compare::CreateRevision(k, r) => {
                json!({"result": "EQUAL", "target": "CREATE", "key": b64(k), "create_revision": r.to_string()})
            }
            Compare::Lease(k, l) => {
                json!({"result": "EQUAL", "target": "LEASE", "key": b64(k), "lease": l.to_string()})
            }
        }
    }
}

impl Op {
    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                let mut put = json!({"key": b64(key), "value": b64(value)});
                if *lease != 0 {
                    put["lease"] = json!(lease.to_string());
                }
                json!({ "request_put": put })
            }
            Op::Delete(k) => json!({"request_delete_range": {"key": b64(k)}}),
            Op::Get(k) => json!({"request_range": {"key": b64(k)}}),
        }
    }
}

/// etcd's JSON renders 64-bit integers as strings; accept both forms, and
/// a missing field as 0 (the gateway omits default values).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes(v: &Value, endpoint: &str) -> Result<Vec<u8>, EtcdError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64.decode(s).map_err(|e| EtcdError::Decode {
            endpoint: endpoint.to_string(),
            detail: format!("bad base64 in a key or value: {e}"),
        }),
        other => Err(EtcdError::Decode {
            endpoint: endpoint.to_string(),
            detail: format!("expected a base64 string, got {other}"),
        }),
    }
}

fn kvs(v: &Value, endpoint: &str) -> Result<Vec<Kv>, EtcdError> {
    let Some(list) = v.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|kv| {
            Ok(Kv {
                key: bytes(&kv["key"], endpoint)?,
                value: bytes(&kv["value"], endpoint)?,
                create_revision: int(&kv["create_revision"]),
                mod_revision: int(&kv["mod_revision"]),
                lease: int(&kv["lease"]),
            })
        })
        .collect()
}

/// The smallest key greater than every key starting with `prefix`, as a
/// range end ("all keys with this prefix").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// True when a request certainly never reached the server, so another
/// member may be tried without risking a duplicate write.
fn never_sent(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable | ErrorKind::NotFound
        ),
        _ => false,
    }
}

/// What to do when no member answers and TLS is not the reason.
const UNREACHABLE_HINT: &str = "check --store and that a quorum of etcd members is up";

/// The TLS failure behind a transport error, if that is what it is:
/// rustls reports a certificate it refuses, and the alert a member sends
/// when it refuses ours, inside an `io::Error`.
fn tls_failure(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// What to do about a TLS failure, in terms of the options that fix it:
/// these are configuration mistakes, and the generic "is a quorum up?"
/// would send the operator to look at the wrong thing.
fn tls_hint(e: &rustls::Error, ca_file: bool, client_cert: bool) -> &'static str {
    use rustls::AlertDescription as Alert;
    match e {
        rustls::Error::InvalidCertificate(_) if !ca_file => {
            "the etcd member's certificate is not signed by a CA this host trusts: give --etcd-ca-file, the CA that signed etcd's --cert-file"
        }
        rustls::Error::InvalidCertificate(_) => {
            "the etcd member's certificate is not trusted: --etcd-ca-file must hold the CA that signed etcd's --cert-file, and that certificate must name the host in --store and be valid now"
        }
        // Alerts a member sends when it refuses our certificate (Go's TLS
        // sends bad_certificate; newer Go certificate_required).
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => {
            if client_cert {
                "etcd refused the client certificate in --etcd-cert-file: it must be signed by a CA in etcd's --trusted-ca-file, allow client authentication and be valid now"
            } else {
                "etcd requires a client certificate (it runs with --client-cert-auth): give --etcd-cert-file and --etcd-key-file"
            }
        }
        _ => {
            "check that the etcd members serve TLS on these ports (etcd's --cert-file and --key-file), and --etcd-ca-file, --etcd-cert-file and --etcd-key-file"
        }
    }
}

/// A connection the member closed under us. Over TLS 1.3 this is how a
/// refused client certificate often shows: the client's side of the
/// handshake ends when it sends its certificate, so it writes the request
/// at once, and the member's close after its alert breaks that write.
fn closed_by_peer(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    ))
}

/// What to do when a TLS member closed the connection: the certificate
/// the member may have refused, or the usual check.
fn closed_tls_hint(client_cert: bool) -> &'static str {
    if client_cert {
        "the etcd member closed the TLS connection: if it refused the client certificate in --etcd-cert-file, that must be signed by a CA in etcd's --trusted-ca-file, allow client authentication and be valid now; if not, check --store and that a quorum of etcd members is up"
    } else {
        "the etcd member closed the TLS connection: if etcd runs with --client-cert-auth, give --etcd-cert-file and --etcd-key-file; if not, check --store and that a quorum of etcd members is up"
    }
}

/// Whether a request may go to another member after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and lease calls: any member, on any transport failure.
    Anywhere,
    /// Writes: only when the request certainly never left.
    NeverSent,
}

pub struct EtcdClient {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    /// The member that answered last; requests start there.
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    /// Whether --etcd-ca-file and --etcd-cert-file were given, to say what
    /// to do about a TLS failure.
    has_ca_file: bool,
    has_client_cert: bool,
    /// The auth token from `/v3/auth/authenticate` (simple tokens expire
    /// after etcd's `--auth-token-ttl`; a refusal refreshes it once).
    token: Mutex<Option<String>>,
    timeout: Duration,
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path)
        .map_err(|e| EtcdError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn tls_config(config: &EtcdConfig) -> Result<TlsConfig, EtcdError> {
    let mut builder = TlsConfig::builder();
    if let Some(path) = &config.ca_file {
        let pem = read_pem(path, "--etcd-ca-file")?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(EtcdError::Config(format!(
                "--etcd-ca-file {} holds no PEM certificate",
                path.display()
            )));
        }
        builder = builder.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_pem(cert, "--etcd-cert-file")?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                return Err(EtcdError::Config(format!(
                    "--etcd-cert-file {} holds no PEM certificate",
                    cert.display()
                )));
            }
            let key_pem = read_pem(key, "--etcd-key-file")?;
            let key = PrivateKey::from_pem(&key_pem).map_err(|e| {
                EtcdError::Config(format!(
                    "--etcd-key-file {} holds no usable PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::Config(
                "--etcd-cert-file and --etcd-key-file go together".into(),
            ));
        }
    }
    Ok(builder.build())
}

impl EtcdClient {
    pub fn new(config: &EtcdConfig) -> Result<EtcdClient, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint given".into()));
        }
        let tls_files =
            config.ca_file.is_some() || config.cert_file.is_some() || config.key_file.is_some();
        if tls_files && !config.tls() {
            return Err(EtcdError::Config(
                "--etcd-ca-file, --etcd-cert-file and --etcd-key-file need TLS: write the store as etcds://…".into(),
            ));
        }
        let credentials = match (&config.user, &config.password_file) {
            (Some(user), Some(path)) => {
                let password = std::fs::read_to_string(path).map_err(|e| {
                    EtcdError::Config(format!(
                        "cannot read --etcd-password-file {}: {e}",
                        path.display()
                    ))
                })?;
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                if password.is_empty() {
                    return Err(EtcdError::Config(format!(
                        "--etcd-password-file {} is empty",
                        path.display()
                    )));
                }
                Some((user.clone(), password))
            }
            (None, None) => None,
            _ => {
                return Err(EtcdError::Config(
                    "--etcd-user and --etcd-password-file go together".into(),
                ));
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(2))))
            .max_redirects(0)
            .user_agent(concat!("vsky-manager/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(config)?)
            .build()
            .into();
        Ok(EtcdClient {
            agent,
            endpoints: config.endpoints.clone(),
            current: AtomicUsize::new(0),
            credentials,
            has_ca_file: config.ca_file.is_some(),
            has_client_cert: config.cert_file.is_some(),
            token: Mutex::new(None),
            timeout: config.timeout,
        })
    }

    /// The error for a request `endpoints` gave no answer to.
    fn unreachable(&self, endpoints: &str, e: &ureq::Error) -> EtcdError {
        let (detail, hint) = match tls_failure(e) {
            Some(tls) => (
                format!("TLS handshake failed: {tls}"),
                tls_hint(tls, self.has_ca_file, self.has_client_cert),
            ),
            None if endpoints.starts_with("https://") && closed_by_peer(e) => {
                (e.to_string(), closed_tls_hint(self.has_client_cert))
            }
            None => (e.to_string(), UNREACHABLE_HINT),
        };
        EtcdError::Unreachable {
            endpoints: endpoints.to_string(),
            detail,
            hint,
        }
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// One POST to one member: the HTTP status and the body.
    fn exchange(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, String), ureq::Error> {
        let mut req = self
            .agent
            .post(format!("{endpoint}{path}"))
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let mut resp = req.send_json(body)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_MAX_BYTES)
            .read_to_string()?;
        Ok((status, text))
    }

    fn token(&self, endpoint: &str, timeout: Duration) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.credentials else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock_unpoisoned().clone() {
            return Ok(Some(t));
        }
        let body = json!({"name": user, "password": password});
        let answer = match self.exchange(endpoint, "/v3/auth/authenticate", &body, None, timeout) {
            Ok(a) => a,
            Err(e) => return Err(self.unreachable(endpoint, &e)),
        };
        let v = parse_answer(endpoint, answer)?;
        let token = v["token"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            return Err(EtcdError::Config(format!(
                "etcd at {endpoint} granted no auth token to user '{user}'; is authentication enabled (etcdctl auth enable)?"
            )));
        }
        *self.token.lock_unpoisoned() = Some(token.clone());
        Ok(Some(token))
    }

    fn forget_token(&self) {
        *self.token.lock_unpoisoned() = None;
    }

    /// Sends one request, moving to the next member when allowed.
    fn call(
        &self,
        path: &str,
        body: &Value,
        retry: Retry,
        timeout: Option<Duration>,
    ) -> Result<Value, EtcdError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (start + i) % n;
            let endpoint = &self.endpoints[index];
            let token = match self.token(endpoint, timeout) {
                Ok(t) => t,
                Err(e @ EtcdError::Unreachable { .. }) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut answer = self.exchange(endpoint, path, body, token.as_deref(), timeout);
            if let Ok((status, text)) = &answer
                && *status != 200
                && token.is_some()
                && text.contains("auth token")
            {
                // An expired simple token: log in again once.
                self.forget_token();
                let token = self.token(endpoint, timeout)?;
                answer = self.exchange(endpoint, path, body, token.as_deref(), timeout);
            }
            match answer {
                Ok(answer) => {
                    let result = parse_answer(endpoint, answer);
                    let unavailable = matches!(&result, Err(EtcdError::Server { code: 14, .. }));
                    if unavailable && retry == Retry::Anywhere && i + 1 < n {
                        // This member is cut off from the quorum; another
                        // may not be.
                        last = result.err();
                        continue;
                    }
                    if result.is_ok() {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return result;
                }
                Err(e) => {
                    let err = self.unreachable(endpoint, &e);
                    if retry == Retry::NeverSent && !never_sent(&e) {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(match last {
            Some(EtcdError::Unreachable { detail, hint, .. }) => EtcdError::Unreachable {
                endpoints: self.endpoints(),
                detail,
                hint,
            },
            Some(other) => other,
            None => EtcdError::Config("no etcd endpoint given".into()),
        })
    }

    /// Reads `[key, range_end)` (or just `key`), at `revision` if given
    /// (0: the latest), at most `limit` keys (0: all).
    pub fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        revision: i64,
        limit: i64,
    ) -> Result<RangeResponse, EtcdError> {
        let mut body = json!({"key": b64(key)});
        if let Some(end) = range_end {
            body["range_end"] = json!(b64(end));
        }
        if revision > 0 {
            body["revision"] = json!(revision.to_string());
        }
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        let v = self.call("/v3/kv/range", &body, Retry::Anywhere, None)?;
        let endpoint = self.current_endpoint();
        Ok(RangeResponse {
            revision: int(&v["header"]["revision"]),
            kvs: kvs(&v, &endpoint)?,
            more: v["more"].as_bool().unwrap_or(false),
            count: int(&v["count"]),
        })
    }

    /// Counts the keys in `[key, range_end)`.
    pub fn count(&self, key: &[u8], range_end: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({"key": b64(key), "range_end": b64(range_end), "count_only": true});
        let v = self.call("/v3/kv/range", &body, Retry::Anywhere, None)?;
        Ok(int(&v["count"]))
    }

    /// One atomic transaction: if every `compare` holds, `success` runs,
    /// otherwise `failure`. Writes are never replayed on another member
    /// unless they certainly never left (see the module docs).
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, EtcdError> {
        let writes = success
            .iter()
            .chain(failure)
            .any(|op| !matches!(op, Op::Get(_)));
        let body = json!({
            "compare": compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        });
        let retry = if writes {
            Retry::NeverSent
        } else {
            Retry::Anywhere
        };
        let v = self.call("/v3/kv/txn", &body, retry, None)?;
        let endpoint = self.current_endpoint();
        let mut ranges = Vec::new();
        if let Some(responses) = v["responses"].as_array() {
            for r in responses {
                ranges.push(match r.get("response_range") {
                    Some(range) => kvs(range, &endpoint)?,
                    None => Vec::new(),
                });
            }
        }
        Ok(TxnResponse {
            revision: int(&v["header"]["revision"]),
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            ranges,
        })
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1); returns its id.
    pub fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let body = json!({"TTL": ttl.as_secs().max(1).to_string()});
        let v = self.call("/v3/lease/grant", &body, Retry::Anywhere, None)?;
        let id = int(&v["ID"]);
        if id == 0 {
            return Err(EtcdError::Decode {
                endpoint: self.current_endpoint(),
                detail: format!("lease grant answered no lease id: {v}"),
            });
        }
        Ok(id)
    }

    /// Refreshes a lease; returns its remaining TTL in seconds, 0 when the
    /// lease no longer exists (expired or revoked).
    pub fn lease_keepalive(&self, id: i64, timeout: Duration) -> Result<i64, EtcdError> {
        let body = json!({"ID": id.to_string()});
        let v = self.call("/v3/lease/keepalive", &body, Retry::Anywhere, Some(timeout))?;
        // A streamed answer: `{"result": {...}}`, or an error object.
        if let Some(err) = v.get("error") {
            return Err(EtcdError::Server {
                endpoint: self.current_endpoint(),
                code: int(&err["grpc_code"]),
                message: err["message"]
                    .as_str()
                    .unwrap_or("keepalive failed")
                    .to_string(),
                hint: "",
            });
        }
        Ok(int(&v["result"]["TTL"]))
    }

    /// Revokes a lease, deleting every key attached to it. A lease that is
    /// already gone is not an error.
    pub fn lease_revoke(&self, id: i64, timeout: Duration) -> Result<(), EtcdError> {
        let body = json!({"ID": id.to_string()});
        match self.call("/v3/lease/revoke", &body, Retry::Anywhere, Some(timeout)) {
            Ok(_) => Ok(()),
            Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn current_endpoint(&self) -> String {
        self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()].clone()
    }
}

/// Decodes one gateway answer: JSON on 200, etcd's error object otherwise.
fn parse_answer(endpoint: &str, (status, text): (u16, String)) -> Result<Value, EtcdError> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| EtcdError::Decode {
        endpoint: endpoint.to_string(),
        detail: format!(
            "HTTP {status}, not JSON ({e}): {}",
            text.chars().take(200).collect::<String>()
        ),
    })?;
    if status == 200 && v.get("error").is_none_or(|e| e.get("message").is_none()) {
        return Ok(v);
    }
    let (code, message) = match v.get("error") {
        // Streamed calls (keepalive) wrap errors: {"error": {"grpc_code", "message"}}.
        Some(Value::Object(e)) => (
            int(e.get("grpc_code").unwrap_or(&Value::Null)),
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        _ => (
            int(&v["code"]),
            v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("unknown error")
                .to_string(),
        ),
    };
    Err(EtcdError::Server {
        endpoint: endpoint.to_string(),
        code,
        hint: hint_for(&message),
        message,
    })
}

#[cfg(test)]
mod tests;
