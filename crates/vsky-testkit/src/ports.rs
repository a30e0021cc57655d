//! Loopback ports for servers a test starts.

use std::net::TcpListener;

/// A loopback TCP port that was free a moment ago.
///
/// The port is free again once this returns, and something else could take
/// it before the test's server binds it. That is acceptable here: Linux
/// picks the port for a bind to port 0 from a random point of its
/// ephemeral range, so the port just released is rarely handed out again
/// at once, and the servers that take these ports (storage agents, etcd members) bind them
/// themselves from a command line or a config, so a listener cannot be
/// handed over. A lost race makes the server fail to bind and the test fail
/// loudly, never pass wrongly. Where the server can take a listener, bind
/// `127.0.0.1:0` and pass that instead (as the in-process manager does).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}
