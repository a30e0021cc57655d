//! Malformed and abusive clients. Each test ends by proving the server still
//! serves a well-behaved client and that no byte outside the export changed.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vsky_nbd::proto::{self, CommandType, OptionHeader};

use crate::util::{SIZE, TestServer, assert_closed, raw_connection, read_reply, send_request};

/// Connects and consumes the 18-byte greeting.
async fn greeted(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).await.expect("greeting");
    stream
}

// Proves unknown client flags, a garbage option magic and a huge option
// length each end the connection at once (the huge payload is never read:
// the server closes while the client has sent only the header).
#[tokio::test]
async fn bad_handshakes_are_dropped() {
    let server = TestServer::start().await;

    let mut stream = greeted(&server).await;
    stream
        .write_all(&0xffff_fff0u32.to_be_bytes())
        .await
        .expect("flags");
    assert_closed(&mut stream).await;

    let mut stream = greeted(&server).await;
    stream.write_all(&1u32.to_be_bytes()).await.expect("flags");
    stream
        .write_all(b"GARBAGE!GARBAGE!")
        .await
        .expect("garbage");
    assert_closed(&mut stream).await;

    let mut stream = greeted(&server).await;
    stream.write_all(&3u32.to_be_bytes()).await.expect("flags");
    let huge = OptionHeader {
        option: proto::OPT_GO,
        length: u32::MAX,
    };
    stream.write_all(&huge.encode()).await.expect("header");
    assert_closed(&mut stream).await;

    // Not NBD at all: an HTTP request instead of client flags and options.
    let mut stream = greeted(&server).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("http");
    assert_closed(&mut stream).await;

    server.assert_serves_good_client().await;
}

// Proves a request with a bad magic closes the connection.
#[tokio::test]
async fn bad_request_magic_closes_the_connection() {
    let server = TestServer::start().await;
    let mut stream = raw_connection(server.addr).await;
    stream.write_all(&[0xab; 28]).await.expect("garbage");
    assert_closed(&mut stream).await;
    server.assert_serves_good_client().await;
}

// Proves length 0xFFFFFFFF READ/TRIM/CACHE get EINVAL without the server
// allocating 4 GiB, offsets near u64::MAX get errors, unknown commands and
// flags get EINVAL, and the connection keeps working throughout.
#[tokio::test]
async fn absurd_lengths_and_offsets_get_errors() {
    let server = TestServer::start().await;
    let mut stream = raw_connection(server.addr).await;
    let cases: &[(CommandType, u16, u64, u32, u32)] = &[
        (CommandType::Read, 0, 0, u32::MAX, proto::EINVAL),
        (CommandType::Read, 0, u64::MAX - 10, 4096, proto::EINVAL),
        (CommandType::Trim, 0, 0, u32::MAX, proto::EINVAL),
        (CommandType::Trim, 0, u64::MAX, 1, proto::EINVAL),
        (
            CommandType::WriteZeroes,
            0,
            u64::MAX - 1,
            u32::MAX,
            proto::ENOSPC,
        ),
        (CommandType::Cache, 0, 0, u32::MAX, proto::EINVAL),
        (CommandType::BlockStatus, 0, 0, 512, proto::EINVAL),
        (CommandType::Unknown(0xbeef), 0, 0, 0, proto::EINVAL),
        (CommandType::Read, 0x8000, 0, 512, proto::EINVAL),
        (CommandType::Flush, 0, 5, 0, proto::EINVAL),
    ];
    for (cookie, &(command, flags, offset, length, error)) in cases.iter().enumerate() {
        send_request(&mut stream, command, flags, cookie as u64, offset, length).await;
        let reply = read_reply(&mut stream).await.expect("a reply, not a close");
        assert_eq!(
            (reply.cookie, reply.error),
            (cookie as u64, error),
            "{command:?} offset {offset} length {length}"
        );
    }
    // A WRITE past the end is refused after its payload is consumed, so the
    // stream stays in sync.
    send_request(&mut stream, CommandType::Write, 0, 100, SIZE - 2, 4).await;
    stream.write_all(&[9, 9, 9, 9]).await.expect("payload");
    let reply = read_reply(&mut stream).await.expect("reply");
    assert_eq!((reply.cookie, reply.error), (100, proto::ENOSPC));
    send_request(&mut stream, CommandType::Read, 0, 101, SIZE - 2, 2).await;
    let reply = read_reply(&mut stream).await.expect("reply");
    assert_eq!((reply.cookie, reply.error), (101, 0));
    let mut data = [1u8; 2];
    stream.read_exact(&mut data).await.expect("data");
    assert_eq!(data, [0, 0], "the refused write must not have landed");
    server.assert_serves_good_client().await;
}

// Proves a WRITE announcing a 4 GiB payload closes the connection (the
// payload cannot be skipped) rather than being buffered.
#[tokio::test]
async fn oversized_write_closes_the_connection() {
    let server = TestServer::start().await;
    let mut stream = raw_connection(server.addr).await;
    send_request(&mut stream, CommandType::Write, 0, 1, 0, u32::MAX).await;
    stream.write_all(&[0x77; 4096]).await.expect("some payload");
    assert_closed(&mut stream).await;
    assert!(server.export_bytes().iter().all(|&b| b == 0));
    server.assert_serves_good_client().await;
}

// Proves a WRITE whose payload is cut short by a disconnect writes nothing,
// and that clients vanishing with requests in flight do not hurt the server.
#[tokio::test]
async fn truncated_write_and_dropped_connections() {
    let server = TestServer::start().await;
    let mut stream = raw_connection(server.addr).await;
    send_request(&mut stream, CommandType::Write, 0, 1, 0, 65536).await;
    stream
        .write_all(&[0x66; 1000])
        .await
        .expect("partial payload");
    drop(stream);

    for _ in 0..8 {
        let mut stream = raw_connection(server.addr).await;
        for cookie in 0..64 {
            send_request(
                &mut stream,
                CommandType::Read,
                0,
                cookie,
                cookie * 65536,
                65536,
            )
            .await;
        }
        // Half a header, then gone.
        stream
            .write_all(&[0x25, 0x60, 0x95])
            .await
            .expect("partial header");
        drop(stream);
    }
    server.assert_serves_good_client().await;
    assert!(
        server.export_bytes()[..SIZE as usize - 512]
            .iter()
            .all(|&b| b == 0),
        "a truncated write must not be applied"
    );
}

// Proves the connection cap holds: with max_connections = 1 a second client
// is not even greeted while the first is connected, and is served once the
// first leaves.
#[tokio::test]
async fn connection_cap_is_enforced() {
    let config = vsky_nbd::ServerConfig {
        max_connections: 1,
        ..vsky_nbd::ServerConfig::default()
    };
    let server = TestServer::start_with(config, false).await;
    let first = raw_connection(server.addr).await;
    let mut second = TcpStream::connect(server.addr).await.expect("tcp connect");
    let mut byte = [0u8; 1];
    // A negative check: it can only miss a bug on a very slow machine, never
    // fail a correct server.
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        second.read_exact(&mut byte),
    )
    .await;
    assert!(early.is_err(), "second client was greeted above the cap");
    drop(first);
    second
        .read_exact(&mut byte)
        .await
        .expect("greeted after the first left");
    assert_eq!(byte[0], b'N');
}
