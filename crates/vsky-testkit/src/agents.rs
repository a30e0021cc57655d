//! Storage agents served by the test process: the real agent (NBD exports,
//! wipes, copies, scrubs) of one server, its disks sparse files in a
//! scratch directory. No head role: that needs device-mapper (the lab VM).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vsky_agent::disks::DiskArg;
use vsky_agent::head::NbdTimeouts;
use vsky_api::{Client, ClientConfig};
use vsky_manager::RecoveryConfig;

use crate::free_port;
use crate::in_process::{InProcessManager, patient_recovery};
use crate::pool::CHUNK;
use crate::tokens::AGENT_TOKEN;

/// A sparse file of `chunks` chunks of `chunk_bytes` after the disk
/// header, at `path`: a disk for an agent.
pub fn disk_image(path: &Path, chunks: u64, chunk_bytes: u64) -> PathBuf {
    let header = vsky_model::Settings::new(chunk_bytes).disk_header_bytes;
    std::fs::File::create(path)
        .and_then(|f| f.set_len(header + chunks * chunk_bytes))
        .unwrap_or_else(|e| panic!("creating the disk image {}: {e}", path.display()));
    path.to_path_buf()
}

/// The configuration of storage-only agent `name` of the manager at `url`
/// (with the unbound agent token), serving NBD on loopback `port` from
/// `disk`. Short heartbeats and NBD timeouts keep tests fast.
pub fn storage_agent_config(url: &str, name: &str, port: u16, disk: PathBuf) -> vsky_agent::Config {
    vsky_agent::Config {
        client: ClientConfig {
            manager_url: url.to_string(),
            token: Some(AGENT_TOKEN.into()),
            ..ClientConfig::default()
        },
        server_name: name.to_string(),
        nbd_listen: format!("127.0.0.1:{port}")
            .parse()
            .expect("a loopback address"),
        advertise: format!("127.0.0.1:{port}"),
        disks: vec![DiskArg {
            path: disk,
            class: None,
        }],
        labels: Default::default(),
        heartbeat_interval: Duration::from_millis(200),
        head: false,
        timeouts: NbdTimeouts {
            request: Duration::from_secs(5),
            dead_connection: Duration::from_secs(1),
            connect: Duration::from_secs(2),
        },
        nbd_backends: Default::default(),
        api: None,
    }
}

/// A running in-process agent; dropping it stops the agent.
#[must_use = "the agent stops when this is dropped"]
pub struct AgentHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    /// Runs the agent `config` on the current tokio runtime.
    pub fn spawn(config: vsky_agent::Config) -> AgentHandle {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(vsky_agent::run(config, async move {
            // Either `stop` or the handle's drop ends the wait.
            let _ = stopped.await;
        }));
        AgentHandle { stop, task }
    }

    /// Stops the agent and waits until it has; panics if it failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the agent task ran to its end")
            .expect("the agent stopped cleanly");
    }
}

/// A manager served by this test process and its storage agents `s0`,
/// `s1`, …, each serving one disk image `disk<i>.img` of the scratch
/// directory. Dropping it stops them all.
#[must_use = "the manager and the agents stop when this is dropped"]
pub struct LocalCluster {
    pub manager: InProcessManager,
    pub agents: Vec<AgentHandle>,
    /// The agents' disk images, by agent.
    pub disks: Vec<PathBuf>,
}

impl LocalCluster {
    /// `agents` agents with a disk of `chunks` chunks of [`CHUNK`] each,
    /// and a manager with [`patient_recovery`], all in `dir`.
    pub async fn start(dir: &Path, agents: usize, chunks: u64) -> LocalCluster {
        Self::start_with(dir, patient_recovery(), agents, chunks).await
    }

    /// Like [`LocalCluster::start`], with the recovery loop's settings.
    pub async fn start_with(
        dir: &Path,
        recovery: RecoveryConfig,
        agents: usize,
        chunks: u64,
    ) -> LocalCluster {
        let manager = InProcessManager::start_with(dir, CHUNK, recovery).await;
        let disks: Vec<PathBuf> = (0..agents)
            .map(|s| disk_image(&dir.join(format!("disk{s}.img")), chunks, CHUNK))
            .collect();
        let handles = disks
            .iter()
            .enumerate()
            .map(|(s, disk)| {
                let name = format!("s{s}");
                let config = storage_agent_config(&manager.url, &name, free_port(), disk.clone());
                AgentHandle::spawn(config)
            })
            .collect();
        let admin = manager.admin();
        let start = Instant::now();
        while !admin.cluster().await.is_ok_and(|c| c.disks == agents) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {agents} agents to register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        LocalCluster {
            manager,
            agents: handles,
            disks,
        }
    }

    pub fn url(&self) -> &str {
        &self.manager.url
    }

    pub fn admin(&self) -> Client {
        self.manager.admin()
    }

    pub fn client(&self, token: &str) -> Client {
        self.manager.client(token)
    }
}
