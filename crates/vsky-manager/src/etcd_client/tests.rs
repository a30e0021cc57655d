//! Tests of `etcd_client.rs` that need no etcd: store URLs, prefix ends,
//! and what the errors (TLS, unreachable members) tell the admin to do.

use super::*;

#[test]
fn store_urls_parse_into_endpoints_and_a_prefix() {
    let c = EtcdConfig::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
    assert_eq!(
        c.endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(c.prefix, PREFIX_DEFAULT);
    let c = EtcdConfig::from_url("etcds://[::1]:2379/prod/vsky/").unwrap();
    assert_eq!(c.endpoints, ["https://[::1]:2379"]);
    assert_eq!(c.prefix, "/prod/vsky");
    for bad in [
        "http://x:2379",
        "etcd://",
        "etcd://host",
        "etcd://host:0",
        "etcd://host:port",
        "etcd://a:1,,b:2",
        "etcd://u@h:1",
        "etcd://h:1/a b",
    ] {
        let e = EtcdConfig::from_url(bad).unwrap_err();
        assert!(e.contains("etcd://HOST:PORT"), "{bad}: {e}");
    }
}

#[test]
fn prefix_ends_cover_exactly_the_prefix() {
    assert_eq!(prefix_end(b"/v/"), b"/v0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), [0]);
}

#[test]
fn errors_say_what_to_do() {
    let e = parse_answer(
        "http://e",
        (
            400,
            r#"{"error":"etcdserver: too many operations in txn request","message":"etcdserver: too many operations in txn request","code":3}"#.into(),
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--max-txn-ops"), "{e}");
    let e = parse_answer(
        "http://e",
        (200, r#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found"}}"#.into()),
    )
    .unwrap_err();
    assert!(matches!(e, EtcdError::Server { code: 5, .. }), "{e:?}");
    assert!(parse_answer("http://e", (502, "<html>".into())).is_err());
    let ok = parse_answer("http://e", (200, r#"{"header":{"revision":"7"}}"#.into())).unwrap();
    assert_eq!(int(&ok["header"]["revision"]), 7);
}

#[test]
fn tls_files_need_an_etcds_url() {
    let mut c = EtcdConfig::from_url("etcd://127.0.0.1:2379").unwrap();
    c.ca_file = Some("/etc/ssl/ca.pem".into());
    assert!(matches!(EtcdClient::new(&c), Err(EtcdError::Config(_))));
    let mut c = EtcdConfig::from_url("etcd://127.0.0.1:2379").unwrap();
    c.user = Some("vsky".into());
    assert!(matches!(EtcdClient::new(&c), Err(EtcdError::Config(_))));
    c.password_file = Some("/nonexistent/password".into());
    assert!(matches!(EtcdClient::new(&c), Err(EtcdError::Config(_))));
}

#[test]
fn tls_failures_name_the_options_that_fix_them() {
    let io =
        |e: rustls::Error| ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    let untrusted = io(rustls::Error::InvalidCertificate(
        rustls::CertificateError::UnknownIssuer,
    ));
    let tls = tls_failure(&untrusted).expect("a TLS failure");
    assert!(tls_hint(tls, true, true).contains("--etcd-ca-file"));
    let refused = io(rustls::Error::AlertReceived(
        rustls::AlertDescription::BadCertificate,
    ));
    let tls = tls_failure(&refused).expect("a TLS failure");
    assert!(tls_hint(tls, true, false).contains("--etcd-cert-file and --etcd-key-file"));
    assert!(tls_hint(tls, true, true).contains("--trusted-ca-file"));
    let refused = ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
    assert!(tls_failure(&refused).is_none() && !closed_by_peer(&refused));
    let closed = ureq::Error::Io(std::io::ErrorKind::BrokenPipe.into());
    assert!(closed_by_peer(&closed));
    assert!(closed_tls_hint(false).contains("--etcd-cert-file and --etcd-key-file"));
}

#[test]
fn an_unreachable_cluster_is_reported_with_every_endpoint() {
    let mut c = EtcdConfig::from_url("etcd://127.0.0.1:1,127.0.0.1:2").unwrap();
    c.timeout = Duration::from_secs(2);
    let client = EtcdClient::new(&c).unwrap();
    let e = client.range(b"/k", None, 0, 0).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("127.0.0.1:1,") && text.contains("quorum"),
        "{text}"
    );
}
