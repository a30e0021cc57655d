//! Plain HTTP for what `vsky_api::Client` does not cover: the head agent's
//! local API (the datapath plugin's), the manager's `/metrics` and etcd's
//! health. One request per connection, on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};

/// A request's answer: status and body.
pub type Answer = (u16, String);

pub fn get(addr: &str, path: &str, token: Option<&str>) -> Result<Answer> {
    request("GET", addr, path, token, "")
}

/// A POST with a JSON `body` (none when empty).
pub fn post(addr: &str, path: &str, token: Option<&str>, body: &str) -> Result<Answer> {
    request("POST", addr, path, token, body)
}

fn request(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<Answer> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    // A local detach answers only once the devices are gone.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let kind = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read the answer of {method} {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in the answer of {addr}{path}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked answer.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        body = after.trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unchunks_a_chunked_body() {
        assert_eq!(super::unchunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
