//! The cluster of a scenario, all inside the VM:
//!
//! - the manager in the root network namespace on 0.0.0.0:8080 (with `ha`,
//!   two managers on 8080 and 8081 sharing a one-member etcd);
//! - storage server `sN`: its own network namespace linked to the root one
//!   by a veth pair (`netns.rs`). Its agent runs there (`nsenter -n`),
//!   storage-only, serving file-backed disks on the ext4-over-loop
//!   `VSKY_LAB_DIR` (tmpfs has no O_DIRECT). Killing the agent leaves the
//!   namespace and link in place, so the head sees exactly what a crashed
//!   storage daemon looks like;
//! - the head: an agent (not storage-only, no disks) in the root
//!   namespace, which assembles attached volumes as
//!   `/dev/mapper/vsky-<volume>`;
//! - with `second_head`, a second head `hp` in a network namespace of its
//!   own (so its link can be cut, as a partitioned host's), whose agent
//!   names its kernel objects `vskyp-…` (`--kernel-name-prefix`): two heads
//!   share the VM's one kernel without seeing each other's devices.
//!
//! Every scenario builds a fresh cluster (new store, new blank disks) and
//! the fixture tears it down when dropped: volumes detached, every process
//! it started killed, the veth links deleted. Dropped without `finish`
//! (the scenario failed), it first prints the daemons' log tails, the
//! kernel's view and the volumes, so a failure can be diagnosed from the
//! console alone.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::api::Api;
use crate::data::device;
use crate::kernel;
use crate::netns;
use crate::out::{say, secs};
use crate::tool::run;
use crate::wait::{self, wait_for};

/// The scenario's state: tokens, store, logs.
pub const WORK: &str = "/tmp/cluster";
/// The lab's binaries in the VM: vsky, vsky-agent, vsky-manager, etcd,
/// xapi-tests (`VSKY_LAB_BIN` overrides).
const BIN_DEFAULT: &str = "/lab/bin";
const ADMIN_TOKEN: &str = "lab-admin-token-0123456789";
const AGENT_TOKEN: &str = "lab-agent-token-0123456789";
const AGENT_API_TOKEN: &str = "lab-agent-api-token-0123456789";
/// Where a scenario mounts a volume's filesystem (unmounted at teardown).
pub const MOUNT: &str = "/mnt/vol";
/// The head's name in the manager.
pub const HEAD: &str = "head";
/// The head's NBD backend file when `nbd_backend_file` is set: under the
/// lab's work directory, so every cluster starts without one.
pub const NBD_BACKEND_FILE: &str = "/tmp/cluster/head-nbd-backends";
/// Where the head agent serves its local API (`head_api`).
pub const HEAD_API: &str = "127.0.0.1:10810";
/// The second head's name in the manager (`second_head`).
pub const HEAD_P: &str = "hp";
/// The second head's kernel name prefix: its devices are `vskyp-…`.
pub const HEAD_P_PREFIX: &str = "vskyp";
/// The second head's network namespace index (storage servers use 1..N).
const HEAD_P_NS: usize = 60;

/// What a scenario's cluster looks like.
#[derive(Clone, Debug)]
pub struct Config {
    /// Storage servers s1..sN.
    pub servers: usize,
    /// Disks per storage server.
    pub disks: usize,
    pub disk_mib: u64,
    pub chunk: &'static str,
    /// A silent server's legs are replaced after this (production: 60s).
    pub grace: &'static str,
    /// How long a silent head keeps its volumes against an attach
    /// elsewhere (the manager's `--head-grace`; production default 30s).
    pub head_grace: &'static str,
    /// The per-resync rate limit, if any.
    pub resync_rate: Option<&'static str>,
    /// Resyncs one disk takes part in at once (the manager's
    /// `--resyncs-per-disk`, k; production default 1).
    pub resyncs_per_disk: u32,
    /// The manager's scrub patrol: off (`0`) unless a scenario tests it, so
    /// scrubs do not disturb the others' timings.
    pub scrub_interval: &'static str,
    /// Two managers on etcd.
    pub ha: bool,
    /// The head also serves its local API (the datapath plugin's), as in
    /// dom0.
    pub head_api: bool,
    /// The head keeps which NBD device imports which leg in its own file
    /// ([`NBD_BACKEND_FILE`]), as it must on kernels before 5.14 (XCP-ng's
    /// 4.19), although the lab's kernel keeps backend identifiers: so the
    /// real kernel checks that path.
    pub nbd_backend_file: bool,
    /// A second head, [`HEAD_P`], in its own network namespace.
    pub second_head: bool,
    /// The second head's `--nbd-timeout` (the head's is 5 s).
    pub second_head_nbd_timeout_s: u64,
}

