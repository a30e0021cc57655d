//! The transmission phase of one connection.
//!
//! After the handshake, a connection is served by its own OS thread (the
//! *connection thread*), with an async *supervisor* task beside it:
//! - The connection thread reads requests with blocking reads through
//!   [`RequestReader`], validates them into a [`Command`], and runs the cheap
//!   ones itself: small READs found in the page cache (`RWF_NOWAIT`), small
//!   plain WRITEs (a copy into the page cache) and refusals. Large transfers
//!   and everything that may wait on the device (READs that miss the cache,
//!   FUA writes, FLUSH, TRIM, WRITE_ZEROES) go to tokio's blocking pool, so
//!   many run at once and the thread keeps reading. Every request sends its
//!   own simple reply through the [`ReplySink`], in completion order (the
//!   cookie tells the client which is which).
//! - The supervisor turns server shutdown and export removal into socket
//!   shutdowns, which is what wakes a thread blocked reading.
//!
//! Why a thread and not an async loop: the first version was an async loop
//! handing every request to the blocking pool and every reply to a writer
//! task. Profiles of 4 KiB random writes showed most of the server's CPU in
//! context switches: two thread wake-ups per request where nbdkit has one,
//! and it ran at 0.7x nbdkit's rate. Here the thread the kernel wakes for
//! incoming data does the work, and small random I/O beats nbdkit (see
//! `bench/README.md`).
//!
//! Bounds: a budget caps requests in flight, a second one the bytes of
//! payload held in memory (WRITE data read but not yet written, READ data not
//! yet sent). Both are released only once the reply is on the socket, so a
//! client that stops reading replies stalls its own connection, not others.
//!
//! Endings: on `NBD_CMD_DISC`, end of stream or server shutdown, the thread
//! stops reading, waits until every in-flight request has replied, closes
//! the socket, and then makes completed writes durable (unless a FLUSH
//! already covered them) before the connection counts as ended. When the
//! export is removed the socket is cut at once instead; requests still
//! queued fail their revocation check before touching the file and their
//! replies fail.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use vsky_sync::{CondvarExt, LockExt};

use crate::backing::Backing;
use crate::buffer::{Buffer, BufferPool};
use crate::cmd::{Command, Outcome};
use crate::error::NbdError;
use crate::handshake::Session;
use crate::proto::{self, CommandType, FrameError, RequestHeader, SimpleReply};
use crate::reply::ReplySink;
use crate::shutdown::Shutdown;

/// Socket read window: picks up several small pipelined requests per
/// syscall, yet stays small because WRITE data that lands here is copied
/// once more into its payload buffer (a 256 KiB window cost nbdcopy a full
/// extra copy of every 256 KiB write); the rest of a large payload is read
/// straight into its buffer.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Largest plain WRITE the connection thread copies into the page cache
/// itself. Larger ones go to the pool, so the copy overlaps with receiving
/// the next request; for small ones the hand-off would cost more than the
/// copy.
const INLINE_WRITE_MAX_BYTES: usize = 256 * 1024;
/// Stack of a connection thread; it runs no deep recursion.
const THREAD_STACK_BYTES: usize = 512 * 1024;

/// Per-connection limits, from [`crate::ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_inflight: usize,
    /// At least [`proto::MAX_PAYLOAD_BYTES`], or a maximal request could
    /// never get its share.
    pub max_inflight_bytes: usize,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed its side between requests.
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
    /// The export was removed from the table.
    Revoked,
}

