//! The head's kernel datapath: import remote chunks with the kernel NBD
//! client ([`nbd`]) and assemble them into device-mapper raid1 mirrors and a
//! linear or striped volume device ([`dm`]). [`block`] holds the other
//! block-device ioctls the agent needs (zeroing a freed chunk): every kernel
//! ioctl VastSky issues is in this crate.
//!
//! Nothing here shells out: NBD is driven over generic netlink and DM over
//! its ioctls (through the `devicemapper` crate). Every operation is safe to
//! repeat, so a restarted agent converges on the devices the kernel already
//! has instead of duplicating them. The privileged paths are exercised in the
//! VM lab (`lab/run`), since development hosts have neither nbd nor dm.

pub mod block;
pub mod dm;
pub mod nbd;
