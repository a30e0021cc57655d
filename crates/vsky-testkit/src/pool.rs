//! Pools of servers and empty disks for model-level tests, benches and the
//! simulator, built through the public `Cluster` API as the manager builds
//! them.
//!
//! One naming for every pool, so a failure reads the same everywhere:
//! server `s<i>` at `10.a.b.c:10809` (the index `i` in the address's last
//! three bytes, so pools of over 255 servers stay valid), disks
//! `/dev/disk0`, `/dev/disk1`, … and, with racks, the label
//! `rack=r<i mod racks>`. Ids follow from the order of creation (servers
//! in index order, each with its disks), so they are the same on every
//! run; the secrets of volumes come from the caller's `SecretSource`
//! (`CountingSecrets`, or the simulator's seeded generator), not from here.
//!
//! REST tests register the same pools through `rest` (feature
//! `api`).
//!
//! This module depends on `vsky-model` only: the simulator builds its pools
//! with it.

use std::collections::BTreeMap;

use vsky_model::{Cluster, ModelError, NewDisk, NewServer, Settings};

pub const MIB: u64 = 1 << 20;
/// The default chunk: small, so tests fill disks with few legs.
pub const CHUNK: u64 = 4 * MIB;

/// The shape of a pool. `PoolSpec::new(3, 2)` is 3 servers of 2 disks of 16
/// chunks of [`CHUNK`] each, no racks; the other methods change one knob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// How many disks each server has, by server index.
    pub disks: Vec<usize>,
    pub chunks_per_disk: u64,
    pub chunk_bytes: u64,
    /// Servers are spread round-robin over this many racks; 0: no labels.
    pub racks: usize,
}

impl PoolSpec {
    /// `servers` servers of `disks` disks each.
    pub fn new(servers: usize, disks: usize) -> PoolSpec {
        PoolSpec {
            disks: vec![disks; servers],
            chunks_per_disk: 16,
            chunk_bytes: CHUNK,
            racks: 0,
        }
    }

    /// Every disk holds `chunks` chunks.
    pub fn chunks(mut self, chunks: u64) -> PoolSpec {
        self.chunks_per_disk = chunks;
        self
    }

    /// The cluster's chunk size.
    pub fn chunk_bytes(mut self, bytes: u64) -> PoolSpec {
        self.chunk_bytes = bytes;
        self
    }

    /// Servers spread round-robin over `racks` racks.
    pub fn racks(mut self, racks: usize) -> PoolSpec {
        self.racks = racks;
        self
    }

    /// Server `server` gets `disks` disks instead (0: a server without
    /// disks).
    pub fn disks_of(mut self, server: usize, disks: usize) -> PoolSpec {
        self.disks[server] = disks;
        self
    }

    pub fn servers(&self) -> usize {
        self.disks.len()
    }

    /// The settings of a cluster of this spec.
    pub fn settings(&self) -> Settings {
        Settings::new(self.chunk_bytes)
    }

    /// The size of each disk: the disk header and its chunks.
    pub fn disk_bytes(&self) -> u64 {
        self.settings().disk_header_bytes + self.chunks_per_disk * self.chunk_bytes
    }

    /// The request that adds server `s`.
    pub fn server(&self, s: usize) -> NewServer {
        let mut labels = BTreeMap::new();
        if self.racks > 0 {
            labels.insert("rack".to_string(), format!("r{}", s % self.racks));
        }
        NewServer {
            name: server_name(s),
            address: server_address(s),
            labels,
        }
    }

    /// The request that adds disk `d` of server `s`.
    pub fn disk(&self, s: usize, d: usize) -> NewDisk {
        NewDisk {
            server: server_name(s),
            path: disk_path(d),
            size_bytes: self.disk_bytes(),
            class: None,
        }
    }

    /// An empty cluster with this spec's settings and all its servers.
    pub fn try_build(&self) -> Result<Cluster, ModelError> {
        let mut c = Cluster::new(self.settings())?;
        for (s, &disks) in self.disks.iter().enumerate() {
            self.try_add_server(&mut c, s, disks)?;
        }
        Ok(c)
    }

    /// [`PoolSpec::try_build`] for tests: panics on a refusal.
    pub fn build(&self) -> Cluster {
        self.try_build().expect("the pool spec is valid")
    }

    /// Adds server `s` with `disks` empty disks of this spec's size (a
    /// server beyond the spec's, or one with another number of disks: a
    /// pool that grows).
    pub fn try_add_server(
        &self,
        c: &mut Cluster,
        s: usize,
        disks: usize,
    ) -> Result<(), ModelError> {
        c.add_server(self.server(s))?;
        for d in 0..disks {
            c.add_disk(self.disk(s, d))?;
        }
        Ok(())
    }

    /// [`PoolSpec::try_add_server`] for tests: panics on a refusal.
    pub fn add_server(&self, c: &mut Cluster, s: usize, disks: usize) {
        self.try_add_server(c, s, disks)
            .expect("the server and its disks are valid");
    }
}

/// `s<s>`.
pub fn server_name(s: usize) -> String {
    format!("s{s}")
}

/// `10.a.b.c:10809`, the index spread over the last three bytes.
pub fn server_address(s: usize) -> String {
    format!("10.{}.{}.{}:10809", s >> 16, (s >> 8) & 255, s & 255)
}

/// `/dev/disk<d>`.
pub fn disk_path(d: usize) -> String {
    format!("/dev/disk{d}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_has_the_servers_disks_and_racks_of_its_spec() {
        let c = PoolSpec::new(3, 2)
            .disks_of(1, 0)
            .chunks(5)
            .racks(2)
            .build();
        let servers: Vec<_> = c.servers().map(|s| s.name.clone()).collect();
        assert_eq!(servers, ["s0", "s1", "s2"]);
        assert_eq!(c.disks().count(), 4);
        let s2 = c.server_by_name("s2").unwrap();
        assert_eq!(s2.labels["rack"], "r0");
        assert_eq!(s2.address, "10.0.0.2:10809");
        for d in c.disks() {
            assert_eq!(c.settings().chunks_on_disk(d.size_bytes), 5);
        }
    }

    #[test]
    fn addresses_stay_valid_past_255_servers() {
        assert_eq!(server_address(70_000), "10.1.17.112:10809");
    }
}
