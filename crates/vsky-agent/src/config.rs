//! The agent's configuration, as `main` builds it from its flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use vsky_api::ClientConfig;

use crate::api::ApiConfig;
use crate::disks::DiskArg;
use crate::head::{NbdBackendFile, NbdTimeouts};

#[derive(Clone, Debug)]
pub struct Config {
    pub client: ClientConfig,
    pub server_name: String,
    /// Where the NBD server listens.
    pub nbd_listen: SocketAddr,
    /// `host:port` other servers use to reach the NBD server.
    pub advertise: String,
    pub disks: Vec<DiskArg>,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_interval: Duration,
    /// Run the head role (needs the nbd, dm-mod and dm-raid modules).
    pub head: bool,
    pub timeouts: NbdTimeouts,
    /// Where the head keeps its NBD imports on kernels without backend
    /// identifiers (before Linux 5.14).
    pub nbd_backends: NbdBackendFile,
    /// The local API for the datapath plugin (attach/detach/status), if
    /// enabled.
    pub api: Option<ApiConfig>,
}
