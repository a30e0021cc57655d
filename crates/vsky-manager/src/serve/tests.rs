//! Tests of `serve.rs`: the server future, the bind and the plain-HTTP answer.

use super::*;

/// Callers spawn the server (tests run managers in-process), so its
/// future must be `Send`; this fails to compile otherwise.
#[allow(dead_code)]
fn serve_future_is_send(listener: TcpListener) {
    fn send<T: Send>(_: T) {}
    send(serve(
        Router::new(),
        listener,
        None,
        ServeLimits::default(),
        async {},
    ));
}

#[test]
fn sources_count_per_address_and_ipv6_per_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(source_key(a), source_key(b));
    assert_ne!(source_key(a), source_key(c));
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(source_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
}

#[test]
fn the_cap_fits_the_open_file_limit() {
    let inf = u64::MAX; // RLIM_INFINITY
    // Raised to what is needed, within the hard limit.
    assert_eq!(soft_limit_to_ask(4096, 1024, 524288), Some(4096 + 128));
    assert_eq!(soft_limit_to_ask(4096, 1024, 2048), Some(2048));
    assert_eq!(soft_limit_to_ask(4096, 1024, inf), Some(4096 + 128));
    assert_eq!(soft_limit_to_ask(4096, 65536, 65536), None);
    assert_eq!(soft_limit_to_ask(4096, inf, inf), None);
    // Served as asked, or fewer with a lower limit.
    assert_eq!(cap_within(4096, 65536), 4096);
    assert_eq!(cap_within(4096, inf), 4096);
    assert_eq!(cap_within(4096, 2048), 2048 - 128);
    assert_eq!(cap_within(4096, 10), 1);
}

#[test]
fn gate_caps_per_source_and_in_total_and_frees_on_drop() {
    let gate = Arc::new(Gate::new(3, 2));
    let x: IpAddr = "10.0.0.1".parse().unwrap();
    let y: IpAddr = "10.0.0.2".parse().unwrap();
    let x1 = gate.admit(x).unwrap();
    let _x2 = gate.admit(x).unwrap();
    assert!(gate.admit(x).is_err(), "third from one source");
    let _y1 = gate.admit(y).unwrap();
    assert!(gate.admit(y).is_err(), "fourth in total");
    drop(x1);
    let _y2 = gate.admit(y).unwrap();
    assert_eq!(gate.open.lock().unwrap().total, 3);
}

#[test]
fn only_hypers_bodiless_parse_error_answers_are_replaced() {
    let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 21:00:00 GMT\r\n\r\n";
    let answer = String::from_utf8(json_answer_for(hyper_431).unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let parsed: ErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(parsed.code, "headers_too_large");
    assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
    // An answer with a body, or another status, passes unchanged.
    assert!(json_answer_for(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n").is_none());
    assert!(json_answer_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    assert!(json_answer_for(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n").is_none());
}
