//! Client side: the handshake the head agent runs before handing a socket to
//! the kernel NBD client, and a small sequential async client.
//!
//! [`handshake`] negotiates exactly what the Linux kernel can take over: fixed
//! newstyle, `NBD_OPT_GO` without information requests (falling back to
//! `NBD_OPT_EXPORT_NAME` for servers without GO), and no structured replies,
//! extended headers or meta contexts, because the kernel parses simple
//! replies only. It reads exactly the bytes of the handshake and nothing
//! more, so the socket is positioned at the start of the transmission phase.
//!
//! [`Client`] runs one request at a time over a handshaken stream. It is meant
//! for tests, tools and the agent's own checks, not for the data path, which
//! is the kernel's.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::NbdError;
use crate::proto::{
    self, CommandType, InfoRequest, OptionHeader, OptionReplyHeader, RequestHeader, SimpleReply,
};

/// What the server said about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size_bytes: u64,
    /// `NBD_FLAG_*` transmission flags, to pass to the kernel unchanged.
    pub transmission_flags: u16,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.transmission_flags & proto::TFLAG_READ_ONLY != 0
    }

    pub fn can_multi_conn(&self) -> bool {
        self.transmission_flags & proto::TFLAG_CAN_MULTI_CONN != 0
    }
}

/// Replies to one option a client accepts before calling the server broken.
const MAX_REPLIES_PER_OPTION: usize = 64;
/// Longest option reply payload the client reads (an error message or an
/// `NBD_REP_INFO`); longer means a broken server.
const MAX_OPTION_REPLY_BYTES: u32 = 64 * 1024;

/// Fixed-newstyle handshake with NBD_OPT_GO (fallback NBD_OPT_EXPORT_NAME),
/// no structured replies, so the socket can be handed to the Linux kernel NBD
/// client afterwards. Also sets TCP_NODELAY, which the kernel wants.
pub async fn handshake(stream: &mut TcpStream, export_name: &str) -> Result<ExportInfo, NbdError> {
    stream.set_nodelay(true)?;
    handshake_on(stream, export_name).await
}

/// [`handshake`] over any byte stream; unit tests run it over in-memory pipes.
pub(crate) async fn handshake_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export_name: &str,
) -> Result<ExportInfo, NbdError> {
    if export_name.len() > proto::MAX_NAME_BYTES {
        return Err(NbdError::InvalidRequest {
            detail: format!(
                "export name of {} bytes exceeds the protocol's {} bytes",
                export_name.len(),
                proto::MAX_NAME_BYTES
            ),
        });
    }
    let mut greeting = [0u8; 18];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(|e| NbdError::from_read(e, "the server greeting"))?;
    let magic = proto::read_be_u64(&greeting, 0);
    if magic != proto::NBD_MAGIC {
        return Err(NbdError::BadMagic {
            during: "the server greeting",
            expected: proto::NBD_MAGIC,
            found: magic,
        });
    }
    let newstyle = proto::read_be_u64(&greeting, 8);
    if newstyle != proto::IHAVEOPT {
        return Err(NbdError::BadMagic {
            during: "the server greeting (oldstyle servers are not supported)",
            expected: proto::IHAVEOPT,
            found: newstyle,
        });
    }
    let server_flags = proto::read_be_u16(&greeting, 16);
    if server_flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::NotFixedNewstyle {
            flags: server_flags,
        });
    }
    let no_zeroes = server_flags & proto::FLAG_NO_ZEROES != 0;
    let mut client_flags = proto::CLIENT_FLAG_FIXED_NEWSTYLE;
    if no_zeroes {
        client_flags |= proto::CLIENT_FLAG_NO_ZEROES;
    }
    stream.write_all(&client_flags.to_be_bytes()).await?;

    match go(stream, export_name).await? {
        Some(info) => Ok(info),
        None => export_name_option(stream, export_name, no_zeroes).await,
    }
}

