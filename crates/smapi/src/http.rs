//! A small blocking JSON-over-HTTP(S) client for the manager's REST API
//! and the agent's local API.
//!
//! Why not the async `vsky_api::Client`: a plugin call is one short-lived
//! process doing one to three requests, and starting a tokio runtime plus
//! reqwest's connection machinery per call costs start-up time for no
//! benefit. `ureq` (blocking, rustls) does exactly this job.
//!
//! Several base URLs may be given (an HA manager's members): a request goes
//! to the first one that accepts a connection. Only connection set-up
//! failures move on to the next URL; once a request may have reached a
//! manager it is never replayed elsewhere, so a create cannot happen twice.
//! The one exception is a standby's `not_leader` answer, which guarantees
//! nothing was done: the request then goes to the leader it names, or the
//! next URL, and while no manager leads (an election takes a few seconds)
//! the whole list is tried again until the request timeout runs out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// The largest answer we read; real ones are a few KiB.
const BODY_MAX_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Base URLs (`https://mgr1:8080`), tried in order.
    pub base_urls: Vec<String>,
    /// Bearer token, sent on every request.
    pub token: Option<String>,
    /// PEM CA bundle that signs the server certificate; when set, only it
    /// is trusted (a private cluster CA), otherwise the WebPKI roots.
    pub ca_file: Option<PathBuf>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The server answered with an error status and (usually) a
    /// `{code, message}` body.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No server could be reached, or the exchange broke.
    Transport { url: String, detail: String },
    /// The server answered something that is not the expected JSON.
    Decode {
        url: String,
        status: u16,
        detail: String,
    },
    /// The client configuration is unusable (bad CA file, no URL).
    Config(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Api {
                status,
                code,
                message,
            } => write!(f, "{message} [{code}, HTTP {status}]"),
            HttpError::Transport { url, detail } => write!(f, "cannot reach {url}: {detail}"),
            HttpError::Decode {
                url,
                status,
                detail,
            } => write!(f, "unexpected answer from {url} (HTTP {status}): {detail}"),
            HttpError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {}

/// Percent-encodes one path segment, so that user input can never change
/// the route (names are validated server-side as well).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

pub struct HttpClient {
    agent: ureq::Agent,
    bases: Vec<String>,
    token: Option<String>,
    /// How long to keep looking for a leader (the request timeout).
    failover_wait: Duration,
}

/// A standby's answer: `Some(leader URL or None)` when the body says
/// `not_leader`.
fn not_leader(status: u16, text: &str) -> Option<Option<String>> {
    if status != 503 {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    (v["code"] == "not_leader").then(|| v["leader"].as_str().map(str::to_string))
}

fn load_roots(path: &PathBuf) -> Result<RootCerts, HttpError> {
    let pem = std::fs::read(path)
        .map_err(|e| HttpError::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {}
            Err(e) => {
                return Err(HttpError::Config(format!(
                    "CA file {} is not valid PEM: {e}",
                    path.display()
                )));
            }
        }
    }
    if certs.is_empty() {
        return Err(HttpError::Config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(RootCerts::Specific(Arc::new(certs)))
}

/// True when the request certainly never reached the server, so another
/// base URL may be tried without risking a duplicate.
fn never_sent(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable | ErrorKind::NotFound
        ),
        _ => false,
    }
}

impl HttpClient {
    pub fn new(config: &HttpConfig) -> Result<HttpClient, HttpError> {
        let bases: Vec<String> = config
            .base_urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(HttpError::Config("no server URL configured".into()));
        }
        for b in &bases {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(HttpError::Config(format!(
                    "'{b}' is not an http:// or https:// URL"
                )));
            }
        }
        let roots = match &config.ca_file {
            Some(path) => load_roots(path)?,
            None => RootCerts::WebPki,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(5))))
            .max_redirects(0)
            .user_agent(concat!("vsky-smapi/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(HttpClient {
            agent,
            bases,
            token: config.token.clone(),
            failover_wait: config.timeout,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, HttpError> {
        self.request(Method::Get, path, None)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, HttpError> {
        self.request(Method::Post, path, Some(to_value(body)?))
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, HttpError> {
        self.request(Method::Patch, path, Some(to_value(body)?))
    }

    pub fn delete(&self, path: &str) -> Result<(), HttpError> {
        self.request::<Value>(Method::Delete, path, None)
            .map(|_| ())
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, HttpError> {
        let deadline = std::time::Instant::now() + self.failover_wait;
        loop {
            let mut queue: std::collections::VecDeque<String> =
                self.bases.iter().cloned().collect();
            let mut tried: Vec<String> = Vec::new();
            let mut last = None;
            let mut standby = None;
            while let Some(base) = queue.pop_front() {
                if tried.contains(&base) {
                    continue;
                }
                tried.push(base.clone());
                let url = format!("{base}{path}");
                match self.exchange(method, &url, body.as_ref()) {
                    Ok((status, text)) => match not_leader(status, &text) {
                        Some(leader) => {
                            // Nothing was done: ask the leader it names.
                            if let Some(l) = leader {
                                let l = l.trim_end_matches('/').to_string();
                                if l.starts_with("http://") || l.starts_with("https://") {
                                    queue.push_front(l);
                                }
                            }
                            standby = Some((url, status, text));
                        }
                        None => return decode(&url, status, &text),
                    },
                    Err(e) if never_sent(&e) => {
                        last = Some(HttpError::Transport {
                            url,
                            detail: e.to_string(),
                        })
                    }
                    Err(e) => {
                        return Err(HttpError::Transport {
                            url,
                            detail: e.to_string(),
                        });
                    }
                }
            }
            match standby {
                // Only standbys answered: an election is under way.
                Some((url, status, text)) => {
                    if std::time::Instant::now() + Duration::from_millis(500) > deadline {
                        return decode(&url, status, &text);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                None => {
                    return Err(last
                        .unwrap_or_else(|| HttpError::Config("no server URL configured".into())));
                }
            }
        }
    }

    fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), ureq::Error> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut response = match method {
            Method::Get | Method::Delete => {
                let mut req = match method {
                    Method::Get => self.agent.get(url),
                    _ => self.agent.delete(url),
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()?
            }
            Method::Post | Method::Patch => {
                let mut req = match method {
                    Method::Post => self.agent.post(url),
                    _ => self.agent.patch(url),
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                match body {
                    Some(b) => req.send_json(b)?,
                    None => req.send_empty()?,
                }
            }
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(BODY_MAX_BYTES)
            .read_to_string()?;
        Ok((status, text))
    }
}

fn to_value<B: Serialize>(body: &B) -> Result<Value, HttpError> {
    serde_json::to_value(body)
        .map_err(|e| HttpError::Config(format!("cannot encode a request body: {e}")))
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// Turns one exchange into the typed answer or an error.
fn decode<T: DeserializeOwned>(url: &str, status: u16, text: &str) -> Result<T, HttpError> {
    if (200..300).contains(&status) {
        // 204 and other empty answers decode as JSON null (`()`).
        let text = if text.trim().is_empty() { "null" } else { text };
        return serde_json::from_str(text).map_err(|e| HttpError::Decode {
            url: url.to_string(),
            status,
            detail: format!("{e}: {}", snippet(text)),
        });
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        code: String,
        message: String,
    }
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(b) => Err(HttpError::Api {
            status,
            code: b.code,
            message: b.message,
        }),
        Err(_) => Err(HttpError::Decode {
            url: url.to_string(),
            status,
            detail: snippet(text),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_change_the_route() {
        assert_eq!(segment("sr-1.a_b~"), "sr-1.a_b~");
        assert_eq!(segment("../x?y=1 z"), "..%2Fx%3Fy%3D1%20z");
    }

    #[test]
    fn answers_decode_by_status() {
        let v: Value = decode("u", 200, r#"{"a":1}"#).unwrap();
        assert_eq!(v["a"], 1);
        let unit: () = decode("u", 204, "").unwrap();
        assert_eq!(unit, ());
        let e = decode::<Value>("u", 404, r#"{"code":"not_found","message":"no"}"#).unwrap_err();
        assert!(matches!(e, HttpError::Api { status: 404, ref code, .. } if code == "not_found"));
        let e = decode::<Value>("u", 502, "<html>bad gateway</html>").unwrap_err();
        assert!(matches!(e, HttpError::Decode { status: 502, .. }));
        let e = decode::<Vec<u8>>("u", 200, r#"{"a":1}"#).unwrap_err();
        assert!(matches!(e, HttpError::Decode { .. }));
    }

    #[test]
    fn standby_answers_are_recognised() {
        let body = r#"{"code":"not_leader","message":"standby","leader":"http://m2:8080"}"#;
        assert_eq!(not_leader(503, body), Some(Some("http://m2:8080".into())));
        assert_eq!(
            not_leader(503, r#"{"code":"not_leader","message":"election"}"#),
            Some(None)
        );
        assert_eq!(
            not_leader(503, r#"{"code":"store_unavailable","message":"x"}"#),
            None
        );
        assert_eq!(not_leader(409, body), None);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut c = HttpConfig {
            base_urls: vec![],
            token: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
        };
        assert!(HttpClient::new(&c).is_err());
        c.base_urls = vec!["ftp://x".into()];
        assert!(HttpClient::new(&c).is_err());
        c.base_urls = vec!["http://127.0.0.1:1".into()];
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(HttpClient::new(&c), Err(HttpError::Config(_))));
    }

    #[test]
    fn an_unreachable_server_is_a_transport_error_after_trying_every_url() {
        // Port 1 on loopback refuses connections.
        let c = HttpClient::new(&HttpConfig {
            base_urls: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:1/".into()],
            token: Some("t".into()),
            ca_file: None,
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        let e = c.get::<Value>("/x").unwrap_err();
        assert!(matches!(e, HttpError::Transport { .. }), "{e:?}");
    }
}