/// Serves one connection until it ends. Errors are protocol violations or
/// socket failures; the caller logs them.
pub(crate) async fn run(
    stream: TcpStream,
    session: Session,
    limits: Limits,
    buffers: Arc<BufferPool>,
    shutdown: &mut Shutdown,
) -> Result<End, NbdError> {
    let Session {
        backing,
        mut revocation,
    } = session;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let sink = Arc::new(ReplySink::new(&stream)?);
    // However this task ends (including being dropped when the shutdown grace
    // period runs out), the socket is shut down, which releases the thread
    // and any job blocked sending to a client that stopped reading.
    let _cut = CutOnDrop(Arc::clone(&sink));
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = ConnectionThread {
        backing,
        sink: Arc::clone(&sink),
        buffers,
        runtime: Handle::current(),
        inflight: Arc::new(Budget::new(limits.max_inflight)),
        inflight_bytes: Arc::new(Budget::new(limits.max_inflight_bytes)),
        max_inflight: limits.max_inflight,
        stopping: Arc::clone(&stopping),
    };
    let (done, mut ended) = oneshot::channel();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("vsky-nbd-conn".into())
        .stack_size(THREAD_STACK_BYTES)
        .spawn(move || {
            let _entered = span.enter();
            let _ = done.send(thread.run(stream));
        })?;

    loop {
        tokio::select! {
            end = &mut ended => {
                return end.unwrap_or_else(|_| Err(NbdError::protocol("connection thread panicked")));
            }
            () = shutdown.wait(), if !stopping.load(Ordering::SeqCst) => {
                // Stop taking requests; a thread blocked reading sees end of
                // stream once what the client already sent is consumed.
                stopping.store(true, Ordering::SeqCst);
                sink.shutdown_read();
            }
            () = revocation.revoked() => return Ok(End::Revoked),
        }
    }
}

struct CutOnDrop(Arc<ReplySink>);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Everything the connection thread and its jobs share.
struct ConnectionThread {
    backing: Arc<Backing>,
    sink: Arc<ReplySink>,
    buffers: Arc<BufferPool>,
    /// For handing slow requests to the blocking pool from a plain thread.
    runtime: Handle,
    inflight: Arc<Budget>,
    inflight_bytes: Arc<Budget>,
    max_inflight: usize,
    /// Set by the supervisor when the server shuts down.
    stopping: Arc<AtomicBool>,
}

/// A validated request with the budget it holds until its reply is sent.
struct Job {
    cookie: u64,
    command: Command,
    _permits: (Permit, Option<Permit>),
}

impl ConnectionThread {
    fn run(self, stream: std::net::TcpStream) -> Result<End, NbdError> {
        let mut reader = RequestReader::new(stream);
        let ended = self.serve(&mut reader);
        // Idle means every budget unit is back: all replies are out.
        drop(self.inflight.acquire(self.max_inflight));
        // The client is owed nothing more, so it is released before the
        // closing sync below: nbdcopy waits for the server to close after
        // its NBD_CMD_DISC, and it used to wait here for an fdatasync of
        // everything it had written (see docs/benchmarks.md, NBD section).
        // Closing first promises nothing that was not promised: durability
        // is what FLUSH and FUA answer for, and those are done by now.
        drop(reader);
        self.sink.shutdown();
        if !self.backing.geometry().read_only {
            // Completed writes still become durable before the connection
            // counts as ended, so a graceful server shutdown (which waits
            // for every connection) leaves nothing acknowledged in the page
            // cache only. A client that flushed after its last write (as
            // nbdcopy --flush does on each of its connections) has nothing
            // left to sync, and a second fdatasync would still wait on the
            // device, so it is skipped. A removed export refuses
            // (NotConnected): nothing to report.
            match self.backing.flush_if_unflushed() {
                Err(error) if error.kind() != std::io::ErrorKind::NotConnected => {
                    tracing::warn!(%error, "fdatasync at connection end failed");
                }
                _ => {}
            }
        }
        match ended {
            Ok(End::ClientClosed) if self.stopping.load(Ordering::SeqCst) => Ok(End::Shutdown),
            other => other,
        }
    }

