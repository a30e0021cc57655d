//! External clients against `serve`: qemu-io, qemu-img, nbdinfo, nbdcopy.
//! These are the clients the issue names; each must work unmodified.

use crate::util::{NAME, SIZE, TestServer, pattern, run_tool, run_tool_status};

// Proves qemu's NBD client (structured replies refused, GO with block sizes)
// writes and reads back a pattern, including discard and write-zeroes.
#[tokio::test]
async fn qemu_io_writes_and_reads_back() {
    let server = TestServer::start().await;
    let uri = server.uri();
    let output = run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "aio_write -P 0xcd 1M 64k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0xcd 1M 64k",
            "-c",
            "discard 0 64k",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "write -z 64k 64k",
            "-c",
            "read -P 0 64k 64k",
            "-c",
            "write -f -P 0x11 8188k 4k",
            "-c",
            "read -P 0x11 8188k 4k",
        ],
    )
    .await;
    // qemu-io reports pattern mismatches on stdout without failing.
    assert!(!output.contains("Pattern verification failed"), "{output}");
    let stored = server.export_bytes();
    assert!(stored[..65536].iter().all(|&b| b == 0));
    assert!(stored[131072..1 << 20].iter().all(|&b| b == 0xab));
    assert!(stored[SIZE as usize - 4096..].iter().all(|&b| b == 0x11));
    server.assert_guards_intact();
}

// Proves qemu-img can copy a disk image onto the export and back, and that
// qemu-img compare agrees byte for byte.
#[tokio::test]
async fn qemu_img_convert_and_compare() {
    let server = TestServer::start().await;
    let uri = server.uri();
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("source.raw");
    std::fs::write(&source, pattern(0x3c, SIZE as usize)).expect("source");
    let source = source.to_str().expect("utf-8 path");
    run_tool(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", source, &uri],
    )
    .await;
    run_tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", source, &uri],
    )
    .await;
    let copy = dir.path().join("copy.raw");
    let copy = copy.to_str().expect("utf-8 path");
    run_tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, copy],
    )
    .await;
    assert!(std::fs::read(copy).expect("copy") == pattern(0x3c, SIZE as usize));
    assert!(server.export_bytes() == pattern(0x3c, SIZE as usize));
    server.assert_guards_intact();
}

// Proves nbdinfo (libnbd) sees the export's size and flags, that listing
// exports reveals no name, and that a wrong name is refused.
#[tokio::test]
async fn nbdinfo_shows_the_export_but_never_lists_names() {
    let server = TestServer::start().await;
    let output = run_tool("nbdinfo", &[&server.uri()]).await;
    assert!(output.contains(&format!("export-size: {SIZE}")), "{output}");
    assert!(output.contains("can_multi_conn: true"), "{output}");
    assert!(output.contains("can_fua: true"), "{output}");
    assert!(output.contains("is_read_only: false"), "{output}");

    let listing = format!("nbd://{}", server.addr);
    let output = run_tool_status("nbdinfo", &["--list", &listing]).await;
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !everything.contains(NAME),
        "export name leaked: {everything}"
    );
    assert!(
        !everything.contains("leg-"),
        "export name leaked: {everything}"
    );

    let wrong = format!("nbd://{}/leg-guess", server.addr);
    let output = run_tool_status("nbdinfo", &[&wrong]).await;
    assert!(!output.status.success(), "nbdinfo accepted an unknown name");
}

// Proves nbdcopy (libnbd, multi-connection and many requests in flight)
// copies a file onto the export and back without a byte changing.
#[tokio::test]
async fn nbdcopy_round_trip() {
    let server = TestServer::start().await;
    let uri = server.uri();
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("source.raw");
    std::fs::write(&source, pattern(0x71, SIZE as usize)).expect("source");
    let source = source.to_str().expect("utf-8 path");
    run_tool("nbdcopy", &["--flush", source, &uri]).await;
    assert!(server.export_bytes() == pattern(0x71, SIZE as usize));
    let copy = dir.path().join("copy.raw");
    let copy = copy.to_str().expect("utf-8 path");
    run_tool("nbdcopy", &[&uri, copy]).await;
    assert!(std::fs::read(copy).expect("copy") == pattern(0x71, SIZE as usize));
    server.assert_guards_intact();
}
