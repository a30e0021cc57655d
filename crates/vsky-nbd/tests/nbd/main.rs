//! Integration tests: the real server on loopback, driven by our client,
//! by external tools (qemu, libnbd), and by hostile raw sockets.
//!
//! One test binary, split by topic (ripgrep's habit), so the crate links once:
//! - `client`: our `Client` against `serve` — every command, bounds, FUA,
//!   read-only, multi-connection, range confinement.
//! - `external`: qemu-io, qemu-img, nbdinfo, nbdcopy against `serve`. A
//!   missing tool fails the test and says to run `scripts/install-deps`.
//! - `hostile`: malformed and abusive clients; after each, the server must
//!   still serve a well-behaved client and the bytes outside the export must
//!   be untouched.
//! - `lifecycle`: pipelining and out-of-order replies, removing an export
//!   cutting its connections, graceful shutdown draining in-flight requests.
//! - `util`: the shared fixture (a server over a temp file whose export
//!   starts at a non-zero offset, with guard bytes around it).

mod client;
mod external;
mod hostile;
mod lifecycle;
mod util;
