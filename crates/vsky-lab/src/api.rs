//! The manager as the scenarios see it: `vsky_api::Client`, typed, driven
//! on a current-thread runtime so that scenarios stay plain sequential
//! code. Only the calls the scenarios need.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use vsky_api::client::{Client, ClientConfig, ClientError};
use vsky_api::types::{
    ClusterSummary, CreateServer, CreateVolume, Event, Leg, LegState, Rebuild, Volume, VolumeDetail,
};

pub struct Api {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// What `client` was made from, for [`Api::another`].
    config: ClientConfig,
}

impl Api {
    /// A client of the manager(s) at `urls` (comma-separated for HA).
    pub fn new(urls: &str, token: &str) -> Result<Api> {
        Api::with(ClientConfig {
            manager_url: urls.to_string(),
            token: Some(token.to_string()),
            timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        })
    }

    fn with(config: ClientConfig) -> Result<Api> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a tokio runtime")?;
        let client = Client::new(config.clone())?;
        Ok(Api { rt, client, config })
    }

    /// A second handle on the same managers, for a sampling thread: its
    /// own runtime (a runtime serves one thread) and its own client. A
    /// clone of this one would share its pooled connections, whose tasks
    /// run on this runtime, which is only driven while this thread calls
    /// the manager: a sample taken while this thread writes a device
    /// hung until the write ended (cluster-rebuild sampled no running
    /// rebuild when every rebuild ran during the writer).
    pub fn another(&self) -> Result<Api> {
        Api::with(self.config.clone())
    }

    fn run<T>(&self, what: &str, f: impl Future<Output = Result<T, ClientError>>) -> Result<T> {
        self.rt.block_on(f).with_context(|| what.to_string())
    }

    pub fn role(&self) -> Result<String> {
        Ok(self.run("health", self.client.health())?.role)
    }

    pub fn cluster(&self) -> Result<ClusterSummary> {
        self.run("cluster summary", self.client.cluster())
    }

    pub fn servers_online(&self) -> Result<usize> {
        let servers = self.run("list servers", self.client.list_servers())?;
        Ok(servers
            .iter()
            .filter(|s| s.state == vsky_api::types::ServerState::Online)
            .count())
    }

    /// Adds a server by hand, as `vsky server add` does.
    pub fn add_server(&self, name: &str, address: &str) -> Result<()> {
        let req = CreateServer {
            name: name.into(),
            address: address.into(),
            labels: Default::default(),
        };
        self.run(
            &format!("add server {name}"),
            self.client.create_server(&req),
        )?;
        Ok(())
    }

    pub fn remove_server(&self, name: &str) -> Result<()> {
        self.run(
            &format!("remove server {name}"),
            self.client.remove_server(name),
        )
    }

    /// A 2-way mirrored volume of `mib` MiB.
    pub fn create_volume(&self, name: &str, mib: u64) -> Result<()> {
        let req = CreateVolume {
            name: name.into(),
            size_bytes: mib << 20,
            replicas: Some(2),
            ..CreateVolume::default()
        };
        self.run(
            &format!("create volume {name}"),
            self.client.create_volume(&req),
        )?;
        Ok(())
    }

    /// A 2-way mirrored thin volume of `mib` MiB.
    pub fn create_thin_volume(&self, name: &str, mib: u64) -> Result<VolumeDetail> {
        let req = CreateVolume {
            name: name.into(),
            size_bytes: mib << 20,
            replicas: Some(2),
            thin: true,
            ..CreateVolume::default()
        };
        self.run(
            &format!("create thin volume {name}"),
            self.client.create_volume(&req),
        )
    }

    pub fn snapshot(&self, name: &str, snapshot: &str) -> Result<VolumeDetail> {
        self.run(
            &format!("snapshot {name} as {snapshot}"),
            self.client.snapshot_volume(name, snapshot),
        )
    }

    pub fn clone_volume(&self, source: &str, name: &str) -> Result<VolumeDetail> {
        self.run(
            &format!("clone {source} as {name}"),
            self.client.clone_volume(source, name),
        )
    }

    pub fn revert(&self, name: &str, snapshot: &str) -> Result<VolumeDetail> {
        self.run(
            &format!("revert {name} to {snapshot}"),
            self.client.revert_volume(name, snapshot),
        )
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        self.run(
            &format!("delete volume {name}"),
            self.client.delete_volume(name),
        )
    }

    pub fn attach(&self, name: &str, server: &str) -> Result<()> {
        self.run(
            &format!("attach volume {name} to {server}"),
            self.client.attach_volume(name, server),
        )?;
        Ok(())
    }

    /// A graceful detach (the attachment ends once the head reports its
    /// devices gone).
    pub fn detach(&self, name: &str) -> Result<()> {
        self.run(
            &format!("detach volume {name}"),
            self.client.detach_volume(name),
        )?;
        Ok(())
    }

    pub fn volume(&self, name: &str) -> Result<VolumeDetail> {
        self.run(&format!("show volume {name}"), self.client.volume(name))
    }

    pub fn volumes(&self) -> Result<Vec<Volume>> {
        self.run("list volumes", self.client.list_volumes())
    }

    /// Every leg of `volume` with its slot.
    pub fn legs(&self, volume: &str) -> Result<Vec<LegAt>> {
        let detail = self.volume(volume)?;
        Ok(detail
            .layout
            .iter()
            .flat_map(|md| {
                md.legs.iter().enumerate().map(move |(leg, l)| LegAt {
                    mirrored_disk: md.index,
                    leg,
                    at: l.clone(),
                })
            })
            .collect())
    }

    pub fn fail_disk(&self, id: u64) -> Result<()> {
        self.run(&format!("fail disk {id}"), self.client.fail_disk(id))?;
        Ok(())
    }

    /// Active rebuilds, or with `all` also the finished ones.
    pub fn rebuilds(&self, all: bool) -> Result<Vec<Rebuild>> {
        Ok(self
            .run("list rebuilds", self.client.rebuilds(all))?
            .rebuilds)
    }

    /// The event log from the start (the manager keeps the most recent
    /// ones; a scenario makes far fewer).
    pub fn events(&self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut since = 0;
        loop {
            let page = self.run(
                "list events",
                self.client.events(since, Some(1000), Duration::ZERO),
            )?;
            if page.events.is_empty() {
                return Ok(events);
            }
            since = page.next;
            events.extend(page.events);
        }
    }

    /// Whether an event of `kind` was recorded, by `server` if given.
    pub fn event_seen(&self, kind: &str, server: Option<&str>) -> Result<bool> {
        Ok(self
            .events()?
            .iter()
            .any(|e| e.kind == kind && server.is_none_or(|s| e.server.as_deref() == Some(s))))
    }
}

