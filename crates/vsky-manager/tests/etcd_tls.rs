//! The manager on a real etcd whose client port is TLS with client
//! certificates required (`--client-cert-auth`), the way a production etcd
//! is run: `--store etcds://…` with `--etcd-ca-file`, `--etcd-cert-file`
//! and `--etcd-key-file`. The certificates are made for each test by
//! rcgen (`common::etcd::TestCa`).
//!
//! What must hold:
//! - with the right files, the manager leads, takes writes, and they are
//!   in etcd: a new manager process on the same store finds them;
//! - with a wrong CA, no client certificate, or one etcd does not trust,
//!   the manager exits at start-up without serving, and its error names
//!   the TLS problem and the option to fix (not "is a quorum up?").
//!
//! Without etcd the tests print a skip message (and fail under CI).

mod common;

use std::path::Path;
use std::time::Duration;

use common::etcd::*;
use common::*;
use vsky_manager::etcd_client::EtcdConfig;
use vsky_manager::store::Store;
use vsky_manager::store::etcd::EtcdStore;

/// A manager's start-up ends well within this when etcd refuses it: one
/// request, with the manager's 5 s request timeout.
const START_FAILURE_LIMIT: Duration = Duration::from_secs(30);

/// The `--etcd-*` TLS options for these files.
fn tls_flags(ca: &Path, client: Option<&CertFiles>) -> Vec<String> {
    let mut flags = vec!["--etcd-ca-file".to_string(), path(ca)];
    if let Some(c) = client {
        flags.extend([
            "--etcd-cert-file".to_string(),
            path(&c.cert_file),
            "--etcd-key-file".to_string(),
            path(&c.key_file),
        ]);
    }
    flags
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_string()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The store as the manager opens it, from the test process: proves the
/// etcd member accepts this configuration, so a refusal of another one is
/// down to the difference.
fn connect(url: &str, tls: &EtcdTls) -> EtcdStore {
    let mut config = EtcdConfig::from_url(url).unwrap();
    config.ca_file = Some(tls.ca.cert_file.clone());
    config.cert_file = Some(tls.client.cert_file.clone());
    config.key_file = Some(tls.client.key_file.clone());
    EtcdStore::connect(&config).expect("the right TLS files are accepted")
}

/// Goal: a manager keeps its cluster in etcd over TLS with a client
/// certificate, and a new manager process finds it there.
/// Method: one TLS member; a manager creates a pool and a volume; kill -9
/// it; read the records straight from etcd over TLS; start a second
/// manager on the same store and check it leads, serves the same volume
/// and takes a new write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_keeps_its_cluster_in_etcd_over_tls_with_a_client_certificate() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start_tls(etcd_bin, 1);
    let url = etcd.store_url("vsky/tls");
    assert!(url.starts_with("etcds://127.0.0.1:"), "{url}");
    let tls = etcd.tls();
    let flags = tls_flags(&tls.ca.cert_file, Some(&tls.client));
    let dir = tempfile::tempdir().unwrap();

    let mut first_args = vec!["--chunk-size", "8MiB"];
    first_args.extend(strs(&flags));
    let mut first = HaManager::start(dir.path(), &url, &first_args);
    wait_role(&first, "leader", Duration::from_secs(20)).await;
    let admin = first.direct();
    register_pool(&admin, &pool(3, 1).chunks(8).racks(3)).await;
    let created = admin
        .create_volume(&volume("over-tls", 14 * MIB))
        .await
        .unwrap();
    first.kill9();

    // No manager runs now: the volume can only be in etcd, under the
    // prefix of the store URL.
    let records = connect(&url, tls).load().unwrap().expect("initialised");
    assert!(
        records.volumes.iter().any(|v| v.name == "over-tls"),
        "{:?}",
        records.volumes
    );

    // SIGKILL left the first manager's lease: the second leads once it
    // runs out.
    let second = HaManager::start(dir.path(), &url, &strs(&flags));
    wait_role(
        &second,
        "leader",
        Duration::from_secs(TEST_LEASE_TTL_SECONDS) + Duration::from_secs(15),
    )
    .await;
    let admin = second.direct();
    assert_eq!(admin.volume("over-tls").await.unwrap(), created);
    admin
        .create_volume(&volume("after-restart", 7 * MIB))
        .await
        .unwrap();
    let mut names: Vec<String> = admin
        .list_volumes()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    assert_eq!(names, ["after-restart", "over-tls"]);
}

/// A TLS etcd member and its store URL, checked to accept the right files
/// (so a refusal in a test is down to what the test changed); `None`
/// without etcd.
fn tls_member() -> Option<(EtcdCluster, String)> {
    let etcd = EtcdCluster::start_tls(etcd_binary()?, 1);
    let url = etcd.store_url("vsky/tls");
    connect(&url, etcd.tls());
    Some((etcd, url))
}

/// Goal: a CA that did not sign the etcd member's certificate makes the
/// manager exit at start-up, saying to check --etcd-ca-file.
#[test]
fn a_wrong_etcd_ca_is_refused_at_start_up_with_a_clear_error() {
    let Some((etcd, url)) = tls_member() else {
        return;
    };
    let tls = etcd.tls();
    let unrelated = TestCa::new(etcd.dir(), "unrelated");
    let flags = tls_flags(&unrelated.cert_file, Some(&tls.client));
    let dir = tempfile::tempdir().unwrap();

    let failed = HaManager::start_failing(dir.path(), &url, &strs(&flags), START_FAILURE_LIMIT);
    let e = failed.stderr;
    assert!(!failed.status.success(), "{e}");
    assert!(
        e.contains("TLS handshake failed")
            && e.contains("certificate")
            && e.contains("--etcd-ca-file"),
        "{e}"
    );
    // Not the advice for a cluster that is down.
    assert!(!e.contains("quorum"), "{e}");
}

/// Goal: without a client certificate, or with one from a CA etcd does not
/// trust, the manager exits at start-up, saying which options to give or
/// fix.
///
/// Over TLS 1.3 the client's side of the handshake is over before etcd
/// checks its certificate, so the manager sees the refusal in one of two
/// ways, by timing: etcd's alert (a certain diagnosis), or, usually, its
/// close breaking the request the manager already wrote (the hint then
/// names the certificate as the likely cause and the quorum as the other).
/// Both must name the options to fix.
#[test]
fn a_missing_or_untrusted_client_certificate_is_refused_with_a_clear_error() {
    let Some((etcd, url)) = tls_member() else {
        return;
    };
    let tls = etcd.tls();
    let dir = tempfile::tempdir().unwrap();

    // The member's certificate is trusted, but there is none to show.
    let flags = tls_flags(&tls.ca.cert_file, None);
    let failed = HaManager::start_failing(dir.path(), &url, &strs(&flags), START_FAILURE_LIMIT);
    let e = failed.stderr;
    assert!(!failed.status.success(), "{e}");
    assert!(
        e.contains("--client-cert-auth") && e.contains("give --etcd-cert-file and --etcd-key-file"),
        "{e}"
    );

    // A well-formed client certificate, from a CA etcd does not trust.
    let stranger = TestCa::new(etcd.dir(), "stranger").issue_client(etcd.dir(), "stranger");
    let flags = tls_flags(&tls.ca.cert_file, Some(&stranger));
    let failed = HaManager::start_failing(dir.path(), &url, &strs(&flags), START_FAILURE_LIMIT);
    let e = failed.stderr;
    assert!(!failed.status.success(), "{e}");
    assert!(
        e.contains("refused the client certificate in --etcd-cert-file")
            && e.contains("--trusted-ca-file"),
        "{e}"
    );
}