    fn serve(&self, reader: &mut RequestReader<std::net::TcpStream>) -> Result<End, NbdError> {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(End::Shutdown);
            }
            let Some(header) = reader.read_header()? else {
                return Ok(End::ClientClosed);
            };
            if header.command == CommandType::Disconnect {
                return Ok(End::Disconnect);
            }
            let payload_bytes = if header.command == CommandType::Write {
                header.length as usize
            } else {
                0
            };
            let buffer_bytes = match header.command {
                CommandType::Write => header.length as usize,
                CommandType::Read if header.length <= proto::MAX_PAYLOAD_BYTES => {
                    header.length as usize
                }
                _ => 0,
            };
            let permits = (
                self.inflight.acquire(1),
                (buffer_bytes > 0).then(|| self.inflight_bytes.acquire(buffer_bytes)),
            );
            let payload = if payload_bytes > 0 {
                reader.read_payload(payload_bytes, self.buffers.take(payload_bytes))?
            } else {
                Buffer::default()
            };
            let job = Job {
                cookie: header.cookie,
                command: Command::from_request(&header, payload, self.backing.geometry()),
                _permits: permits,
            };
            self.execute(job);
        }
    }

    /// Runs a job here if it cannot wait on the device, else on the pool.
    fn execute(&self, job: Job) {
        let outcome = match &job.command {
            Command::Read(read) => read.try_cached(&self.backing, &self.buffers),
            Command::Write(write) if !write.fua() && write.len() < INLINE_WRITE_MAX_BYTES => None,
            Command::Refused(error) => Some(Outcome::failed(*error)),
            _ => {
                let (backing, buffers, sink) = (
                    Arc::clone(&self.backing),
                    Arc::clone(&self.buffers),
                    Arc::clone(&self.sink),
                );
                self.runtime.spawn_blocking(move || {
                    finish(job, None, &backing, &buffers, &sink);
                });
                return;
            }
        };
        match (outcome, &job.command) {
            (Some(outcome), _) => {
                finish(job, Some(outcome), &self.backing, &self.buffers, &self.sink)
            }
            // A plain WRITE: a copy into the page cache, done here.
            (None, Command::Write(_)) => {
                finish(job, None, &self.backing, &self.buffers, &self.sink)
            }
            // A READ that missed the cache waits on the device: pool.
            (None, _) => {
                let (backing, buffers, sink) = (
                    Arc::clone(&self.backing),
                    Arc::clone(&self.buffers),
                    Arc::clone(&self.sink),
                );
                self.runtime.spawn_blocking(move || {
                    finish(job, None, &backing, &buffers, &sink);
                });
            }
        }
    }
}

/// Runs a job (unless `outcome` is already known) and sends its reply; the
/// job's budget is released after the reply is on the socket.
fn finish(
    job: Job,
    outcome: Option<Outcome>,
    backing: &Backing,
    buffers: &BufferPool,
    sink: &ReplySink,
) {
    let Job {
        cookie,
        command,
        _permits,
    } = job;
    let Outcome { error, data } = outcome.unwrap_or_else(|| command.apply(backing, buffers));
    let data = data.unwrap_or_default();
    // Data follows only a successful READ; simple replies cannot announce a
    // length, so an error reply must carry none.
    let payload = if error == 0 { &data[..] } else { &[] };
    if let Err(send_error) = sink.send(SimpleReply { error, cookie }, payload) {
        // The client is gone or the connection was cut; make sure the
        // connection thread notices too.
        tracing::debug!(%send_error, "sending a reply failed; closing the connection");
        sink.shutdown();
    }
    buffers.give(data);
}

/// A counting budget that blocks its taker until enough is free: a
/// semaphore for plain threads.
struct Budget {
    counts: Mutex<Counts>,
    freed: Condvar,
}

/// A share of a [`Budget`], returned on drop.
struct Permit {
    budget: Arc<Budget>,
    amount: usize,
}

/// The guarded part of a [`Budget`].
struct Counts {
    available: usize,
    /// Takers blocked in [`Budget::acquire`]. A release wakes them only if
    /// there are any: `Condvar::notify_all` is a system call even with no
    /// waiter, and two releases per request showed up as a third of the
    /// server's futex calls under nbdcopy.
    waiting: usize,
}

