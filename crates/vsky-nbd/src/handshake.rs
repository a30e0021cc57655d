//! Server side of the fixed newstyle handshake ("option haggling").
//!
//! [`negotiate`] greets the client, checks its flags, and answers options
//! until one of them selects an export (`NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME`) or the client leaves. Policy decisions that matter
//! for security live here:
//! - `NBD_OPT_LIST` answers an empty list: export names are per-leg secrets
//!   and knowing one is what grants access.
//! - An unknown name gets `NBD_REP_ERR_UNKNOWN`, the same reply as a name that
//!   exists but cannot be opened, so the server is no oracle for names.
//! - Option payloads are bounded ([`proto::MAX_OPTION_BYTES`]) before they are
//!   read, and the number of options per connection is bounded too; the
//!   caller also bounds the handshake's duration.
//! - Structured replies, extended headers, meta contexts and TLS are answered
//!   with `NBD_REP_ERR_UNSUP`, which every client (kernel, qemu, libnbd)
//!   accepts; the transmission phase then uses simple replies only.
//!
//! Reads here are exact (no read-ahead buffer), so the first transmission
//! request is still in the socket when the connection loop takes over.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backing::Backing;
use crate::error::NbdError;
use crate::export::{ExportHandle, ExportTable, Revocation};
use crate::proto::{self, FrameError, InfoRequest, OptionHeader, OptionReplyHeader};

/// Options a client may send before it must pick an export. Real clients send
/// fewer than ten; the bound stops a client from haggling forever.
const MAX_OPTIONS_PER_HANDSHAKE: usize = 256;

/// A connection that has selected an export and entered transmission.
pub(crate) struct Session {
    pub backing: Arc<Backing>,
    pub revocation: Revocation,
}

/// Runs the handshake. `Ok(None)` means the client left politely
/// (`NBD_OPT_ABORT` or end of stream between options).
pub(crate) async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    exports: &ExportTable,
) -> Result<Option<Session>, NbdError> {
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting[16..18]
        .copy_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;

    let client_flags = stream
        .read_u32()
        .await
        .map_err(|e| NbdError::from_read(e, "client flags"))?;
    if client_flags & !proto::CLIENT_FLAGS_KNOWN != 0 {
        return Err(NbdError::UnknownClientFlags {
            flags: client_flags,
        });
    }
    let haggler = Haggler {
        fixed_newstyle: client_flags & proto::CLIENT_FLAG_FIXED_NEWSTYLE != 0,
        no_zeroes: client_flags & proto::CLIENT_FLAG_NO_ZEROES != 0,
        exports,
    };
    haggler.run(stream).await
}

struct Haggler<'a> {
    /// Without fixed newstyle the client cannot parse option replies, so only
    /// `NBD_OPT_EXPORT_NAME` can be served.
    fixed_newstyle: bool,
    /// The client asked to skip the 124 zero bytes after EXPORT_NAME.
    no_zeroes: bool,
    exports: &'a ExportTable,
}

