//! [`ReplySink`]: the sending side of a connection, shared by the connection
//! thread and the blocking-pool jobs that finish requests.
//!
//! Each request's reply is written by whichever thread finished it, under a
//! per-connection mutex, as one `sendmsg` of header and data (no copy of READ
//! data into a write buffer, and no header travelling in a segment of its
//! own). The sink holds its own duplicate of the socket descriptor, so jobs
//! never depend on the connection thread's lifetime, and
//! [`ReplySink::shutdown`] can cut the socket from the async supervisor,
//! which also wakes a thread blocked sending to a client that stopped reading.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use vsky_sync::LockExt;

use crate::proto::{self, SimpleReply};

pub(crate) struct ReplySink {
    socket: OwnedFd,
    /// Serialises whole replies: the protocol needs each header and its data
    /// to be contiguous on the wire.
    lock: Mutex<()>,
}

impl ReplySink {
    pub fn new(socket: &impl AsFd) -> io::Result<Self> {
        Ok(Self {
            socket: socket.as_fd().try_clone_to_owned()?,
            lock: Mutex::new(()),
        })
    }

    /// Sends one simple reply (and READ data). Blocks until it is in the
    /// socket's send buffer; call only from a thread that may block.
    pub fn send(&self, reply: SimpleReply, data: &[u8]) -> io::Result<()> {
        let header: [u8; proto::SIMPLE_REPLY_BYTES] = reply.encode();
        let mut slices = [IoSlice::new(&header), IoSlice::new(data)];
        let mut remaining: &mut [IoSlice<'_>] = &mut slices;
        if data.is_empty() {
            remaining = &mut remaining[..1];
        }
        let _guard = self.lock.lock_unpoisoned();
        while !remaining.is_empty() {
            match self.sendmsg(remaining) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => IoSlice::advance_slices(&mut remaining, sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable()?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stops the reading side: a thread blocked reading sees end of stream
    /// once the bytes already received are consumed. Replies still go out.
    pub fn shutdown_read(&self) {
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
    }

    /// Shuts the socket down in both directions: the client sees the
    /// connection end, and any thread blocked on it wakes up with an error.
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
    }

    fn sendmsg(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid; IoSlice is ABI-compatible with
        // iovec on Unix (documented by std), and the slices outlive the call.
        let sent = unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = slices.as_ptr() as *mut libc::iovec;
            message.msg_iovlen = slices.len() as _;
            // MSG_NOSIGNAL: a client that hung up must not raise SIGPIPE in
            // the agent, whatever its signal disposition.
            libc::sendmsg(self.socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    /// Only reached if the socket is non-blocking; waits for room.
    fn wait_writable(&self) -> io::Result<()> {
        let mut poll_fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd; no timeout: shutdown() or the peer
            // ends the wait.
            let ready = unsafe { libc::poll(&mut poll_fd, 1, -1) };
            if ready >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    // Proves replies arrive whole and in send order, with data following its
    // header, even when the receiver drains slowly and the socket is
    // non-blocking (exercising the would-block path).
    #[test]
    fn replies_arrive_whole_through_a_full_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut receiver =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (sender, _) = listener.accept().expect("accept");
        sender.set_nonblocking(true).expect("non-blocking");
        let sink = std::sync::Arc::new(ReplySink::new(&sender).expect("sink"));
        let data = vec![0x5au8; 1 << 20];
        let writer = {
            let sink = std::sync::Arc::clone(&sink);
            let data = data.clone();
            std::thread::spawn(move || {
                for cookie in 0..8u64 {
                    sink.send(SimpleReply { error: 0, cookie }, &data)
                        .expect("send");
                }
                sink.send(
                    SimpleReply {
                        error: 22,
                        cookie: 99,
                    },
                    &[],
                )
                .expect("send");
                sink.shutdown();
            })
        };
        for cookie in 0..8u64 {
            let mut header = [0u8; 16];
            receiver.read_exact(&mut header).expect("header");
            let reply = SimpleReply::parse(&header).expect("magic");
            assert_eq!((reply.error, reply.cookie), (0, cookie));
            let mut body = vec![0u8; data.len()];
            receiver.read_exact(&mut body).expect("data");
            assert!(body == data);
        }
        let mut header = [0u8; 16];
        receiver.read_exact(&mut header).expect("header");
        assert_eq!(SimpleReply::parse(&header).expect("magic").cookie, 99);
        writer.join().expect("writer");
        let mut rest = Vec::new();
        receiver.read_to_end(&mut rest).expect("eof");
        assert!(rest.is_empty());
    }
}