impl Budget {
    fn new(total: usize) -> Self {
        Self {
            counts: Mutex::new(Counts {
                available: total,
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Takes `amount`, waiting until it is free. `amount` never exceeds the
    /// total (the limits guarantee it), so the wait always ends once the
    /// requests in flight reply or their connection is cut.
    fn acquire(self: &Arc<Self>, amount: usize) -> Permit {
        let mut counts = self.counts.lock_unpoisoned();
        while counts.available < amount {
            counts.waiting += 1;
            counts = self.freed.wait_unpoisoned(counts);
            counts.waiting -= 1;
        }
        counts.available -= amount;
        Permit {
            budget: Arc::clone(self),
            amount,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.budget.counts.lock_unpoisoned();
        counts.available += self.amount;
        if counts.waiting > 0 {
            self.budget.freed.notify_all();
        }
    }
}

/// A byte stream that can also append straight into a `Vec`'s spare
/// capacity. For the socket that saves zero-filling every large WRITE buffer
/// before `recv` overwrites it.
pub(crate) trait PayloadSource: Read {
    /// Appends at most `limit` bytes to `buffer`; returns how many.
    fn append_to(&mut self, buffer: &mut Buffer, limit: usize) -> std::io::Result<usize> {
        let mut chunk = vec![0u8; limit];
        let read = self.read(&mut chunk)?;
        buffer.extend_from_slice(&chunk[..read]);
        Ok(read)
    }
}

impl PayloadSource for std::net::TcpStream {
    fn append_to(&mut self, buffer: &mut Buffer, limit: usize) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        buffer.reserve(limit);
        let spare = buffer.spare_capacity_mut();
        // SAFETY: recv writes at most `limit` bytes into spare capacity that
        // `reserve` guaranteed; only the bytes it reports are marked
        // initialised.
        let received = unsafe {
            libc::recv(
                self.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                limit.min(spare.len()),
                0,
            )
        };
        if received < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: see above.
        unsafe { buffer.set_len(buffer.len() + received as usize) };
        Ok(received as usize)
    }
}

/// Buffered reader that yields whole request headers and WRITE payloads.
///
/// The buffer is a fixed window, allocated and zeroed once: headers of
/// pipelined requests arrive many per read, and payloads larger than what is
/// buffered are read straight into their own buffer.
pub(crate) struct RequestReader<R> {
    stream: R,
    buffer: Box<[u8]>,
    /// The unconsumed bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
}

impl<R: PayloadSource> RequestReader<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            buffer: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    fn consume(&mut self, count: usize) {
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The next request header, or `None` if the client closed the stream
    /// cleanly between requests. A bad magic or an oversized WRITE is an error:
    /// the stream cannot be resynchronised and the connection must close.
    pub fn read_header(&mut self) -> Result<Option<RequestHeader>, NbdError> {
        loop {
            match RequestHeader::check(self.buffered()) {
                Ok(_) => {
                    let raw: [u8; proto::REQUEST_HEADER_BYTES] = self.buffered()
                        [..proto::REQUEST_HEADER_BYTES]
                        .try_into()
                        .expect("check saw a whole header");
                    self.consume(proto::REQUEST_HEADER_BYTES);
                    return Ok(Some(RequestHeader::parse(&raw)));
                }
                Err(FrameError::Incomplete { .. }) => {}
                Err(FrameError::BadMagic { found }) => {
                    return Err(NbdError::BadMagic {
                        during: "transmission",
                        expected: u64::from(proto::REQUEST_MAGIC),
                        found,
                    });
                }
                Err(FrameError::PayloadTooLarge { length_bytes }) => {
                    return Err(NbdError::TooLarge {
                        what: "NBD_CMD_WRITE payload",
                        length_bytes: u64::from(length_bytes),
                        limit_bytes: u64::from(proto::MAX_PAYLOAD_BYTES),
                    });
                }
            }
            if self.fill()? == 0 {
                if self.start == self.end {
                    return Ok(None);
                }
                return Err(NbdError::ConnectionClosed {
                    during: "a request header",
                });
            }
        }
    }

    /// The `length` bytes following a WRITE header, in `payload` (an empty
    /// pooled buffer). Whatever is already buffered is copied; the rest is
    /// read from the socket straight into `payload`, never past its end, so
    /// the next header stays in the stream. `length` was bounded by the
    /// header check.
    pub fn read_payload(&mut self, length: usize, mut payload: Buffer) -> Result<Buffer, NbdError> {
        payload.clear();
        let buffered = self.buffered().len().min(length);
        payload.extend_from_slice(&self.buffered()[..buffered]);
        self.consume(buffered);
        while payload.len() < length {
            let missing = length - payload.len();
            let read = self.stream.append_to(&mut payload, missing);
            match read {
                Ok(0) => {
                    return Err(NbdError::ConnectionClosed {
                        during: "an NBD_CMD_WRITE payload",
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(payload)
    }

    fn fill(&mut self) -> Result<usize, NbdError> {
        if self.buffer.len() - self.end < proto::REQUEST_HEADER_BYTES {
            // Move the partial header to the front; it is shorter than the
            // window, so there is room after it.
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.stream.read(&mut self.buffer[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: CommandType, length: u32) -> [u8; proto::REQUEST_HEADER_BYTES] {
        RequestHeader {
            flags: 0,
            command,
            cookie: 9,
            offset: 0,
            length,
        }
        .encode()
    }

    /// A stream that yields `data` at most `step` bytes per read, to exercise
    /// reassembly.
    struct Chunked<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl PayloadSource for Chunked<'_> {}

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    // Proves the reader reassembles headers and payloads split across reads,
    // and reports a clean end only between requests.
    #[test]
    fn reader_handles_fragmented_input() {
        let mut bytes = header(CommandType::Write, 5).to_vec();
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&header(CommandType::Flush, 0));
        let mut reader = RequestReader::new(Chunked {
            data: &bytes,
            step: 3,
        });
        let first = reader.read_header().expect("ok").expect("header");
        assert_eq!((first.command, first.length), (CommandType::Write, 5));
        let payload = reader.read_payload(5, Buffer::default()).expect("payload");
        assert_eq!(&payload[..], b"hello");
        let second = reader.read_header().expect("ok").expect("header");
        assert_eq!(second.command, CommandType::Flush);
        assert!(reader.read_header().expect("clean end").is_none());
    }

    // Proves truncation mid-header or mid-payload is an error, not a clean end.
    #[test]
    fn reader_reports_truncation() {
        let bytes = header(CommandType::Read, 5);
        let mut reader = RequestReader::new(Chunked {
            data: &bytes[..10],
            step: 4,
        });
        assert!(matches!(
            reader.read_header(),
            Err(NbdError::ConnectionClosed { .. })
        ));

        let mut bytes = header(CommandType::Write, 100).to_vec();
        bytes.extend_from_slice(&[1; 50]);
        let mut reader = RequestReader::new(Chunked {
            data: &bytes,
            step: 64,
        });
        reader.read_header().expect("ok").expect("header");
        assert!(matches!(
            reader.read_payload(100, Buffer::default()),
            Err(NbdError::ConnectionClosed { .. })
        ));
    }

    // Proves an oversized WRITE is refused from its header: the reader never
    // tries to buffer 4 GiB. Also rejects a bad magic.
    #[test]
    fn reader_refuses_oversized_write_and_bad_magic() {
        let bytes = header(CommandType::Write, u32::MAX);
        let mut reader = RequestReader::new(Chunked {
            data: &bytes,
            step: 28,
        });
        assert!(matches!(
            reader.read_header(),
            Err(NbdError::TooLarge { .. })
        ));
        assert_eq!(reader.buffer.len(), READ_BUFFER_BYTES);

        let mut bytes = header(CommandType::Read, 1);
        bytes[1] = 0;
        let mut reader = RequestReader::new(Chunked {
            data: &bytes,
            step: 28,
        });
        assert!(matches!(
            reader.read_header(),
            Err(NbdError::BadMagic { .. })
        ));
    }

    // Proves the budget blocks a taker until enough is returned.
    #[test]
    fn budget_waits_for_release() {
        let budget = Arc::new(Budget::new(2));
        let first = budget.acquire(2);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || drop(budget.acquire(1)))
        };
        drop(first);
        waiter.join().expect("waiter finished after the release");
        assert_eq!(budget.counts.lock().expect("lock").available, 2);
        assert_eq!(budget.counts.lock().expect("lock").waiting, 0);
    }
}
