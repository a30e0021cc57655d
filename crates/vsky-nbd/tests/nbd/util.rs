//! Shared fixture: a running `serve` over a temp file. The export covers
//! `[BASE, BASE + SIZE)` of the file; the bytes before and after are filled
//! with `GUARD` and must never change or be readable through NBD.

use std::io::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vsky_nbd::proto::{self, CommandType, RequestHeader, SimpleReply};
use vsky_nbd::{Export, ExportTable, ServerConfig};

pub const BASE: u64 = 1024 * 1024;
pub const SIZE: u64 = 8 * 1024 * 1024;
pub const TAIL: u64 = 1024 * 1024;
pub const GUARD: u8 = 0xee;
pub const NAME: &str = "leg-7f3a9c-secret";

pub struct TestServer {
    pub addr: SocketAddr,
    pub exports: ExportTable,
    pub file: tempfile::NamedTempFile,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default(), false).await
    }

    pub async fn start_with(config: ServerConfig, read_only: bool) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        // Guard bytes around the export; the export itself starts as zeroes.
        file.write_all(&vec![GUARD; BASE as usize])
            .expect("head guard");
        file.write_all(&vec![0u8; SIZE as usize]).expect("export");
        file.write_all(&vec![GUARD; TAIL as usize])
            .expect("tail guard");
        file.flush().expect("flush");
        let exports = ExportTable::new();
        exports.insert(
            NAME.to_string(),
            Export {
                path: file.path().to_owned(),
                offset_bytes: BASE,
                size_bytes: SIZE,
                read_only,
                writable_bytes: None,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(vsky_nbd::serve(
            listener,
            exports.clone(),
            config,
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        Self {
            addr,
            exports,
            file,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd://{}/{NAME}", self.addr)
    }

    /// Starts graceful shutdown and waits for `serve` to return.
    pub async fn shut_down(&mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("serve panicked")
    }

    /// The export's bytes as stored in the backing file.
    pub fn export_bytes(&self) -> Vec<u8> {
        let all = std::fs::read(self.file.path()).expect("read backing file");
        all[BASE as usize..(BASE + SIZE) as usize].to_vec()
    }

    /// Panics unless every byte outside the export is still `GUARD`.
    pub fn assert_guards_intact(&self) {
        let all = std::fs::read(self.file.path()).expect("read backing file");
        assert_eq!(
            all.len() as u64,
            BASE + SIZE + TAIL,
            "backing file size changed"
        );
        let head_ok = all[..BASE as usize].iter().all(|&b| b == GUARD);
        let tail_ok = all[(BASE + SIZE) as usize..].iter().all(|&b| b == GUARD);
        assert!(head_ok && tail_ok, "bytes outside the export were modified");
    }

    /// Proves the server still works: a fresh client writes and reads back.
    pub async fn assert_serves_good_client(&self) {
        let mut client = vsky_nbd::client::Client::connect(self.addr, NAME)
            .await
            .expect("a well-behaved client can still connect");
        client
            .write(SIZE - 512, &[0x42; 512], false)
            .await
            .expect("write");
        assert_eq!(
            client.read(SIZE - 512, 512).await.expect("read"),
            vec![0x42; 512]
        );
        client.disconnect().await.expect("disconnect");
        self.assert_guards_intact();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A handshaken raw socket, for tests that speak the protocol by hand.
pub async fn raw_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    vsky_nbd::client::handshake(&mut stream, NAME)
        .await
        .expect("handshake");
    stream
}

pub async fn send_request(
    stream: &mut TcpStream,
    command: CommandType,
    flags: u16,
    cookie: u64,
    offset: u64,
    length: u32,
) {
    let header = RequestHeader {
        flags,
        command,
        cookie,
        offset,
        length,
    };
    stream
        .write_all(&header.encode())
        .await
        .expect("send request");
}

/// Fails (rather than hangs) a test whose server never answers. Generous on
/// purpose: it only fires when the server is broken, never on a slow machine.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("server did not {what} within 60 s"))
}

/// Reads one simple reply header; `None` if the server closed the connection.
pub async fn read_reply(stream: &mut TcpStream) -> Option<SimpleReply> {
    let mut raw = [0u8; proto::SIMPLE_REPLY_BYTES];
    match within("reply", stream.read_exact(&mut raw)).await {
        Ok(_) => Some(SimpleReply::parse(&raw).expect("reply magic")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => panic!("reading reply: {e}"),
    }
}

/// Reads until the server closes the connection; panics if it sends anything.
pub async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match within("close the connection", stream.read_to_end(&mut rest)).await {
        Ok(_) => assert!(
            rest.is_empty(),
            "server sent {} unexpected bytes",
            rest.len()
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Path of an external tool, or a failure that says how to install it.
pub fn require_tool(tool: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` is not installed; run scripts/install-deps (CI does) to install qemu-utils, nbdkit, libnbd-bin and fio")
        })
}

/// Runs a tool to completion and returns its stdout; panics with its output
/// if it fails.
pub async fn run_tool(tool: &str, args: &[&str]) -> String {
    let output = run_tool_status(tool, args).await;
    assert!(
        output.status.success(),
        "`{tool} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub async fn run_tool_status(tool: &str, args: &[&str]) -> std::process::Output {
    let path = require_tool(tool);
    tokio::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `{tool}`: {e}"))
}

/// Deterministic, position-dependent test data.
pub fn pattern(seed: u8, length: usize) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}
