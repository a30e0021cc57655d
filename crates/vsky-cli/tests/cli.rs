//! Runs the built `vsky` binary as a user would, without a manager: the
//! transport path against a closed local port, local configuration errors,
//! usage errors and `--help`. End-to-end tests against a real manager drive
//! the same binary with `--manager URL --token-file FILE`.
//!
//! Every run clears the `VSKY_*` variables so that a developer's own
//! environment cannot change the outcome.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

const ENV_VARS: [&str; 5] = [
    "VSKY_MANAGER",
    "VSKY_TOKEN",
    "VSKY_TOKEN_FILE",
    "VSKY_CA_FILE",
    "VSKY_TIMEOUT",
];

fn vsky(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsky"));
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("run vsky")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback URL where nothing listens: bind an ephemeral port, then
/// release it. (Another process could grab it in between; on a test
/// machine that is vanishingly rare, and it would show as exit 1, not a
/// silent pass.)
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A token file in the temp dir, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("vsky-cli-it-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TokenFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn unreachable_manager_exits_3_with_a_clear_message() {
    let url = closed_port_url();
    let token = TokenFile::new("unreachable", "# admin\ntok\n");
    for args in [
        &["cluster", "status"][..],
        &["volume", "list"],
        &["--json", "server", "show", "n1"],
        &["disk", "remove", "4"],
        &[
            "volume",
            "create",
            "v1",
            "--size",
            "10GiB",
            "--replicas",
            "2",
        ],
    ] {
        let mut full = vec![
            "--manager",
            url.as_str(),
            "--token-file",
            token.path(),
            "--timeout",
            "10s",
        ];
        full.extend_from_slice(args);
        let out = vsky(&full);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("vsky: error: cannot reach the manager at "),
            "{err}"
        );
        assert!(err.contains(&url), "{err}");
        assert!(
            err.contains("--manager"),
            "the hint names the option to check: {err}"
        );
        assert!(err.contains("(cause: "), "the root cause is shown: {err}");
        assert!(stdout(&out).is_empty(), "nothing on stdout on failure");
    }
}

#[test]
fn a_manager_that_never_answers_times_out_with_exit_3() {
    // The kernel completes the TCP handshake into the listen backlog, but
    // nothing ever reads or answers: a hung manager, as seen by the client.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let out = vsky(&["--manager", &url, "--timeout", "1s", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("vsky: error: cannot reach the manager"),
        "{err}"
    );
    assert!(err.contains("timed out"), "{err}");
    drop(listener);
}

#[test]
fn manager_url_from_the_environment() {
    let url = closed_port_url();
    let out = Command::new(env!("CARGO_BIN_EXE_vsky"))
        .env("VSKY_MANAGER", &url)
        .env("VSKY_TOKEN", "tok")
        .env_remove("VSKY_TOKEN_FILE")
        .args(["server", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

#[test]
fn local_configuration_problems_exit_4() {
    let url = closed_port_url();
    let missing = std::env::temp_dir().join("vsky-cli-it-no-such.token");
    let out = vsky(&[
        "--manager",
        &url,
        "--token-file",
        missing.to_str().unwrap(),
        "volume",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).starts_with("vsky: error: cannot read token file"),
        "{}",
        stderr(&out)
    );

    let empty = TokenFile::new("empty", "# no token yet\n\n");
    let out = vsky(&[
        "--manager",
        &url,
        "--token-file",
        empty.path(),
        "volume",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("holds no token"), "{}", stderr(&out));

    let out = vsky(&[
        "--manager",
        &url,
        "--ca-file",
        missing.to_str().unwrap(),
        "volume",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("cannot read CA file"),
        "{}",
        stderr(&out)
    );

    for bad_url in ["not a url", "ftp://127.0.0.1:21"] {
        let out = vsky(&["--manager", bad_url, "volume", "list"]);
        assert_eq!(out.status.code(), Some(4), "{bad_url}");
        assert!(stderr(&out).contains("manager URL"), "{}", stderr(&out));
    }
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    // A closed port proves it: a request would have exited 3.
    let url = closed_port_url();
    for args in [
        &["volume", "create", "v1", "--size", "10XB"][..],
        &["volume", "create", "v1"],
        &["server", "add", "n1", "--address", "h:1", "--label", "rack"],
        &[
            "server",
            "add",
            "n1",
            "--address",
            "h:1",
            "--label",
            "rack=a",
            "--label",
            "rack=b",
        ],
        &["disk", "show", "sdb"],
        &["volume", "attach", "v1"],
        &["--timeout", "soon", "volume", "list"],
        &["--token", "secret", "volume", "list"],
        &["frobnicate"],
        &[],
    ] {
        let mut full = vec!["--manager", url.as_str()];
        full.extend_from_slice(args);
        let out = vsky(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("cannot reach"), "{args:?}");
    }
    let out = vsky(&[
        "--manager",
        &url,
        "volume",
        "create",
        "v1",
        "--size",
        "10XB",
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("--size") && err.contains("unknown unit"),
        "{err}"
    );
}

#[test]
fn help_explains_units_environment_and_exit_codes() {
    let out = vsky(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in [
        "VSKY_MANAGER",
        "VSKY_TOKEN_FILE",
        "VSKY_TOKEN ",
        "VSKY_CA_FILE",
        "GiB",
        "Exit status",
        "cluster",
        "server",
        "disk",
        "volume",
        "--json",
        "--timeout",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }

    let out = vsky(&["volume", "create", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in [
        "--size",
        "--replicas",
        "--stripe-width",
        "--stripe-unit",
        "--class",
        "--near",
        "Examples:",
    ] {
        assert!(
            text.contains(needle),
            "volume create --help lacks {needle:?}:\n{text}"
        );
    }

    for sub in [
        &["cluster", "status"][..],
        &["server", "add"],
        &["server", "list"],
        &["server", "show"],
        &["server", "remove"],
        &["server", "fail"],
        &["disk", "add"],
        &["disk", "list"],
        &["disk", "show"],
        &["disk", "remove"],
        &["disk", "fail"],
        &["volume", "list"],
        &["volume", "show"],
        &["volume", "delete"],
        &["volume", "attach"],
        &["volume", "detach"],
        &["volume", "resize"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = vsky(&args);
        assert_eq!(out.status.code(), Some(0), "{sub:?}");
        assert!(
            stdout(&out).contains("Example"),
            "{sub:?} --help has no example"
        );
    }
}

#[test]
fn version_is_printed() {
    let out = vsky(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("vsky "), "{}", stdout(&out));
}
