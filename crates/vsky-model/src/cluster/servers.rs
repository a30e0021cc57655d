//! Servers: adding, registering, removing and failing them.
//!
//! An admin adds a server, or its agent registers it (creating it, or
//! updating its address and labels). Each server needs its own address. A
//! server is removed only when none of its disks holds a leg and no volume
//! is attached to it. Failing a server fails every leg on its disks and
//! takes it out of the allocation index; a server failed for its silence
//! (not by an admin) returns to service when its agent speaks again.

use std::collections::BTreeMap;

use super::{Changes, Cluster, not_found};
use crate::entities::{Server, ServerState};
use crate::error::ModelError;
use crate::ids::{self, DiskId, ServerId};
use crate::limits;

#[derive(Clone, Debug)]
pub struct NewServer {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl Cluster {
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values()
    }

    pub fn server(&self, id: ServerId) -> Option<&Server> {
        self.servers.get(&id)
    }

    pub fn server_by_name(&self, name: &str) -> Result<&Server, ModelError> {
        self.server_names
            .get(name)
            .map(|id| &self.servers[id])
            .ok_or_else(|| not_found("server", "server", name))
    }

    fn validate_new_server(
        &self,
        new: &NewServer,
        except: Option<ServerId>,
    ) -> Result<(), ModelError> {
        ids::validate_name("server name", &new.name)?;
        ids::validate_address(&new.address)?;
        if new.labels.len() > limits::LABELS_PER_SERVER_MAX {
            return Err(ModelError::invalid(
                "labels",
                format!("at most {} per server", limits::LABELS_PER_SERVER_MAX),
            ));
        }
        for (k, v) in &new.labels {
            ids::validate_label(k, v)?;
        }
        if let Some(other) = self
            .servers
            .values()
            .find(|s| s.address == new.address && Some(s.id) != except)
        {
            return Err(ModelError::Conflict(format!(
                "address {} is already used by server '{}'; each agent needs its own address",
                new.address, other.name
            )));
        }
        Ok(())
    }

    /// Adds a server (admin). Fails if the name exists.
    pub fn add_server(&mut self, new: NewServer) -> Result<(ServerId, Changes), ModelError> {
        if self.server_names.contains_key(&new.name) {
            return Err(ModelError::AlreadyExists {
                kind: "server",
                key: new.name,
            });
        }
        self.validate_new_server(&new, None)?;
        let mut changes = Changes::default();
        let id = ServerId(self.take_id(&mut changes));
        self.server_names.insert(new.name.clone(), id);
        self.servers.insert(
            id,
            Server {
                id,
                name: new.name,
                address: new.address,
                labels: new.labels,
                state: ServerState::Online,
                failed_by_silence: false,
                draining: false,
                storage_only: false,
            },
        );
        changes.servers.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Registers a server on behalf of its agent: creates it, or updates the
    /// address and labels of an existing one. A failed server stays failed
    /// (returning it to service is the recovery engine's decision).
    pub fn register_server(&mut self, new: NewServer) -> Result<(ServerId, Changes), ModelError> {
        let Some(&id) = self.server_names.get(&new.name) else {
            return self.add_server(new);
        };
        self.validate_new_server(&new, Some(id))?;
        let server = self.servers.get_mut(&id).expect("name index is consistent");
        let mut changes = Changes::default();
        if server.address != new.address || server.labels != new.labels {
            server.address = new.address;
            server.labels = new.labels;
            changes.servers.insert(id);
            // The failure domain may have changed.
            self.reindex_server(id);
        }
        Ok((id, self.commit(changes)))
    }

    /// Removes a server and its disks; only when none of its chunks is used
    /// and no volume is attached to it.
    pub fn remove_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        let id = self.server_by_name(name)?.id;
        let disks: Vec<DiskId> = self.disks_of(id).map(|d| d.id).collect();
        let legs: usize = disks.iter().map(|d| self.runtime[d].used.len()).sum();
        if legs > 0 {
            return Err(ModelError::Conflict(format!(
                "server '{name}' still holds {legs} legs of volumes; drain it or delete those volumes first"
            )));
        }
        if let Some(v) = self
            .volumes
            .values()
            .find(|v| v.attachment.as_ref().is_some_and(|a| a.head == id))
        {
            return Err(ModelError::Conflict(format!(
                "volume '{}' is attached to server '{name}'; detach it first",
                v.name
            )));
        }
        let mut changes = Changes::default();
        self.end_readers_on(id, &mut changes);
        for d in disks {
            self.drop_disk(d);
            changes.disks.insert(d);
        }
        self.servers.remove(&id);
        self.disks_by_server.remove(&id);
        self.server_names.remove(name);
        changes.servers.insert(id);
        Ok(self.commit(changes))
    }

    /// Whether the server still holds any leg: a live one (failing the
    /// server degrades its mirrored disk) or a failed one not replaced yet
    /// (it waits for the server to come back or be declared failed). A
    /// replaced leg's chunk is released, so it no longer counts.
    pub fn server_holds_legs(&self, id: ServerId) -> bool {
        self.disks_of(id)
            .any(|d| self.legs_on_disk(d.id).next().is_some())
    }

    /// Declares a server failed: every leg on its disks fails, and it gets
    /// no new chunks. Idempotent.
    pub fn fail_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.fail_server_as(name, false)
    }

    /// Declares a server failed because its heartbeats stopped for longer
    /// than its grace period: like [`Self::fail_server`], but the server
    /// returns to service when its agent speaks again
    /// ([`Self::server_returned`]).
    pub fn fail_silent_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.fail_server_as(name, true)
    }

    fn fail_server_as(&mut self, name: &str, by_silence: bool) -> Result<Changes, ModelError> {
        let id = self.server_by_name(name)?.id;
        let mut changes = Changes::default();
        let server = self.servers.get_mut(&id).expect("exists");
        if server.state != ServerState::Failed {
            server.state = ServerState::Failed;
            server.failed_by_silence = by_silence;
            changes.servers.insert(id);
        } else if server.failed_by_silence && !by_silence {
            // An admin confirms the failure: it now stands.
            server.failed_by_silence = false;
            changes.servers.insert(id);
        }
        let disks: Vec<DiskId> = self.disks_of(id).map(|d| d.id).collect();
        for d in disks {
            self.fail_legs_on(d, &mut changes);
        }
        self.reindex_server(id);
        Ok(self.commit(changes))
    }

    /// The agent of a server declared failed for its silence speaks again:
    /// the server serves new chunks again. Its legs were failed (and those
    /// with room elsewhere replaced; the replaced chunks are wiped before
    /// reuse), so nothing stale is trusted. A server an admin failed stays
    /// failed. Returns no changes when there is nothing to do.
    pub fn server_returned(&mut self, id: ServerId) -> Result<Changes, ModelError> {
        let server = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| not_found("server", "server", id.0))?;
        let mut changes = Changes::default();
        if server.state == ServerState::Failed && server.failed_by_silence {
            server.state = ServerState::Online;
            server.failed_by_silence = false;
            changes.servers.insert(id);
            self.reindex_server(id);
        }
        Ok(self.commit(changes))
    }
}
