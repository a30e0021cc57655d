//! Our `Client` against `serve`: every command, bounds, FUA, read-only,
//! multiple connections, and confinement to the export's range.

use vsky_nbd::NbdError;
use vsky_nbd::client::Client;
use vsky_nbd::proto;

use crate::util::{NAME, SIZE, TestServer, pattern};

fn request_error(result: Result<impl std::fmt::Debug, NbdError>) -> u32 {
    match result {
        Err(NbdError::Request { error, .. }) => error,
        other => panic!("expected an NBD error reply, got {other:?}"),
    }
}

// Proves writes land at offset_bytes + offset in the backing file and read
// back, at the first and last bytes of the export and unaligned, with and
// without FUA; and that the handshake reports the export's size and flags.
#[tokio::test]
async fn read_write_round_trip_inside_the_range() {
    let server = TestServer::start().await;
    let mut client = Client::connect(server.addr, NAME).await.expect("connect");
    let info = client.info();
    assert_eq!(info.size_bytes, SIZE);
    assert!(!info.read_only());
    assert!(info.can_multi_conn());
    for flag in [
        proto::TFLAG_SEND_FLUSH,
        proto::TFLAG_SEND_FUA,
        proto::TFLAG_SEND_TRIM,
        proto::TFLAG_SEND_WRITE_ZEROES,
    ] {
        assert_ne!(info.transmission_flags & flag, 0, "flag {flag:#x}");
    }

    let cases: &[(u64, usize, bool)] = &[
        (0, 4096, false),
        (SIZE - 4096, 4096, true),
        (12345, 100_001, false),
        (SIZE - 1, 1, true),
        (2 * 1024 * 1024, 4 * 1024 * 1024, false),
    ];
    for (i, &(offset, length, fua)) in cases.iter().enumerate() {
        let data = pattern(i as u8, length);
        client.write(offset, &data, fua).await.expect("write");
        let back = client.read(offset, length as u32).await.expect("read");
        assert!(back == data, "read back differs at offset {offset}");
    }
    client.flush().await.expect("flush");
    // The backing file holds the same bytes at BASE + offset.
    let stored = server.export_bytes();
    let (offset, length, _) = cases[2];
    assert!(stored[offset as usize..offset as usize + length] == pattern(2, length)[..]);
    client.disconnect().await.expect("disconnect");
    server.assert_guards_intact();
}

// Proves TRIM and WRITE_ZEROES (with and without NO_HOLE, with FUA) make
// ranges read back as zeroes and do not touch neighbouring bytes.
#[tokio::test]
async fn trim_and_write_zeroes_read_back_as_zeroes() {
    let server = TestServer::start().await;
    let mut client = Client::connect(server.addr, NAME).await.expect("connect");
    let everything = pattern(9, SIZE as usize);
    for chunk in 0..(SIZE / (1 << 20)) {
        let at = (chunk << 20) as usize;
        client
            .write(at as u64, &everything[at..at + (1 << 20)], false)
            .await
            .expect("fill");
    }
    client.trim(4096, 65536, false).await.expect("trim aligned");
    client
        .trim(100_003, 7777, true)
        .await
        .expect("trim unaligned");
    client
        .write_zeroes(1 << 20, 1 << 20, false, false)
        .await
        .expect("write_zeroes may punch");
    client
        .write_zeroes((3 << 20) + 5, 70_000, true, true)
        .await
        .expect("write_zeroes no hole");
    client
        .write_zeroes(SIZE - 10, 10, true, false)
        .await
        .expect("at the end");
    let zeroed: &[(u64, u64)] = &[
        (4096, 65536),
        (100_003, 7777),
        (1 << 20, 1 << 20),
        ((3 << 20) + 5, 70_000),
        (SIZE - 10, 10),
    ];
    let mut expected = everything.clone();
    for &(offset, length) in zeroed {
        expected[offset as usize..(offset + length) as usize].fill(0);
    }
    client.flush().await.expect("flush");
    let mut actual = Vec::with_capacity(SIZE as usize);
    for chunk in 0..(SIZE / (1 << 20)) {
        actual.extend(client.read(chunk << 20, 1 << 20).await.expect("read"));
    }
    assert!(
        actual == expected,
        "zeroed ranges or their neighbours are wrong"
    );
    assert!(server.export_bytes() == expected);
    client.disconnect().await.expect("disconnect");
    server.assert_guards_intact();
}