/// Sends `NBD_OPT_GO`; `None` if the server does not support it.
async fn go<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export_name: &str,
) -> Result<Option<ExportInfo>, NbdError> {
    // No information requests: like nbd-client, we take the default block
    // size constraints, which the kernel handles itself.
    let data = InfoRequest {
        name: export_name.as_bytes().to_vec(),
        requests: Vec::new(),
    }
    .encode();
    send_option(stream, proto::OPT_GO, &data).await?;

    let mut info = None;
    for _ in 0..MAX_REPLIES_PER_OPTION {
        let (header, payload) = read_option_reply(stream, proto::OPT_GO).await?;
        match header.reply_type {
            proto::REP_INFO => {
                if payload.len() >= 2 && proto::read_be_u16(&payload, 0) == proto::INFO_EXPORT {
                    if payload.len() != 12 {
                        return Err(NbdError::protocol(format!(
                            "NBD_INFO_EXPORT of {} bytes instead of 12",
                            payload.len()
                        )));
                    }
                    info = Some(ExportInfo {
                        size_bytes: proto::read_be_u64(&payload, 2),
                        transmission_flags: proto::read_be_u16(&payload, 10),
                    });
                }
                // Other information types are optional; skip them.
            }
            proto::REP_ACK => {
                return info.map(Some).ok_or_else(|| {
                    NbdError::protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
                });
            }
            proto::REP_ERR_UNSUP => return Ok(None),
            proto::REP_ERR_UNKNOWN => {
                return Err(NbdError::UnknownExport {
                    name: export_name.to_owned(),
                });
            }
            reply_type if reply_type & proto::REP_FLAG_ERROR != 0 => {
                return Err(NbdError::OptionRejected {
                    option: proto::OPT_GO,
                    reply_type,
                    reply: proto::reply_type_name(reply_type),
                    message: String::from_utf8_lossy(&payload).into_owned(),
                });
            }
            other => {
                return Err(NbdError::protocol(format!(
                    "unexpected reply type {other:#x} to NBD_OPT_GO"
                )));
            }
        }
    }
    Err(NbdError::protocol(format!(
        "more than {MAX_REPLIES_PER_OPTION} replies to NBD_OPT_GO"
    )))
}

