//! Pipelining, export removal and graceful shutdown.

use std::collections::HashSet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vsky_nbd::NbdError;
use vsky_nbd::client::Client;
use vsky_nbd::proto::CommandType;

use crate::util::{
    NAME, TestServer, assert_closed, pattern, raw_connection, read_reply, send_request,
};

const CHUNK: u32 = 256 * 1024;

// Proves many requests can be in flight on one connection (more than the
// per-connection cap, so the semaphore's back-pressure is exercised), every
// cookie (including kernel-style counter<<32|tag values) comes back exactly
// once, and data read in the same batch matches what was written.
#[tokio::test]
async fn pipelined_requests_echo_every_cookie_once() {
    let config = vsky_nbd::ServerConfig {
        max_inflight_per_connection: 8,
        ..vsky_nbd::ServerConfig::default()
    };
    let server = TestServer::start_with(config, false).await;
    let mut stream = raw_connection(server.addr).await;
    let count = 32u64;
    let (mut reader, mut writer) = stream.split();
    let send = async {
        for i in 0..count {
            let cookie = (i << 32) | (i * 7 + 1);
            let header = vsky_nbd::proto::RequestHeader {
                flags: 0,
                command: CommandType::Write,
                cookie,
                offset: i * u64::from(CHUNK),
                length: CHUNK,
            };
            writer.write_all(&header.encode()).await.expect("header");
            writer
                .write_all(&pattern(i as u8, CHUNK as usize))
                .await
                .expect("payload");
        }
    };
    let receive = async {
        let mut seen = HashSet::new();
        for _ in 0..count {
            let mut raw = [0u8; 16];
            reader.read_exact(&mut raw).await.expect("reply");
            let reply = vsky_nbd::proto::SimpleReply::parse(&raw).expect("magic");
            assert_eq!(reply.error, 0);
            assert!(
                seen.insert(reply.cookie),
                "cookie {:#x} twice",
                reply.cookie
            );
        }
        seen
    };
    let ((), seen) = tokio::join!(send, receive);
    let expected: HashSet<u64> = (0..count).map(|i| (i << 32) | (i * 7 + 1)).collect();
    assert_eq!(seen, expected);

    // Now a burst of reads; replies may come in any order.
    for i in 0..count {
        send_request(
            &mut stream,
            CommandType::Read,
            0,
            1000 + i,
            i * u64::from(CHUNK),
            CHUNK,
        )
        .await;
    }
    let mut pending: HashSet<u64> = (0..count).map(|i| 1000 + i).collect();
    for _ in 0..count {
        let reply = read_reply(&mut stream).await.expect("reply");
        assert_eq!(reply.error, 0);
        assert!(pending.remove(&reply.cookie));
        let mut data = vec![0u8; CHUNK as usize];
        stream.read_exact(&mut data).await.expect("data");
        assert!(data == pattern((reply.cookie - 1000) as u8, CHUNK as usize));
    }
    server.assert_guards_intact();
}

// Proves removing an export cuts an open connection at once (the next request
// fails instead of being served) and that the name is unknown from then on,
// while other exports keep working.
#[tokio::test]
async fn removing_an_export_closes_its_connections() {
    let server = TestServer::start().await;
    server.exports.insert(
        "other".into(),
        vsky_nbd::Export {
            path: server.file.path().to_owned(),
            offset_bytes: 0,
            size_bytes: 4096,
            read_only: true,
            writable_bytes: None,
        },
    );
    let mut victim = Client::connect(server.addr, NAME).await.expect("connect");
    let mut bystander = Client::connect(server.addr, "other")
        .await
        .expect("connect");
    victim
        .write(0, b"before", false)
        .await
        .expect("write before removal");
    let mut idle = raw_connection(server.addr).await;

    assert!(server.exports.remove(NAME));
    // An idle connection is closed by the server without any request.
    assert_closed(&mut idle).await;
    let error = victim
        .write(0, b"after!", false)
        .await
        .expect_err("cut off");
    assert!(
        matches!(error, NbdError::ConnectionClosed { .. } | NbdError::Io(_)),
        "{error}"
    );
    assert_eq!(&server.export_bytes()[..6], b"before");
    let error = Client::connect(server.addr, NAME).await.expect_err("gone");
    assert!(matches!(error, NbdError::UnknownExport { .. }), "{error}");
    assert_eq!(
        bystander.read(0, 1).await.expect("other export"),
        vec![0xee]
    );
    assert_eq!(server.exports.names(), vec!["other".to_string()]);
}