impl Haggler<'_> {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<Option<Session>, NbdError> {
        for _ in 0..MAX_OPTIONS_PER_HANDSHAKE {
            let mut raw = [0u8; proto::OPTION_HEADER_BYTES];
            match stream.read_exact(&mut raw).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let header = OptionHeader::parse(&raw).map_err(|e| option_frame_error(e, &raw))?;
            let mut data = vec![0u8; header.length as usize];
            stream
                .read_exact(&mut data)
                .await
                .map_err(|e| NbdError::from_read(e, "option data"))?;

            if header.option == proto::OPT_EXPORT_NAME {
                return self.export_name(stream, &data).await.map(Some);
            }
            if !self.fixed_newstyle {
                return Err(NbdError::protocol(format!(
                    "option {} from a client without fixed newstyle",
                    header.option
                )));
            }
            match header.option {
                proto::OPT_ABORT => {
                    // The client may already have hung up; the ACK is a courtesy.
                    let _ = reply(stream, header.option, proto::REP_ACK, &[]).await;
                    return Ok(None);
                }
                proto::OPT_LIST => {
                    let reply_type = if data.is_empty() {
                        proto::REP_ACK
                    } else {
                        proto::REP_ERR_INVALID
                    };
                    reply(stream, header.option, reply_type, &[]).await?;
                }
                proto::OPT_INFO | proto::OPT_GO => {
                    if let Some(session) = self.info_or_go(stream, header.option, &data).await? {
                        return Ok(Some(session));
                    }
                }
                // STARTTLS, STRUCTURED_REPLY, meta contexts, EXTENDED_HEADERS
                // and anything newer.
                _ => reply(stream, header.option, proto::REP_ERR_UNSUP, &[]).await?,
            }
        }
        Err(NbdError::protocol(format!(
            "more than {MAX_OPTIONS_PER_HANDSHAKE} options without selecting an export"
        )))
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`. Returns a session only for a
    /// successful GO; INFO (and any refusal) lets haggling continue.
    async fn info_or_go<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        option: u32,
        data: &[u8],
    ) -> Result<Option<Session>, NbdError> {
        let Some(request) = InfoRequest::parse(data) else {
            reply(stream, option, proto::REP_ERR_INVALID, &[]).await?;
            return Ok(None);
        };
        let Some(session) = open_session(self.exports, &request.name).await else {
            reply(stream, option, proto::REP_ERR_UNKNOWN, &[]).await?;
            return Ok(None);
        };
        let geometry = session.backing.geometry();
        let info =
            proto::encode_info_export(geometry.size_bytes, transmission_flags(geometry.read_only));
        reply(stream, option, proto::REP_INFO, &info).await?;
        if request.requests.contains(&proto::INFO_BLOCK_SIZE) {
            let sizes = proto::encode_info_block_size(
                proto::MIN_BLOCK_BYTES,
                proto::PREFERRED_BLOCK_BYTES,
                proto::MAX_PAYLOAD_BYTES,
            );
            reply(stream, option, proto::REP_INFO, &sizes).await?;
        }
        // NBD_INFO_NAME and NBD_INFO_DESCRIPTION are optional; the name is a
        // secret the client already has, and there is no description.
        reply(stream, option, proto::REP_ACK, &[]).await?;
        Ok((option == proto::OPT_GO).then_some(session))
    }

    /// `NBD_OPT_EXPORT_NAME`: no error reply exists, so an unknown name ends
    /// the connection, as the specification requires.
    async fn export_name<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        name: &[u8],
    ) -> Result<Session, NbdError> {
        let Some(session) = open_session(self.exports, name).await else {
            return Err(NbdError::UnknownExport {
                name: "(withheld)".into(),
            });
        };
        let geometry = session.backing.geometry();
        let mut out = Vec::with_capacity(10 + 124);
        out.extend_from_slice(&geometry.size_bytes.to_be_bytes());
        out.extend_from_slice(&transmission_flags(geometry.read_only).to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        stream.write_all(&out).await?;
        Ok(session)
    }
}

/// Looks the name up and opens its backing file. `None` for an unknown name
/// and for an export that cannot be opened alike (see the module docs); the
/// latter is logged with its path, never with its name.
async fn open_session(exports: &ExportTable, name: &[u8]) -> Option<Session> {
    let ExportHandle {
        export,
        write_limit,
        revocation,
    } = exports.lookup(name)?;
    let flag = revocation.flag();
    let export_for_open = Arc::clone(&export);
    let opened =
        tokio::task::spawn_blocking(move || Backing::open(&export_for_open, flag, write_limit))
            .await;
    match opened {
        Ok(Ok(backing)) => Some(Session {
            backing: Arc::new(backing),
            revocation,
        }),
        Ok(Err(error)) => {
            tracing::error!(path = %export.path.display(), %error, "cannot open export's backing file; clients get NBD_REP_ERR_UNKNOWN until it is fixed");
            None
        }
        Err(join_error) => {
            tracing::error!(%join_error, "opening an export's backing file panicked");
            None
        }
    }
}

/// Transmission flags for an export. CAN_MULTI_CONN is true because there is
/// no userspace cache: a FLUSH on any connection is an fdatasync of the one
/// backing file, which covers writes completed on every connection.
pub(crate) fn transmission_flags(read_only: bool) -> u16 {
    let common = proto::TFLAG_HAS_FLAGS
        | proto::TFLAG_SEND_FLUSH
        | proto::TFLAG_CAN_MULTI_CONN
        | proto::TFLAG_SEND_CACHE;
    if read_only {
        common | proto::TFLAG_READ_ONLY
    } else {
        common | proto::TFLAG_SEND_FUA | proto::TFLAG_SEND_TRIM | proto::TFLAG_SEND_WRITE_ZEROES
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let header = OptionReplyHeader {
        option,
        reply_type,
        length: data.len() as u32,
    };
    let mut out = Vec::with_capacity(proto::OPTION_REPLY_HEADER_BYTES + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    stream.write_all(&out).await?;
    Ok(())
}

fn option_frame_error(error: FrameError, raw: &[u8; proto::OPTION_HEADER_BYTES]) -> NbdError {
    match error {
        FrameError::BadMagic { found } => NbdError::BadMagic {
            during: "option haggling",
            expected: proto::IHAVEOPT,
            found,
        },
        FrameError::PayloadTooLarge { length_bytes } => NbdError::TooLarge {
            what: "option",
            length_bytes: u64::from(length_bytes),
            limit_bytes: u64::from(proto::MAX_OPTION_BYTES),
        },
        FrameError::Incomplete { .. } => {
            NbdError::protocol(format!("incomplete option header {raw:02x?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Export;
    use tokio::io::DuplexStream;

    // Proves the advertised flags match what the server implements: writes
    // only on writable exports, multi-conn and flush always.
    #[test]
    fn transmission_flags_follow_read_only() {
        let rw = transmission_flags(false);
        let ro = transmission_flags(true);
        for flag in [
            proto::TFLAG_HAS_FLAGS,
            proto::TFLAG_SEND_FLUSH,
            proto::TFLAG_CAN_MULTI_CONN,
        ] {
            assert_ne!(rw & flag, 0);
            assert_ne!(ro & flag, 0);
        }
        for flag in [
            proto::TFLAG_SEND_FUA,
            proto::TFLAG_SEND_TRIM,
            proto::TFLAG_SEND_WRITE_ZEROES,
        ] {
            assert_ne!(rw & flag, 0);
            assert_eq!(ro & flag, 0);
        }
        assert_eq!(rw & proto::TFLAG_READ_ONLY, 0);
        assert_ne!(ro & proto::TFLAG_READ_ONLY, 0);
        // Never advertised: these need structured replies or are not done.
        for flag in [
            proto::TFLAG_SEND_DF,
            proto::TFLAG_SEND_FAST_ZERO,
            proto::TFLAG_ROTATIONAL,
        ] {
            assert_eq!((rw | ro) & flag, 0);
        }
    }

    /// A table with one 8 KiB export named "secret" over a temp file.
    fn table() -> (ExportTable, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(16384).expect("size");
        let exports = ExportTable::new();
        exports.insert(
            "secret".into(),
            Export {
                path: file.path().to_owned(),
                offset_bytes: 4096,
                size_bytes: 8192,
                read_only: false,
                writable_bytes: None,
            },
        );
        (exports, file)
    }

    /// Starts the server side on one end of a pipe; returns the other end,
    /// positioned after the greeting and with `client_flags` sent.
    async fn start(
        exports: ExportTable,
        client_flags: u32,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<Option<Session>, NbdError>>,
    ) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { negotiate(&mut server, &exports).await });
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).await.expect("greeting");
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(
            proto::read_be_u16(&greeting, 16),
            proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES
        );
        client
            .write_all(&client_flags.to_be_bytes())
            .await
            .expect("flags");
        (client, task)
    }

    async fn send(client: &mut DuplexStream, option: u32, data: &[u8]) {
        let header = OptionHeader {
            option,
            length: data.len() as u32,
        };
        client.write_all(&header.encode()).await.expect("option");
        client.write_all(data).await.expect("option data");
    }

    async fn receive(client: &mut DuplexStream) -> (OptionReplyHeader, Vec<u8>) {
        let mut raw = [0u8; proto::OPTION_REPLY_HEADER_BYTES];
        client.read_exact(&mut raw).await.expect("reply");
        let header = OptionReplyHeader::parse(&raw).expect("reply magic");
        let mut data = vec![0u8; header.length as usize];
        client.read_exact(&mut data).await.expect("reply data");
        (header, data)
    }

    fn go_data(name: &[u8], requests: &[u16]) -> Vec<u8> {
        InfoRequest {
            name: name.to_vec(),
            requests: requests.to_vec(),
        }
        .encode()
    }

    const FIXED: u32 = proto::CLIENT_FLAG_FIXED_NEWSTYLE | proto::CLIENT_FLAG_NO_ZEROES;

    // Proves the option sequence qemu and libnbd use works: unsupported
    // options get ERR_UNSUP and haggling continues, LIST reveals nothing,
    // unknown names get ERR_UNKNOWN, INFO answers with size, flags and block
    // sizes, and GO enters transmission.
    #[tokio::test]
    async fn option_haggling_like_qemu_and_libnbd() {
        let (exports, _file) = table();
        let (mut client, task) = start(exports, FIXED).await;
        for option in [
            proto::OPT_STARTTLS,
            proto::OPT_EXTENDED_HEADERS,
            proto::OPT_STRUCTURED_REPLY,
            proto::OPT_SET_META_CONTEXT,
            proto::OPT_LIST_META_CONTEXT,
            999,
        ] {
            send(&mut client, option, b"ignored payload").await;
            let (reply, _) = receive(&mut client).await;
            assert_eq!(
                (reply.option, reply.reply_type),
                (option, proto::REP_ERR_UNSUP)
            );
        }
        send(&mut client, proto::OPT_LIST, &[]).await;
        let (reply, data) = receive(&mut client).await;
        assert_eq!((reply.reply_type, data.len()), (proto::REP_ACK, 0));
        send(&mut client, proto::OPT_LIST, b"x").await;
        assert_eq!(
            receive(&mut client).await.0.reply_type,
            proto::REP_ERR_INVALID
        );

        for name in [&b"secre"[..], b"secret2", b"", b"SECRET", &[0xff, 0x00]] {
            send(&mut client, proto::OPT_GO, &go_data(name, &[])).await;
            let (reply, data) = receive(&mut client).await;
            assert_eq!(reply.reply_type, proto::REP_ERR_UNKNOWN);
            assert!(data.is_empty(), "no message that could differ per name");
        }
        send(&mut client, proto::OPT_GO, &[0, 0, 0, 9, b'x']).await;
        assert_eq!(
            receive(&mut client).await.0.reply_type,
            proto::REP_ERR_INVALID
        );

        send(
            &mut client,
            proto::OPT_INFO,
            &go_data(b"secret", &[proto::INFO_BLOCK_SIZE]),
        )
        .await;
        let (reply, data) = receive(&mut client).await;
        assert_eq!(reply.reply_type, proto::REP_INFO);
        assert_eq!(
            data,
            proto::encode_info_export(8192, transmission_flags(false))
        );
        let (reply, data) = receive(&mut client).await;
        assert_eq!(reply.reply_type, proto::REP_INFO);
        assert_eq!(
            data,
            proto::encode_info_block_size(1, 4096, proto::MAX_PAYLOAD_BYTES)
        );
        assert_eq!(receive(&mut client).await.0.reply_type, proto::REP_ACK);

        send(&mut client, proto::OPT_GO, &go_data(b"secret", &[])).await;
        let (reply, _) = receive(&mut client).await;
        assert_eq!(reply.reply_type, proto::REP_INFO);
        assert_eq!(receive(&mut client).await.0.reply_type, proto::REP_ACK);
        let session = task.await.expect("join").expect("ok").expect("session");
        assert_eq!(session.backing.geometry().size_bytes, 8192);
    }

    // Proves EXPORT_NAME works for a known name (without the 124 zero bytes
    // when NO_ZEROES was negotiated) and ends the connection for an unknown one.
    #[tokio::test]
    async fn export_name_option() {
        let (exports, _file) = table();
        let (mut client, task) = start(exports.clone(), proto::CLIENT_FLAG_FIXED_NEWSTYLE).await;
        send(&mut client, proto::OPT_EXPORT_NAME, b"secret").await;
        let mut reply = [0u8; 10 + 124];
        client.read_exact(&mut reply).await.expect("reply");
        assert_eq!(proto::read_be_u64(&reply, 0), 8192);
        assert!(task.await.expect("join").expect("ok").is_some());

        let (mut client, task) = start(exports, 0).await;
        send(&mut client, proto::OPT_EXPORT_NAME, b"nope").await;
        assert!(matches!(
            task.await.expect("join"),
            Err(NbdError::UnknownExport { .. })
        ));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }

    // Proves the connection is dropped, without reading or allocating the
    // payload, for unknown client flags, bad option magic and huge options;
    // and that ABORT is acknowledged.
    #[tokio::test]
    async fn hostile_handshakes_are_dropped() {
        let (exports, _file) = table();
        let (_client, task) = start(exports.clone(), 1 << 7).await;
        assert!(matches!(
            task.await.expect("join"),
            Err(NbdError::UnknownClientFlags { .. })
        ));

        let (mut client, task) = start(exports.clone(), FIXED).await;
        let header = OptionHeader {
            option: proto::OPT_GO,
            length: u32::MAX,
        };
        client.write_all(&header.encode()).await.expect("send");
        assert!(matches!(
            task.await.expect("join"),
            Err(NbdError::TooLarge { .. })
        ));

        let (mut client, task) = start(exports.clone(), FIXED).await;
        client.write_all(&[0x42; 16]).await.expect("send");
        assert!(matches!(
            task.await.expect("join"),
            Err(NbdError::BadMagic { .. })
        ));

        let (mut client, task) = start(exports, FIXED).await;
        send(&mut client, proto::OPT_ABORT, &[]).await;
        assert_eq!(receive(&mut client).await.0.reply_type, proto::REP_ACK);
        assert!(task.await.expect("join").expect("ok").is_none());
    }

    // Proves our client handshake interoperates with our server handshake,
    // and reports unknown names as UnknownExport.
    #[tokio::test]
    async fn client_and_server_handshakes_agree() {
        let (exports, _file) = table();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let server_exports = exports.clone();
        let task = tokio::spawn(async move { negotiate(&mut server, &server_exports).await });
        let info = crate::client::handshake_on(&mut client, "secret")
            .await
            .expect("handshake");
        assert_eq!(info.size_bytes, 8192);
        assert_eq!(info.transmission_flags, transmission_flags(false));
        assert!(task.await.expect("join").expect("ok").is_some());

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { negotiate(&mut server, &exports).await });
        let error = crate::client::handshake_on(&mut client, "other")
            .await
            .expect_err("unknown");
        assert!(matches!(error, NbdError::UnknownExport { .. }), "{error}");
        drop(client);
        assert!(task.await.expect("join").expect("ok").is_none());
    }
}