/// The pre-GO way to select an export. The server closes the connection for
/// an unknown name, which is reported as [`NbdError::UnknownExport`].
async fn export_name_option<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export_name: &str,
    no_zeroes: bool,
) -> Result<ExportInfo, NbdError> {
    send_option(stream, proto::OPT_EXPORT_NAME, export_name.as_bytes()).await?;
    let mut reply = [0u8; 10 + 124];
    let length = if no_zeroes { 10 } else { reply.len() };
    match stream.read_exact(&mut reply[..length]).await {
        Ok(_) => Ok(ExportInfo {
            size_bytes: proto::read_be_u64(&reply, 0),
            transmission_flags: proto::read_be_u16(&reply, 8),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(NbdError::UnknownExport {
            name: export_name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

async fn send_option<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let header = OptionHeader {
        option,
        length: data.len() as u32,
    };
    let mut out = Vec::with_capacity(proto::OPTION_HEADER_BYTES + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

async fn read_option_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    option: u32,
) -> Result<(OptionReplyHeader, Vec<u8>), NbdError> {
    let mut raw = [0u8; proto::OPTION_REPLY_HEADER_BYTES];
    stream
        .read_exact(&mut raw)
        .await
        .map_err(|e| NbdError::from_read(e, "an option reply"))?;
    let header = OptionReplyHeader::parse(&raw).map_err(|_| NbdError::BadMagic {
        during: "an option reply",
        expected: proto::OPTION_REPLY_MAGIC,
        found: proto::read_be_u64(&raw, 0),
    })?;
    if header.option != option {
        return Err(NbdError::protocol(format!(
            "reply for option {} while waiting for option {option}",
            header.option
        )));
    }
    if header.length > MAX_OPTION_REPLY_BYTES {
        return Err(NbdError::TooLarge {
            what: "option reply",
            length_bytes: u64::from(header.length),
            limit_bytes: u64::from(MAX_OPTION_REPLY_BYTES),
        });
    }
    let mut payload = vec![0u8; header.length as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| NbdError::from_read(e, "an option reply"))?;
    Ok((header, payload))
}

/// A simple async NBD client: one request at a time over a handshaken stream.
#[derive(Debug)]
pub struct Client {
    stream: BufStream<TcpStream>,
    info: ExportInfo,
    next_cookie: u64,
}

impl Client {
    /// Connects, runs [`handshake`], and returns a client ready for I/O.
    pub async fn connect(addr: impl ToSocketAddrs, export_name: &str) -> Result<Self, NbdError> {
        let mut stream = TcpStream::connect(addr).await?;
        let info = handshake(&mut stream, export_name).await?;
        Ok(Self::from_handshaken(stream, info))
    }

    /// Wraps a stream on which [`handshake`] already succeeded.
    pub fn from_handshaken(stream: TcpStream, info: ExportInfo) -> Self {
        Self {
            stream: BufStream::new(stream),
            info,
            next_cookie: 1,
        }
    }

    pub fn info(&self) -> ExportInfo {
        self.info
    }

    /// Reads `length` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, NbdError> {
        if length > proto::MAX_PAYLOAD_BYTES {
            return Err(NbdError::InvalidRequest {
                detail: format!(
                    "READ of {length} bytes exceeds the {} byte maximum",
                    proto::MAX_PAYLOAD_BYTES
                ),
            });
        }
        let reply = self
            .request(CommandType::Read, 0, offset, length, &[])
            .await?;
        check(reply, CommandType::Read, offset, u64::from(length))?;
        let mut data = vec![0u8; length as usize];
        self.stream
            .read_exact(&mut data)
            .await
            .map_err(|e| NbdError::from_read(e, "NBD_CMD_READ data"))?;
        Ok(data)
    }

    /// Writes `data` at `offset`; with `fua` the server replies only once the
    /// data is durable.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let length = u32::try_from(data.len())
            .ok()
            .filter(|&length| length <= proto::MAX_PAYLOAD_BYTES)
            .ok_or_else(|| NbdError::InvalidRequest {
                detail: format!(
                    "WRITE of {} bytes exceeds the {} byte maximum",
                    data.len(),
                    proto::MAX_PAYLOAD_BYTES
                ),
            })?;
        let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        let reply = self
            .request(CommandType::Write, flags, offset, length, data)
            .await?;
        check(reply, CommandType::Write, offset, u64::from(length))
    }

    /// Makes every write acknowledged so far durable.
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        let reply = self.request(CommandType::Flush, 0, 0, 0, &[]).await?;
        check(reply, CommandType::Flush, 0, 0)
    }

    /// Discards a range; VastSky servers make it read back as zeroes.
    pub async fn trim(&mut self, offset: u64, length: u32, fua: bool) -> Result<(), NbdError> {
        let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        let reply = self
            .request(CommandType::Trim, flags, offset, length, &[])
            .await?;
        check(reply, CommandType::Trim, offset, u64::from(length))
    }

    /// Makes a range read as zeroes; `no_hole` keeps it allocated.
    pub async fn write_zeroes(
        &mut self,
        offset: u64,
        length: u32,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), NbdError> {
        let mut flags = 0;
        if no_hole {
            flags |= proto::CMD_FLAG_NO_HOLE;
        }
        if fua {
            flags |= proto::CMD_FLAG_FUA;
        }
        let reply = self
            .request(CommandType::WriteZeroes, flags, offset, length, &[])
            .await?;
        check(reply, CommandType::WriteZeroes, offset, u64::from(length))
    }

    /// Sends `NBD_CMD_DISC` and waits for the server to close the connection,
    /// which it does after finishing every in-flight request.
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        let header = RequestHeader {
            flags: 0,
            command: CommandType::Disconnect,
            cookie: self.next_cookie,
            offset: 0,
            length: 0,
        };
        self.stream.write_all(&header.encode()).await?;
        self.stream.flush().await?;
        let mut rest = [0u8; 1];
        // Anything but a clean close means a confused server; say so.
        match self.stream.read(&mut rest).await? {
            0 => Ok(()),
            _ => Err(NbdError::protocol("server sent data after NBD_CMD_DISC")),
        }
    }

    async fn request(
        &mut self,
        command: CommandType,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> Result<SimpleReply, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let header = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&header.encode()).await?;
        self.stream.write_all(data).await?;
        self.stream.flush().await?;
        let mut raw = [0u8; proto::SIMPLE_REPLY_BYTES];
        self.stream
            .read_exact(&mut raw)
            .await
            .map_err(|e| NbdError::from_read(e, command.name()))?;
        let reply = SimpleReply::parse(&raw).map_err(|_| NbdError::BadMagic {
            during: "a transmission reply (structured replies are never negotiated)",
            expected: u64::from(proto::SIMPLE_REPLY_MAGIC),
            found: u64::from(proto::read_be_u32(&raw, 0)),
        })?;
        if reply.cookie != cookie {
            return Err(NbdError::protocol(format!(
                "reply cookie {:#x} for request cookie {cookie:#x}",
                reply.cookie
            )));
        }
        Ok(reply)
    }
}

fn check(
    reply: SimpleReply,
    command: CommandType,
    offset: u64,
    length: u64,
) -> Result<(), NbdError> {
    if reply.error == 0 {
        return Ok(());
    }
    Err(NbdError::Request {
        command: command.name(),
        offset,
        length,
        error: reply.error,
    })
}