impl Config {
    /// A cluster for thin volumes: `chunk`-sized chunks on 320 MiB disks,
    /// room for a few layers. The disks are sparse files on the one small
    /// filesystem all storage servers share: what a scenario writes, both
    /// replicas and the mirrors' initial syncs, must fit that.
    pub fn thin(chunk: &'static str) -> Config {
        Config {
            chunk,
            disk_mib: 320,
            ..Config::default()
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            servers: 2,
            disks: 1,
            disk_mib: 64,
            chunk: "8MiB",
            grace: "10s",
            head_grace: "30s",
            resync_rate: None,
            resyncs_per_disk: 1,
            scrub_interval: "0",
            ha: false,
            head_api: false,
            nbd_backend_file: false,
            second_head: false,
            second_head_nbd_timeout_s: 5,
        }
    }
}

pub struct Cluster {
    pub cfg: Config,
    pub work: PathBuf,
    pub api: Api,
    bin: PathBuf,
    srv: PathBuf,
    /// The namespace holders, by server index (1-based).
    namespaces: BTreeMap<usize, Child>,
    /// Running agents by server name (`s1`…, `head`).
    agents: BTreeMap<String, Child>,
    /// Running managers by port.
    managers: BTreeMap<u16, Child>,
    etcd: Option<Child>,
    finished: bool,
}

impl Cluster {
    /// Starts the manager(s), the storage servers and the head, and waits
    /// until every agent has registered.
    pub fn up(cfg: Config) -> Result<Cluster> {
        let start = Instant::now();
        let work = PathBuf::from(WORK);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("create {WORK}"))?;
        for (file, token) in [
            ("admin.token", ADMIN_TOKEN),
            ("agent.token", AGENT_TOKEN),
            ("agent-api.token", AGENT_API_TOKEN),
        ] {
            std::fs::write(work.join(file), format!("{token}\n"))?;
        }
        let mut c = Cluster {
            api: Api::new(manager_urls(cfg.ha), ADMIN_TOKEN)?,
            cfg,
            work,
            bin: std::env::var_os("VSKY_LAB_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| BIN_DEFAULT.into()),
            srv: std::env::var_os("VSKY_LAB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/srv".into()),
            namespaces: BTreeMap::new(),
            agents: BTreeMap::new(),
            managers: BTreeMap::new(),
            etcd: None,
            finished: false,
        };
        if c.cfg.ha {
            c.etcd_up()?;
            for port in [8080, 8081] {
                let advertise = format!("http://127.0.0.1:{port}");
                c.manager_start(
                    port,
                    &[
                        "--store",
                        "etcd://127.0.0.1:2379",
                        "--advertise-url",
                        &advertise,
                        "--lease-ttl",
                        "3",
                    ],
                )?;
            }
        } else {
            let store = c.work.join("store");
            c.manager_start(8080, &["--data-dir", &store.to_string_lossy()])?;
        }
        for i in 1..=c.cfg.servers {
            // Stored before anything can fail, so teardown kills it.
            let holder = netns::spawn_holder()?;
            let pid = holder.id();
            c.namespaces.insert(i, holder);
            netns::link_up(i, pid)?;
            // Fresh, blank disks: an image left by an earlier scenario
            // carries that cluster's disk label, which this one would refuse.
            for f in c.disk_files(i) {
                let _ = std::fs::remove_file(&f);
                File::create(&f)
                    .and_then(|file| file.set_len(c.cfg.disk_mib << 20))
                    .with_context(|| format!("create disk image {}", f.display()))?;
            }
            c.agent_start(&format!("s{i}"))?;
        }
        c.head_start()?;
        let heads = if c.cfg.second_head {
            let holder = netns::spawn_holder()?;
            let pid = holder.id();
            c.namespaces.insert(HEAD_P_NS, holder);
            netns::link_up(HEAD_P_NS, pid)?;
            c.second_head_start()?;
            2
        } else {
            1
        };
        let n = c.cfg.servers;
        wait_for(
            &format!("manager and {} agents online", n + heads),
            wait::secs(60),
            || Ok(c.api.servers_online()? >= n + heads),
        )?;
        say(format!(
            "cluster up in {}s: manager, {n} storage servers (s1..s{n}, one netns + veth + {} × {} MiB disk each), head",
            secs(start),
            c.cfg.disks,
            c.cfg.disk_mib
        ));
        Ok(c)
    }