/// One leg of a volume and its slot (mirrored disk, leg).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegAt {
    pub mirrored_disk: usize,
    pub leg: usize,
    pub at: Leg,
}

impl LegAt {
    pub fn slot(&self) -> (usize, usize) {
        (self.mirrored_disk, self.leg)
    }
    pub fn active(&self) -> bool {
        self.at.state == LegState::Active
    }
    pub fn failed(&self) -> bool {
        self.at.state == LegState::Failed
    }
}

/// The server in slot (`mirrored_disk`, `leg`).
pub fn server_in(legs: &[LegAt], mirrored_disk: usize, leg: usize) -> Result<String> {
    legs.iter()
        .find(|l| l.slot() == (mirrored_disk, leg))
        .map(|l| l.at.server.clone())
        .with_context(|| format!("the volume has no leg {mirrored_disk}/{leg}"))
}

/// The legs on `server`.
pub fn legs_on<'a>(legs: &'a [LegAt], server: &'a str) -> impl Iterator<Item = &'a LegAt> {
    legs.iter().filter(move |l| l.at.server == server)
}

/// Every leg is active and none sits on `server` (its legs were replaced
/// and resynced).
pub fn all_active_without(legs: &[LegAt], server: &str) -> bool {
    !legs.is_empty() && legs.iter().all(|l| l.active() && l.at.server != server)
}

/// Legs as one line for error messages: `0/1 s2 failed disk 3; …`.
pub fn describe(legs: &[LegAt]) -> String {
    legs.iter()
        .map(|l| {
            format!(
                "{}/{} {} {:?} disk {}",
                l.mirrored_disk, l.leg, l.at.server, l.at.state, l.at.disk_id
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