// Proves graceful shutdown: requests already received are executed and
// answered after shutdown starts, the connection then closes, serve()
// returns Ok, the listener is gone, and acknowledged writes are in the file.
//
// Method: 48 READs of 1 MiB are far more than the sockets can buffer (the
// client's receive buffer is kept small), so while the client has not
// drained them, most of the server's replies are still waiting to be sent
// when shutdown begins. A small READ after them, which the server answers
// as soon as it has read it, proves that every request was received.
#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let config = vsky_nbd::ServerConfig {
        max_inflight_bytes_per_connection: 128 << 20,
        ..vsky_nbd::ServerConfig::default()
    };
    let mut server = TestServer::start_with(config, false).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    vsky_nbd::client::handshake(&mut stream, crate::util::NAME)
        .await
        .expect("handshake");
    const MIB: u64 = 1 << 20;
    for i in 0..8u64 {
        send_request(&mut stream, CommandType::Write, 0, i, i * MIB, MIB as u32).await;
        stream
            .write_all(&pattern(i as u8 + 1, MIB as usize))
            .await
            .expect("payload");
    }
    for _ in 0..8 {
        assert_eq!(read_reply(&mut stream).await.expect("write reply").error, 0);
    }
    let count = 48u64;
    for i in 0..count {
        send_request(
            &mut stream,
            CommandType::Read,
            0,
            100 + i,
            (i % 8) * MIB,
            MIB as u32,
        )
        .await;
    }
    send_request(&mut stream, CommandType::Read, 0, 999, 0, 4096).await;

    let mut answered = HashSet::new();
    let mut data = vec![0u8; MIB as usize];
    let check = |answered: &mut HashSet<u64>, reply: vsky_nbd::proto::SimpleReply, data: &[u8]| {
        assert_eq!(reply.error, 0);
        let i = reply
            .cookie
            .checked_sub(100)
            .filter(|_| reply.cookie != 999)
            .unwrap_or(0);
        let expected = pattern((i % 8) as u8 + 1, MIB as usize);
        assert!(
            data == &expected[..data.len()],
            "read {} data",
            reply.cookie
        );
        assert!(answered.insert(reply.cookie), "duplicate reply");
    };
    loop {
        let reply = read_reply(&mut stream)
            .await
            .expect("reply before shutdown");
        let length = if reply.cookie == 999 {
            4096
        } else {
            MIB as usize
        };
        stream.read_exact(&mut data[..length]).await.expect("data");
        check(&mut answered, reply, &data[..length]);
        if reply.cookie == 999 {
            break;
        }
    }
    let addr = server.addr;
    let mut in_flight_at_shutdown = 0;
    let shutting_down = tokio::spawn(async move {
        let result = server.shut_down().await;
        (server, result)
    });
    while answered.len() < count as usize + 1 {
        let reply = read_reply(&mut stream)
            .await
            .expect("every received request is answered during shutdown");
        stream.read_exact(&mut data).await.expect("data");
        check(&mut answered, reply, &data);
        in_flight_at_shutdown += 1;
    }
    assert_closed(&mut stream).await;
    // Not an assertion on timing: just visible in the output, to show the
    // test exercised what it claims.
    eprintln!("{in_flight_at_shutdown} replies were still pending at shutdown");
    let (server, result) = shutting_down.await.expect("join");
    result.expect("serve returns Ok after shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
    let stored = server.export_bytes();
    for i in 0..8usize {
        let at = i * MIB as usize;
        assert!(stored[at..at + MIB as usize] == pattern(i as u8 + 1, MIB as usize));
    }
    server.assert_guards_intact();
}

// Proves NBD_CMD_DISC is honoured: the server closes after replying to what
// was in flight, and the client's disconnect() sees a clean close.
#[tokio::test]
async fn disconnect_after_in_flight_requests() {
    let server = TestServer::start().await;
    let mut stream = raw_connection(server.addr).await;
    for i in 0..8u64 {
        send_request(&mut stream, CommandType::Write, 0, i, i * 4096, 4096).await;
        stream
            .write_all(&[i as u8 + 1; 4096])
            .await
            .expect("payload");
    }
    send_request(&mut stream, CommandType::Disconnect, 0, 100, 0, 0).await;
    for _ in 0..8 {
        let reply = read_reply(&mut stream).await.expect("in-flight reply");
        assert_eq!(reply.error, 0);
        assert!(reply.cookie < 8);
    }
    assert_closed(&mut stream).await;
    let stored = server.export_bytes();
    for i in 0..8usize {
        assert!(
            stored[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&b| b == i as u8 + 1)
        );
    }
    let client = Client::connect(server.addr, NAME).await.expect("connect");
    client.disconnect().await.expect("clean disconnect");
}