    /// The storage servers' names: `s1`…
    pub fn servers(&self) -> Vec<String> {
        (1..=self.cfg.servers).map(|i| format!("s{i}")).collect()
    }

    fn log_file(&self, name: &str) -> Result<(Stdio, Stdio)> {
        let path = self.work.join(format!("{name}.log"));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
    }

    /// One of the lab's binaries.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn manager_start(&mut self, port: u16, extra: &[&str]) -> Result<()> {
        let w = &self.work;
        let mut cmd = Command::new(self.bin("vsky-manager"));
        cmd.arg("--listen")
            .arg(format!("0.0.0.0:{port}"))
            .arg("--token-file")
            .arg(w.join("admin.token"))
            .arg("--agent-token-file")
            .arg(w.join("agent.token"))
            .args(["--chunk-size", self.cfg.chunk])
            .args(["--server-grace", self.cfg.grace])
            .args(["--head-grace", self.cfg.head_grace])
            .args(["--scrub-interval", self.cfg.scrub_interval])
            .args(["--resyncs-per-disk", &self.cfg.resyncs_per_disk.to_string()]);
        if let Some(rate) = self.cfg.resync_rate {
            cmd.args(["--resync-rate", rate]);
        }
        let (out, err) = self.log_file(&format!("manager{port}"))?;
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("start vsky-manager")?;
        self.managers.insert(port, child);
        Ok(())
    }

    /// The manager URLs storage server `i` reaches from its namespace.
    fn manager_urls_from(&self, i: usize) -> String {
        let host = netns::root_side(i);
        if self.cfg.ha {
            format!("http://{host}:8080,http://{host}:8081")
        } else {
            format!("http://{host}:8080")
        }
    }

    fn etcd_up(&mut self) -> Result<()> {
        let (out, err) = self.log_file("etcd")?;
        let child = Command::new(self.bin("etcd"))
            .args(["--name", "lab", "--data-dir"])
            .arg(self.work.join("etcd"))
            .args([
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "lab=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("start etcd")?;
        self.etcd = Some(child);
        wait_for("etcd to answer", wait::secs(60), || {
            Ok(crate::http::get("127.0.0.1:2379", "/health", None)?.0 == 200)
        })
    }

    fn disk_files(&self, i: usize) -> Vec<PathBuf> {
        if self.cfg.disks == 1 {
            return vec![self.srv.join(format!("s{i}.img"))];
        }
        (1..=self.cfg.disks)
            .map(|j| self.srv.join(format!("s{i}-d{j}.img")))
            .collect()
    }

    fn index(server: &str) -> Result<usize> {
        server
            .strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("'{server}' is not a storage server (s1, s2, …)"))
    }

    /// Waits until the head agents' local APIs answer (they start after the
    /// agent registered).
    pub fn head_api_up(&self) -> Result<()> {
        let mut apis = vec![HEAD_API.to_string()];
        if self.cfg.second_head {
            apis.push(second_head_api());
        }
        for api in apis {
            wait_for(
                &format!("the head agent's local API on {api}"),
                wait::secs(30),
                || Ok(crate::http::get(&api, "/v1/health", None)?.0 == 200),
            )?;
        }
        Ok(())
    }

    /// `vsky-agent` as `name` with its manager URLs and token, inside
    /// namespace `ns` (by server index) or, without one, in the root
    /// namespace (`nsenter` execs the agent: the child is the agent itself).
    fn agent_command(&self, name: &str, ns: Option<usize>) -> Result<Command> {
        let mut cmd = match ns {
            Some(i) => {
                let pid = self.namespaces.get(&i).context("no namespace")?.id();
                let mut cmd = Command::new("nsenter");
                cmd.args(["-t", &pid.to_string(), "-n"])
                    .arg(self.bin("vsky-agent"));
                cmd
            }
            None => Command::new(self.bin("vsky-agent")),
        };
        let manager = match ns {
            Some(i) => self.manager_urls_from(i),
            None => self.api_urls().to_string(),
        };
        cmd.args(["--manager", &manager])
            .arg("--token-file")
            .arg(self.work.join("agent.token"))
            .args(["--server-name", name]);
        Ok(cmd)
    }

    /// Starts `cmd` as agent `name`, logging to `<name>.log`.
    fn spawn_agent(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let (out, err) = self.log_file(name)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start the agent {name}"))?;
        self.agents.insert(name.to_string(), child);
        Ok(())
    }

    /// (Re)starts the storage agent of `server` inside its namespace.
    pub fn agent_start(&mut self, server: &str) -> Result<()> {
        let i = Cluster::index(server)?;
        let mut cmd = self.agent_command(server, Some(i))?;
        cmd.args(["--listen", &format!("{}:10809", netns::server_side(i))]);
        for f in self.disk_files(i) {
            cmd.arg("--disk").arg(f);
        }
        cmd.args(["--storage-only", "--heartbeat-interval", "1"]);
        self.spawn_agent(server, cmd)
    }

    /// What both heads run with: short NBD timeouts bound how long a write
    /// waits on a dead server before md fails the leg; debug logs mark
    /// each reconcile; the local API with `head_api`.
    fn head_flags(&self, cmd: &mut Command, nbd_timeout_s: u64) {
        cmd.args(["--heartbeat-interval", "1"])
            .args(["--nbd-timeout", &nbd_timeout_s.to_string()])
            .args([
                "--dead-connection-timeout",
                "2",
                "--log",
                "info,vsky_agent=debug",
            ]);
        if self.cfg.head_api {
            cmd.arg("--api-token-file")
                .arg(self.work.join("agent-api.token"));
        }
    }

    /// The head agent, in the root namespace.
    pub fn head_start(&mut self) -> Result<()> {
        let mut cmd = self.agent_command(HEAD, None)?;
        cmd.args(["--listen", "127.0.0.1:10809"]);
        self.head_flags(&mut cmd, 5);
        if self.cfg.nbd_backend_file {
            cmd.arg("--nbd-backend-file")
                .arg(NBD_BACKEND_FILE)
                .arg("--nbd-backend-file-always");
        }
        self.spawn_agent(HEAD, cmd)
    }

    /// The second head ([`HEAD_P`]) in its namespace: the head's flags, its
    /// own kernel name prefix, NBD backend and activations files.
    fn second_head_start(&mut self) -> Result<()> {
        let mut cmd = self.agent_command(HEAD_P, Some(HEAD_P_NS))?;
        cmd.args([
            "--listen",
            &format!("{}:10809", netns::server_side(HEAD_P_NS)),
        ])
        .args(["--kernel-name-prefix", HEAD_P_PREFIX])
        .arg("--nbd-backend-file")
        .arg(self.work.join("hp-nbd-backends"))
        .arg("--activations-file")
        .arg(self.work.join("hp-activations"))
        .args(["--api-listen", &second_head_api()]);
        self.head_flags(&mut cmd, self.cfg.second_head_nbd_timeout_s);
        self.spawn_agent(HEAD_P, cmd)
    }

    /// Cuts the second head's link (it goes silent: nothing reaches the
    /// manager or the storage servers, as a partitioned host) or brings it
    /// back.
    pub fn set_second_head_link(&self, up: bool) -> Result<()> {
        netns::set_link(HEAD_P_NS, up)
    }

    fn api_urls(&self) -> &'static str {
        manager_urls(self.cfg.ha)
    }

    /// `kill -9` of an agent (`s1`…, or the head), as a crash.
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        let mut child = self
            .agents
            .remove(name)
            .with_context(|| format!("no running agent {name}"))?;
        child.kill().with_context(|| format!("kill {name}"))?;
        child.wait()?;
        Ok(())
    }

    /// Sends `signal` (`TERM`, `KILL`) to the head agent and waits for it to
    /// exit.
    pub fn stop_head(&mut self, signal: &str) -> Result<()> {
        let mut child = self
            .agents
            .remove(HEAD)
            .context("the head is not running")?;
        run("kill", &[&format!("-{signal}"), &child.id().to_string()])?;
        wait_for(
            &format!("the head agent to exit after SIG{signal}"),
            wait::secs(15),
            || Ok(child.try_wait()?.is_some()),
        )
    }

    /// Takes the veth link of `server` down (silence, not a reset: only
    /// the head's NBD request timeout notices) or brings it back up.
    pub fn set_link(&self, server: &str, up: bool) -> Result<()> {
        let how = if up { "up" } else { "down" };
        netns::set_link(Cluster::index(server)?, up)
            .with_context(|| format!("take the link of {server} {how}"))
    }

    /// The manager on `port` (HA), killed -9.
    pub fn kill_manager(&mut self, port: u16) -> Result<()> {
        let mut child = self
            .managers
            .remove(&port)
            .with_context(|| format!("no manager on :{port}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The role the manager on `port` reports (`leader`, `standby`, `single`).
    pub fn role_of(&self, port: u16) -> Result<String> {
        Api::new(&format!("http://127.0.0.1:{port}"), ADMIN_TOKEN)?.role()
    }

    /// The `vsky` CLI against this cluster; for the scenarios that prove
    /// the CLI itself, and for tables shown to the reader.
    pub fn vsky(&self, args: &[&str]) -> Result<Output> {
        Command::new(self.bin("vsky"))
            .args(args)
            .env("VSKY_MANAGER", self.api_urls())
            .env("VSKY_TOKEN_FILE", self.work.join("admin.token"))
            .stdin(Stdio::null())
            .output()
            .context("run vsky")
    }

    /// The CLI's output for the reader; its exit status must be 0.
    pub fn vsky_text(&self, args: &[&str]) -> Result<String> {
        let out = self.vsky(args)?;
        if !out.status.success() {
            bail!(
                "vsky {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the CLI, whose exit status is under test (`--wait` commands);
    /// fails unless it is 0. Returns the last `lines` lines of its output.
    pub fn vsky_tail(&self, args: &[&str], lines: usize) -> Result<String> {
        let out = self.vsky(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        if !out.status.success() {
            bail!(
                "vsky {} failed ({}): {}",
                args.join(" "),
                out.status,
                tail.replace('\n', " ")
            );
        }
        Ok(tail)
    }

    /// A CLI command that follows its work (`--wait`, up to 300 s), whose
    /// exit status is under test: its last five lines of output.
    pub fn vsky_waited(&self, args: &[&str]) -> Result<String> {
        let mut all = args.to_vec();
        all.extend(["--wait", "--wait-timeout", "300s"]);
        self.vsky_tail(&all, 5)
    }

    pub fn head_log(&self) -> String {
        std::fs::read_to_string(self.work.join("head.log")).unwrap_or_default()
    }

    /// How often the head has (re)assembled volumes: grows by one per apply.
    pub fn assembled_count(&self) -> usize {
        self.head_log().matches("volume assembled").count()
    }

    pub fn admin_token(&self) -> &'static str {
        ADMIN_TOKEN
    }

    /// `POST /v1/volumes/<volume>/<action>` on the head's local API (the
    /// datapath plugin's), with a JSON `body` (none when empty).
    pub fn head_local(
        &self,
        action: &str,
        volume: &str,
        body: &str,
    ) -> Result<crate::http::Answer> {
        self.local_api(HEAD, action, volume, body)
    }

    /// [`Self::head_local`] on either head ([`HEAD`] or [`HEAD_P`]).
    pub fn local_api(
        &self,
        head: &str,
        action: &str,
        volume: &str,
        body: &str,
    ) -> Result<crate::http::Answer> {
        let addr = if head == HEAD_P {
            second_head_api()
        } else {
            HEAD_API.to_string()
        };
        crate::http::post(
            &addr,
            &format!("/v1/volumes/{volume}/{action}"),
            Some(AGENT_API_TOKEN),
            body,
        )
    }

    /// Attaches `volume` to the head and waits for the device node and the
    /// mirrors' initial resync.
    pub fn attach_wait(&self, volume: &str) -> Result<()> {
        let start = Instant::now();
        let dev = device(volume);
        self.api.attach(volume, HEAD)?;
        wait_for(
            &format!("{} as a block device", dev.display()),
            wait::secs(60),
            || Ok(kernel::is_block(&dev)),
        )?;
        say(format!(
            "attached: {} appeared after {}s",
            dev.display(),
            secs(start)
        ));
        wait_for(
            &format!("mirrors of {volume} in sync"),
            wait::secs(60),
            kernel::mirrors_in_sync,
        )?;
        say(format!(
            "mirrors in sync after {}s ({} raid1 mirrors, all legs A)",
            secs(start),
            kernel::mirrors()?.len()
        ));
        Ok(())
    }

    /// Detaches `volume` and waits until the manager released it and every
    /// device and NBD connection is gone.
    pub fn detach_wait(&self, volume: &str) -> Result<()> {
        let start = Instant::now();
        self.detach_released(volume)?;
        wait_for(
            &format!("every dm device and NBD connection of {volume} to go"),
            wait::secs(30),
            kernel::nothing_assembled,
        )?;
        say(format!(
            "detached: device, mirrors and NBD connections gone after {}s",
            secs(start)
        ));
        Ok(())
    }

    /// Waits until the cluster's free bytes are `free` again: every chunk
    /// deleted volumes held is wiped and back in the free pool.
    pub fn wait_all_free(&self, free: u64) -> Result<()> {
        wait_for("every chunk back in the free pool", wait::secs(60), || {
            Ok(self.api.cluster()?.free_bytes == free)
        })
    }

    /// Detaches `volume` and waits until the manager released it and its
    /// device is gone (devices it shares with volumes still assembled stay).
    pub fn detach_released(&self, volume: &str) -> Result<()> {
        let dev = device(volume);
        self.api.detach(volume)?;
        wait_for(
            &format!("the manager to release {volume}"),
            wait::secs(60),
            || Ok(self.api.volume(volume)?.volume.attached_to.is_none()),
        )?;
        wait_for(
            &format!("{} to vanish", dev.display()),
            wait::secs(60),
            || Ok(!dev.exists()),
        )
    }

    /// The scenario passed: tear down without diagnostics (unless the lab
    /// runs with LAB_DEBUG=1).
    pub fn finish(mut self) {
        if debug() {
            self.dump(60);
        }
        self.finished = true;
    }

    /// The daemons' log tails, the kernel's view and the volumes.
    fn dump(&self, lines: usize) {
        println!("---- diagnostics");
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.work)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for p in &logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("panicked")) {
                println!("{}: {line}", p.display());
            }
        }
        for p in &logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            println!("---- tail {}", p.display());
            for line in &all[all.len().saturating_sub(lines)..] {
                println!("{}", strip_ansi(line));
            }
        }
        match self.vsky_text(&["volume", "list"]) {
            Ok(t) => println!("---- volumes\n{t}"),
            Err(e) => println!("---- volumes: {e:#}"),
        }
        match kernel::dmsetup_status() {
            Ok(t) => println!("---- dmsetup status\n{t}"),
            Err(e) => println!("---- dmsetup status: {e:#}"),
        }
        println!(
            "---- nbd connected: {}",
            kernel::nbd_connected().map_or_else(|e| e.to_string(), |n| n.to_string())
        );
        println!("---- kernel\n{}", kernel::dmesg_tail(15));
    }

    /// Detaches what the head still has assembled, then stops every
    /// process this cluster started.
    fn teardown(&mut self) {
        let _ = Command::new("umount").arg(MOUNT).output();
        if self.cfg.second_head {
            // Cut off, it could not tell the manager its devices are gone.
            let _ = self.set_second_head_link(true);
        }
        if self.agents.contains_key(HEAD) && !self.managers.is_empty() {
            let second = format!("{HEAD_P_PREFIX}-");
            for top in kernel::top_devices().unwrap_or_default() {
                if let Some(v) = top
                    .strip_prefix("vsky-")
                    .or_else(|| top.strip_prefix(&second))
                {
                    let _ = self.api.detach(v);
                }
            }
            // Until the head has torn everything down, NBD connections
            // included: killed halfway, it would leave connected NBD
            // devices that the next scenario counts as its own. Under TCG
            // a volume of ten mirrors takes well over ten seconds.
            let _ = wait_for(
                "the head to tear every volume down",
                wait::secs(30),
                kernel::nothing_assembled,
            );
        }
        let children = self
            .agents
            .values_mut()
            .chain(self.managers.values_mut())
            .chain(self.etcd.iter_mut())
            .chain(self.namespaces.values_mut());
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        netns::delete_links();
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Ok(left) = kernel::mapper()
            && !left.is_empty()
        {
            say(format!(
                "cleanup: devices left after detach: {}",
                left.join(" ")
            ));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.finished {
            self.dump(if debug() { 60 } else { 15 });
        }
        self.teardown();
    }
}

/// Where the second head serves its local API (with `head_api`): in its
/// namespace, reached over its link.
fn second_head_api() -> String {
    format!("{}:10810", netns::server_side(HEAD_P_NS))
}

/// The manager URLs in the root namespace (the CLI's, the head's and the
/// scenario's).
fn manager_urls(ha: bool) -> &'static str {
    if ha {
        "http://127.0.0.1:8080,http://127.0.0.1:8081"
    } else {
        "http://127.0.0.1:8080"
    }
}

/// lab/run passes LAB_DEBUG=1 as `vsky.debug=1` on the kernel command line:
/// print the daemons' logs even when a scenario passes.
fn debug() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("vsky.debug=1"))
}

/// `line` without its ANSI colour sequences (`\x1b[…m`), as the daemons
/// log to a terminal.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "[…m".
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