// Proves out-of-range and invalid requests get the specified errors, touch
// nothing, and leave the connection usable.
#[tokio::test]
async fn out_of_range_requests_fail_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut client = Client::connect(server.addr, NAME).await.expect("connect");
    assert_eq!(request_error(client.read(SIZE, 1).await), proto::EINVAL);
    assert_eq!(request_error(client.read(SIZE - 1, 2).await), proto::EINVAL);
    assert_eq!(request_error(client.read(u64::MAX, 1).await), proto::EINVAL);
    assert_eq!(
        request_error(client.read(u64::MAX - 511, 512).await),
        proto::EINVAL
    );
    assert_eq!(request_error(client.read(0, 0).await), proto::EINVAL);
    assert_eq!(
        request_error(client.write(SIZE - 1, &[1, 2], false).await),
        proto::ENOSPC
    );
    assert_eq!(
        request_error(client.write(u64::MAX - 1, &[1, 2, 3], true).await),
        proto::ENOSPC
    );
    assert_eq!(
        request_error(client.trim(SIZE, 1, false).await),
        proto::EINVAL
    );
    assert_eq!(
        request_error(client.write_zeroes(SIZE - 1, 4096, false, false).await),
        proto::ENOSPC
    );
    assert_eq!(
        request_error(client.write_zeroes(u64::MAX, u32::MAX, true, false).await),
        proto::ENOSPC
    );
    // Our client refuses to send an oversized READ at all.
    assert!(matches!(
        client.read(0, proto::MAX_PAYLOAD_BYTES + 1).await,
        Err(NbdError::InvalidRequest { .. })
    ));
    // Still usable.
    client.write(0, b"still here", false).await.expect("write");
    assert_eq!(client.read(0, 10).await.expect("read"), b"still here");
    client.disconnect().await.expect("disconnect");
    server.assert_guards_intact();
    assert!(server.export_bytes()[10..].iter().all(|&b| b == 0));
}

// Proves a read-only export advertises READ_ONLY, serves reads, refuses
// every data-changing command with EPERM, and changes nothing.
#[tokio::test]
async fn read_only_export_refuses_changes() {
    let server = TestServer::start_with(vsky_nbd::ServerConfig::default(), true).await;
    let mut client = Client::connect(server.addr, NAME).await.expect("connect");
    assert!(client.info().read_only());
    assert_eq!(client.info().transmission_flags & proto::TFLAG_SEND_TRIM, 0);
    assert_eq!(client.read(0, 4096).await.expect("read"), vec![0; 4096]);
    assert_eq!(
        request_error(client.write(0, &[1], false).await),
        proto::EPERM
    );
    assert_eq!(
        request_error(client.trim(0, 4096, false).await),
        proto::EPERM
    );
    assert_eq!(
        request_error(client.write_zeroes(0, 4096, false, false).await),
        proto::EPERM
    );
    client.flush().await.expect("flush is harmless");
    client.disconnect().await.expect("disconnect");
    assert!(server.export_bytes().iter().all(|&b| b == 0));
    server.assert_guards_intact();
}

// Proves a write limit set while a connection is open binds that connection
// at once: writes, trims and zeroing that reach past it get EPERM and change
// nothing, while the front stays writable and reads and flushes go on; and
// lifting it lets writes through again, all on the same connection.
#[tokio::test]
async fn a_write_limit_binds_open_connections() {
    let server = TestServer::start().await;
    let mut client = Client::connect(server.addr, NAME).await.expect("connect");
    client
        .write(8192, b"data", false)
        .await
        .expect("before the limit");
    assert_eq!(
        server.exports.set_writable_bytes(NAME, Some(4096)),
        Some(None)
    );
    assert!(!client.info().read_only(), "the front stays writable");
    client.write(0, b"superblock", true).await.expect("front");
    for error in [
        request_error(client.write(4090, b"straddles", false).await),
        request_error(client.write(8192, b"DATA", true).await),
        request_error(client.trim(4096, 4096, false).await),
        request_error(client.write_zeroes(0, 8192, false, false).await),
    ] {
        assert_eq!(error, proto::EPERM);
    }
    client.flush().await.expect("flush");
    assert_eq!(client.read(8192, 4).await.expect("read"), b"data");
    let bytes = server.export_bytes();
    assert_eq!(&bytes[..10], b"superblock");
    assert_eq!(&bytes[8192..8196], b"data");
    assert!(bytes[4090..8192].iter().all(|&b| b == 0));
    server.exports.set_writable_bytes(NAME, None);
    client.write(8192, b"DATA", false).await.expect("lifted");
    assert_eq!(client.read(8192, 4).await.expect("read"), b"DATA");
    client.disconnect().await.expect("disconnect");
    server.assert_guards_intact();
}

// Proves what CAN_MULTI_CONN promises: a write acknowledged on one connection
// and flushed is visible on another.
#[tokio::test]
async fn writes_are_visible_across_connections() {
    let server = TestServer::start().await;
    let mut first = Client::connect(server.addr, NAME).await.expect("connect");
    let mut second = Client::connect(server.addr, NAME).await.expect("connect");
    first.write(777, b"shared", true).await.expect("write");
    first.flush().await.expect("flush");
    assert_eq!(second.read(777, 6).await.expect("read"), b"shared");
    first.disconnect().await.expect("disconnect");
    second.disconnect().await.expect("disconnect");
}

// Proves unknown export names are refused without revealing anything, and
// a backing file that cannot be opened looks exactly the same to clients.
#[tokio::test]
async fn unknown_and_broken_exports_are_indistinguishable() {
    let server = TestServer::start().await;
    server.exports.insert(
        "broken".into(),
        vsky_nbd::Export {
            path: "/nonexistent/vsky/chunk".into(),
            offset_bytes: 0,
            size_bytes: 4096,
            read_only: false,
            writable_bytes: None,
        },
    );
    for name in ["", "leg-7f3a9c", "broken", &format!("{NAME} ")] {
        let error = Client::connect(server.addr, name)
            .await
            .expect_err("refused");
        assert!(
            matches!(error, NbdError::UnknownExport { .. }),
            "{name:?}: {error}"
        );
    }
    server.assert_serves_good_client().await;
}
