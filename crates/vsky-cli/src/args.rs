//! The command line grammar of `vsky`, as clap derive definitions.
//!
//! Everything a user can type is declared here and nowhere else, together
//! with its `--help` text. Values are parsed into their final types at parse
//! time (sizes into bytes, labels into pairs, the timeout into a
//! [`Duration`]) so that a bad value is a clap usage error (exit status 2)
//! naming the offending argument, before any request leaves the machine.
//! Rules about what the cluster accepts (replica counts, stripe limits, name
//! syntax) are deliberately *not* checked here: they live in the manager,
//! and the CLI prints the manager's answer.
//!
//! Size: about 670 lines of grammar and 330 of parser tests. It stays one
//! file because the grammar is one concern: every command and flag a user can
//! type, read in one place.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Default manager URL when neither `--manager` nor `VSKY_MANAGER` is given.
pub const DEFAULT_MANAGER: &str = "http://127.0.0.1:8080";

const ROOT_AFTER_HELP: &str = "\
Connection settings come from flags or the environment:
  VSKY_MANAGER      manager base URL (default http://127.0.0.1:8080)
  VSKY_TOKEN_FILE   file holding the admin bearer token
  VSKY_TOKEN        the admin bearer token itself (used when no token file is given)
  VSKY_CA_FILE      PEM file of the CA that signed the manager's certificate
  VSKY_TIMEOUT      per-request timeout (default 30s)

The token is never accepted as a flag value, because flags are visible to
every user in `ps`. A token file holds the token on its first line that is
neither blank nor a comment (#); surrounding whitespace is ignored.

Sizes accept binary units (KiB, MiB, GiB, TiB, PiB; also K, M, G, T, P) that
are powers of 1024, decimal units (kB, MB, GB, TB, PB) that are powers of
1000, fractions that come out as whole bytes (1.5GiB), and bare byte counts.

Exit status: 0 success, 1 the manager refused the request, 2 bad command
line, 3 the manager cannot be reached, 4 local configuration problem (token
or CA file, manager URL).

Examples:
  vsky --manager https://mgr.example:8080 --token-file /etc/vsky/admin.token cluster status
  vsky volume create vm-101-disk-0 --size 40GiB --replicas 2
  vsky --json volume show vm-101-disk-0";

/// VastSky admin command line.
#[derive(Debug, Parser)]
#[command(
    name = "vsky",
    version,
    about = "VastSky admin command line: servers, disks and volumes of a VastSky storage pool",
    long_about = "VastSky admin command line.\n\n\
        Manages the servers, disks and mirrored volumes of a VastSky storage \
        pool through the manager's REST API v1. Every command is one request \
        (or a few reads) to the manager; the manager decides what is allowed \
        and its error messages are printed as they are.",
    after_help = ROOT_AFTER_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output options, accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Manager base URL(s), comma-separated for an HA group.
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL…]",
        env = "VSKY_MANAGER",
        default_value = DEFAULT_MANAGER,
        long_help = "Base URL of the VastSky manager, http:// or https://. \
            With several managers on etcd (one leader, standbys), list them \
            comma-separated: requests go to the leader, and move to another \
            manager when one is unreachable or answers not_leader. \
            Example: --manager https://mgr1.example:8080,https://mgr2.example:8080"
    )]
    pub manager: String,

    /// File holding the admin bearer token.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "VSKY_TOKEN_FILE",
        long_help = "File holding the admin bearer token: its first line that is \
            neither blank nor a comment (#), trimmed. Takes precedence over the \
            VSKY_TOKEN environment variable. The token itself is never accepted \
            as a flag value, since flags show in `ps`."
    )]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA that signed the manager's certificate.
    #[arg(
        long,
        global = true,
        value_name = "PEM",
        env = "VSKY_CA_FILE",
        long_help = "PEM file of the certificate authority that signed the manager's \
            TLS certificate; it is trusted in addition to the system roots. \
            Only meaningful with an https:// manager URL."
    )]
    pub ca_file: Option<PathBuf>,

    /// Print the manager's JSON answer instead of tables.
    #[arg(
        long,
        global = true,
        long_help = "Print machine-readable output: the manager's JSON answer, \
            pretty-printed. Commands whose answer is empty (delete, remove) print \
            a small status object such as {\"result\": \"deleted\", \"volume\": \"v1\"}. \
            Errors still go to stderr as text; use the exit status."
    )]
    pub json: bool,

    /// Per-request timeout, e.g. 30s, 500ms, 2m.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "VSKY_TIMEOUT",
        default_value = "30s",
        value_parser = parse_timeout,
        long_help = "How long to wait for each answer from the manager. A number \
            with a unit: ms, s, m (a bare number is seconds). Example: --timeout 2m"
    )]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the state of the whole storage pool.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Add, list, inspect, drain, fail and remove storage servers.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Add, list, inspect, drain, fail and remove physical disks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Work on the pool as a whole: rebalance legs between disks.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Create, inspect, attach, resize and delete mirrored volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Create, list, inspect and delete groups of volumes (XAPI SRs).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Watch the rebuilds (resyncs) that restore failed legs and move
    /// healthy ones.
    #[command(subcommand)]
    Rebuild(RebuildCommand),
    /// Show the cluster's event log: failures, rebuilds queued, started,
    /// done and failed.
    #[command(
        after_help = "Examples:\n  vsky events\n  vsky events --follow\n  vsky events --since 120 --limit 50"
    )]
    Events {
        /// Only events after this sequence number.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// At most this many events (1-1000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
        /// Keep printing new events as they happen (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Move legs from the fullest disks to the emptiest.
    #[command(
        long_about = "Even out the pool, e.g. after adding servers or disks: the manager \
            moves legs from the fullest disks (by the fraction of their chunks in use) \
            to the emptiest, as long as each move narrows the gap, and only where the \
            placement rules allow (distinct servers, racks, disk class). Each move is a \
            resync job (`vsky rebuild list` shows it as `move (rebalance)`): the new leg \
            syncs while the old one keeps serving, then the old chunk is freed, so \
            redundancy never drops. Moves run under the per-disk resync limit, after \
            repairs. Legs of a degraded or busy mirrored disk wait; run the command \
            again later for more.\n\n\
            With --wait, shows the progress of the planned moves until each is done or \
            failed, and exits 1 if any failed.",
        after_help = "Examples:\n  vsky pool rebalance\n  vsky pool rebalance --max-moves 500 --wait"
    )]
    Rebalance {
        /// Plan at most N moves (1-10000; the manager's default, 64, when
        /// omitted).
        #[arg(long, value_name = "N")]
        max_moves: Option<u32>,
        /// Show the planned moves' progress until each is done or failed
        /// (exit 1 if one failed or --wait-timeout passes first).
        #[arg(long)]
        wait: bool,
        /// Longest --wait.
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum RebuildCommand {
    /// List rebuilds and moves: which leg, why, from where to where, by
    /// whom, progress, rate and ETA.
    #[command(
        after_help = "Examples:\n  vsky rebuild list\n  vsky rebuild list --all\n  vsky rebuild list --wait --wait-timeout 30m"
    )]
    List {
        /// Include recent finished (done and failed) rebuilds.
        #[arg(long)]
        all: bool,
        /// Show progress until no rebuild or move is queued or running,
        /// then the list; exits 1 if --wait-timeout passes first.
        #[arg(long)]
        wait: bool,
        /// Longest --wait (e.g. 30m, 2h as 120m).
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group. The SMAPIv3 volume plugin creates one per SR
    /// (`sr-<uuid>`); admins rarely need to.
    #[command(after_help = "Example:\n  vsky group create lab --display-name \"Lab VMs\"")]
    Create {
        /// Group name (letters, digits, '.', '_', '-').
        name: String,
        /// Free-form display name (defaults to the name).
        #[arg(long, value_name = "TEXT")]
        display_name: Option<String>,
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// A UUID (8-4-4-4-12 hex digits, e.g. the SR's uuid): creating
        /// again with the same uuid succeeds unchanged.
        #[arg(long, value_name = "UUID")]
        uuid: Option<String>,
    },
    /// List groups with their volumes' sizes and redundancy.
    #[command(after_help = "Example:\n  vsky group list")]
    List,
    /// Show one group and its volumes.
    #[command(after_help = "Example:\n  vsky group show sr-3f2c…")]
    Show {
        /// Group name.
        name: String,
    },
    /// Delete an empty group (delete its volumes first).
    #[command(after_help = "Example:\n  vsky group delete lab")]
    Delete {
        /// Group name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Summary: servers, disks, capacity, volumes, degraded and rebuilding.
    #[command(
        long_about = "Print a summary of the pool: the cluster id (every disk's label \
            carries it), servers and disks (and how many have failed), chunk \
            capacity with free, used and releasing bytes, volumes, and how many mirrored disks are degraded (a failed leg) or \
            rebuilding (a leg resyncing).",
        after_help = "Example:\n  vsky cluster status\n  vsky --json cluster status"
    )]
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a storage server with the manager.
    #[command(
        long_about = "Register a storage server. Its agent must listen at --address; \
            disks are added afterwards with `vsky disk add` (or by the agent when \
            it registers).",
        after_help = "Examples:\n  vsky server add node1 --address 10.0.0.11:10809\n  \
            vsky server add node2 --address node2.example:10809 --label rack=r2 --label room=b"
    )]
    Add {
        /// Unique server name.
        name: String,
        /// host:port of the server's agent.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// A label KEY=VALUE; repeat for several. The `rack` label names the failure domain.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List servers.
    #[command(after_help = "Example:\n  vsky server list")]
    List,
    /// Show one server and its disks.
    #[command(
        long_about = "Show one server and its disks. With --json, prints the manager's \
            server object only; use `vsky --json disk list --server NAME` for its disks.",
        after_help = "Example:\n  vsky server show node1"
    )]
    Show {
        /// Server name.
        name: String,
    },
    /// Remove a server from the pool.
    #[command(
        long_about = "Remove a server from the pool. The manager refuses while the \
            server still holds legs or disks; its message says what to do first.",
        after_help = "Example:\n  vsky server remove node3"
    )]
    Remove {
        /// Server name.
        name: String,
    },
    /// Declare a server failed: its legs are replaced from the pool.
    #[command(
        long_about = "Declare a server failed, as an outside health check would. Every leg \
            on its disks is marked failed (the volumes keep serving from their other \
            legs), the server gets no new chunks, and the manager rebuilds each of those \
            legs on another server at once, without waiting for the grace period. \
            With --wait, shows the rebuilds' progress until they are done.",
        after_help = "Examples:\n  vsky server fail node2\n  vsky server fail node2 --wait"
    )]
    Fail {
        /// Server name.
        name: String,
        /// Show a progress bar until every rebuild is done (exit 1 if
        /// --wait-timeout passes first).
        #[arg(long)]
        wait: bool,
        /// Longest --wait.
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
    /// Empty a server gracefully: move its legs to other servers.
    #[command(
        long_about = "Drain a server before taking it out of service. It keeps serving \
            its legs but takes no new chunks, and the manager moves every leg on its \
            disks to another server, one copy at a time per mirrored disk and at most \
            --resyncs-per-disk per disk, after repairs. Each new leg syncs while the old \
            one keeps serving, so redundancy never drops (unlike `vsky server fail`). \
            Once it holds no legs, `vsky server remove` takes it out. Draining again \
            is harmless. A failed server cannot be drained: its legs are being \
            replaced already.\n\n\
            --stop ends the drain: the server takes new chunks again; moves already \
            queued or running finish. With --wait, shows the progress (legs left, moves \
            running, bytes copied) until the server holds no legs.",
        after_help = "Examples:\n  vsky server drain node3\n  vsky server drain node3 --wait && vsky server remove node3\n  vsky server drain node3 --stop"
    )]
    Drain {
        /// Server name.
        name: String,
        /// Stop draining instead: the server takes new chunks again.
        #[arg(long, conflicts_with = "wait")]
        stop: bool,
        /// Show the progress until the server holds no legs (exit 1 if the
        /// drain is stopped or --wait-timeout passes first).
        #[arg(long)]
        wait: bool,
        /// Longest --wait.
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Add a physical disk (block device or file) of a server.
    #[command(
        long_about = "Add a physical disk of a server to the pool. The manager carves \
            it into fixed-size chunks. --size is the usable size of the device or \
            file at PATH on that server.",
        after_help = "Examples:\n  vsky disk add node1 /dev/sdb --size 1.8TiB\n  \
            vsky disk add node1 /dev/nvme0n1 --size 900GB --class nvme"
    )]
    Add {
        /// Name of the server holding the disk.
        server: String,
        /// Block device or file path on that server.
        path: String,
        /// Usable size, e.g. 100GiB, 1.8TiB, 900GB.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// Performance class (ssd, nvme, hdd, …) that volumes may ask for.
        #[arg(long, value_name = "CLASS")]
        class: Option<String>,
    },
    /// List disks, optionally of one server.
    #[command(after_help = "Examples:\n  vsky disk list\n  vsky disk list --server node1")]
    List {
        /// Only the disks of this server (an unknown server is an error).
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
    },
    /// Show one disk.
    #[command(after_help = "Example:\n  vsky disk show 7")]
    Show {
        /// Disk id, as printed by `vsky disk list`.
        id: u64,
    },
    /// Remove a disk from the pool.
    #[command(
        long_about = "Remove a disk from the pool. The manager refuses while legs \
            still live on it; its message says what to do first.",
        after_help = "Example:\n  vsky disk remove 7"
    )]
    Remove {
        /// Disk id.
        id: u64,
    },
    /// Declare a disk failed: its legs are replaced from the pool.
    #[command(
        long_about = "Declare a disk failed. Every leg on it is marked failed (the \
            volumes keep serving from their other legs), the disk gets no new chunks, \
            and the manager rebuilds each of those legs elsewhere at once, in parallel \
            across the pool (at most --resyncs-per-disk per disk). Its free chunks are \
            not copied. With --wait, shows the rebuilds' progress until they are done.",
        after_help = "Examples:\n  vsky disk fail 7\n  vsky disk fail 7 --wait"
    )]
    Fail {
        /// Disk id.
        id: u64,
        /// Show a progress bar until every rebuild is done (exit 1 if
        /// --wait-timeout passes first).
        #[arg(long)]
        wait: bool,
        /// Longest --wait.
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
    /// Empty a disk gracefully: move its legs to other disks.
    #[command(
        long_about = "Drain a disk before replacing it. It keeps serving its legs but \
            takes no new chunks, and the manager moves every leg on it to another disk, \
            one copy at a time per mirrored disk and at most --resyncs-per-disk per \
            disk, after repairs. Each new leg syncs while the old one keeps serving, so \
            redundancy never drops (unlike `vsky disk fail`). Once it holds no legs, \
            `vsky disk remove` takes it out. Draining again is harmless. A failed disk \
            cannot be drained: its legs are being replaced already.\n\n\
            --stop ends the drain: the disk takes new chunks again (unless its server \
            is draining); moves already queued or running finish. With --wait, shows \
            the progress (legs left, moves running, bytes copied) until the disk holds \
            no legs.",
        after_help = "Examples:\n  vsky disk drain 7\n  vsky disk drain 7 --wait && vsky disk remove 7\n  vsky disk drain 7 --stop"
    )]
    Drain {
        /// Disk id.
        id: u64,
        /// Stop draining instead: the disk takes new chunks again.
        #[arg(long, conflicts_with = "wait")]
        stop: bool,
        /// Show the progress until the disk holds no legs (exit 1 if the
        /// drain is stopped or --wait-timeout passes first).
        #[arg(long)]
        wait: bool,
        /// Longest --wait.
        #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_timeout, requires = "wait")]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a mirrored volume.
    #[command(
        long_about = "Create a volume: a concatenation (or, with --stripe-width, a \
            stripe) of mirrored disks, each mirrored over --replicas legs on \
            different servers. Sizes are rounded up by the manager (to 4 KiB, or to \
            whole stripe rows when striped).",
        after_help = "Examples:\n  vsky volume create vm-101-disk-0 --size 40GiB\n  \
            vsky volume create db --size 2TiB --replicas 3 --stripe-width 4 --stripe-unit 64KiB --class nvme\n  \
            vsky volume create scratch --size 100GiB --near node4\n  \
            vsky volume create tmpl --size 900MiB --thin"
    )]
    Create {
        /// Unique volume name.
        name: String,
        /// Usable size, e.g. 10GiB, 1.5TiB, 500GB.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// Legs per mirrored disk; the cluster default when omitted.
        #[arg(long, value_name = "N")]
        replicas: Option<u8>,
        /// Stripe over N mirrored disks (needs --stripe-unit).
        #[arg(long, value_name = "N", requires = "stripe_unit")]
        stripe_width: Option<u32>,
        /// Stripe unit, a power of two such as 64KiB (needs --stripe-width).
        #[arg(
            long,
            value_name = "SIZE",
            value_parser = parse_size_arg,
            requires = "stripe_width"
        )]
        stripe_unit: Option<u64>,
        /// Place every leg on disks of this class.
        #[arg(long, value_name = "CLASS")]
        class: Option<String>,
        /// Place legs near this server (the expected head) when possible.
        #[arg(long, value_name = "SERVER")]
        near: Option<String>,
        /// Thin: take chunks as data is written, not now. Until pools grow
        /// as they fill, a thin volume holds at most one chunk's data less
        /// its pool metadata, and cannot be striped.
        #[arg(long, conflicts_with = "stripe_width")]
        thin: bool,
    },
    /// List volumes.
    #[command(after_help = "Example:\n  vsky volume list")]
    List,
    /// Show a volume with its full layout.
    #[command(
        long_about = "Show a volume and its full layout: every mirrored disk with its \
            legs (server, disk id and path, chunk index, byte offset on the disk, \
            state: active, syncing or failed). A thin volume or a snapshot shows its \
            layers instead, its own first: each one's state (writable, freezing, \
            frozen), when it was frozen, which volumes and snapshots hold data in it, \
            and its legs.",
        after_help = "Example:\n  vsky volume show vm-101-disk-0"
    )]
    Show {
        /// Volume name.
        name: String,
    },
    /// Delete a volume and free its chunks.
    #[command(
        long_about = "Delete a volume. Its chunks are wiped by their agents before \
            they are reused (they show as releasing meanwhile). The manager refuses \
            while the volume is attached.",
        after_help = "Example:\n  vsky volume delete vm-101-disk-0"
    )]
    Delete {
        /// Volume name.
        name: String,
    },
    /// Attach a volume to a head server.
    #[command(
        long_about = "Attach a volume to a head server: that server's agent assembles \
            /dev/mapper/vsky-<name>. The server may be given as a second positional \
            argument or with --server. A server whose agent runs with --storage-only \
            cannot head volumes and is refused.\n\n\
            --read-only reads a snapshot on the server, alongside any other servers \
            reading it and while the volume it was taken of runs elsewhere (what a \
            backup does): the device is read-only. End the read with `vsky volume \
            detach <snapshot> --server <server>`. A snapshot being read cannot be \
            deleted. Any other volume attached --read-only is attached as for a \
            write (it has one head).",
        after_help = "Examples:\n  vsky volume attach vm-101-disk-0 --server node1\n  \
            vsky volume attach vm-101-disk-0 node1\n  \
            vsky volume attach vm-101-disk-0-nightly --server node2 --read-only"
    )]
    Attach {
        /// Volume name.
        name: String,
        /// Head server name (same as --server).
        #[arg(
            value_name = "SERVER",
            required_unless_present = "server",
            conflicts_with = "server"
        )]
        server_pos: Option<String>,
        /// Head server name.
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        /// Read a snapshot on the server, alongside other readers.
        #[arg(long)]
        read_only: bool,
    },
    /// Detach a volume from its head server (--force: fence a dead head).
    #[command(
        long_about = "Detach a volume from its head server, gracefully: the volume is \
            'releasing' while the head tears its devices down, and detached once the \
            head reports them gone (usually within a second or two). Only then does \
            every leg get a new secret export name, so the head's old names open \
            nothing any more; meanwhile no other server may attach the volume. The \
            command waits until the volume is detached (up to --wait-timeout; \
            --no-wait returns at once). If the head cannot tear down (a process \
            holds the device open), the volume stays releasing: close the device on \
            the head, or attach the volume there again to keep using it.\n\n\
            --force is the fencing operation, for a head that is dead, hung or cut \
            off from the network (a releasing volume whose head failed stays \
            releasing until then): the attachment ends at once, every leg gets a new \
            secret export name, and the storage servers cut the NBD connections the \
            old head opened and refuse its names, so its pending and later writes \
            fail with I/O errors. Another server may then attach the volume. Use it \
            only when the head cannot detach by itself: a live head that is fenced \
            sees its volume fail under its users.\n\n\
            --server ends that server's read of a snapshot (see `vsky volume attach \
            --read-only`) at once; a snapshot read on servers needs it, and --force \
            ends every read.",
        after_help = "Examples:\n  vsky volume detach vm-101-disk-0\n  vsky volume detach --force vm-101-disk-0   # the head is dead: fence it\n  vsky volume detach vm-101-disk-0-nightly --server node2   # end node2's read"
    )]
    Detach {
        /// Volume name.
        name: String,
        /// End this server's read of a snapshot.
        #[arg(long, value_name = "SERVER", conflicts_with = "force")]
        server: Option<String>,
        /// Fence the head: end the attachment at once, without waiting for the
        /// head to tear its devices down (for a dead or cut-off head).
        #[arg(long)]
        force: bool,
        /// Return once the release has started, without waiting for the head.
        #[arg(long, conflicts_with = "force")]
        no_wait: bool,
        /// Longest wait for the head to tear its devices down.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_timeout)]
        wait_timeout: Duration,
    },
    /// Grow a volume, online if it is attached.
    #[command(
        long_about = "Grow a volume to --size (the new total size, not an increment). \
            Shrinking is refused by the manager. An attached volume grows online: \
            its head assembles the new mirrored disks and swaps the volume device's \
            table under I/O; the command returns once the head serves the new size \
            (up to 60 s). It is refused, and nothing changes, when the head's agent \
            has been silent.",
        after_help = "Example:\n  vsky volume resize vm-101-disk-0 --size 80GiB"
    )]
    Resize {
        /// Volume name.
        name: String,
        /// New total size, e.g. 20GiB.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// Return once the manager has grown the volume, without waiting
        /// for its head to serve the new size (`vsky volume show` tells).
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a snapshot of a thin volume, attached or not.
    #[command(
        long_about = "Take a snapshot of a thin volume: a read-only volume that keeps \
            the data the volume has now. Nothing is copied; the volume continues on a \
            new, empty layer over the snapshot's. For an attached volume the command \
            returns once its head has switched the volume onto that layer (its I/O \
            pauses for milliseconds); if the head has not within 60 s, the snapshot \
            is dropped and the command fails, with nothing lost.",
        after_help = "Example:\n  vsky volume snapshot tmpl tmpl-2026-12-07"
    )]
    Snapshot {
        /// The thin volume.
        name: String,
        /// The new snapshot's name.
        snapshot: String,
    },
    /// Clone a snapshot or a detached thin volume.
    #[command(
        long_about = "Clone a snapshot or a detached thin volume: a new thin volume \
            that reads the source's data and is written independently of it. \
            Nothing is copied, and each clone may be attached on a different \
            server.",
        after_help = "Example:\n  vsky volume clone tmpl-2026-12-07 vm-102-disk-0"
    )]
    Clone {
        /// The snapshot or detached thin volume to clone.
        source: String,
        /// The new volume's name.
        name: String,
    },
    /// Take a detached thin volume back to one of its snapshots.
    #[command(
        long_about = "Take a detached thin volume back to one of its snapshots: \
            afterwards it reads exactly what the snapshot reads, and what was \
            written to it since is released.",
        after_help = "Example:\n  vsky volume revert vm-101-disk-0 before-upgrade"
    )]
    Revert {
        /// The thin volume.
        name: String,
        /// One of its snapshots.
        snapshot: String,
    },
    /// Change a volume's display name, description or keys (free-form
    /// metadata, e.g. what the SMAPIv3 plugin stores for XAPI).
    #[command(
        after_help = "Examples:\n  vsky volume set vm-101-disk-0 --display-name \"web server root\"\n  vsky volume set vm-101-disk-0 --key owner=alice --key tier=gold --unset-key old"
    )]
    Set {
        /// Volume name.
        name: String,
        #[arg(long, value_name = "TEXT")]
        display_name: Option<String>,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Add or overwrite a key (KEY=VALUE). Repeatable.
        #[arg(long = "key", value_name = "KEY=VALUE", value_parser = parse_key)]
        keys: Vec<(String, String)>,
        /// Remove a key (absent keys are ignored). Repeatable.
        #[arg(long = "unset-key", value_name = "KEY")]
        unset_keys: Vec<String>,
    },
}

/// Parses a size argument with the shared unit rules, so the CLI, the
/// plugins and the manager's messages agree on what `10GiB` means.
pub fn parse_size_arg(input: &str) -> Result<u64, String> {
    vsky_api::units::parse_size(input).map_err(|e| e.to_string())
}

/// Parses `KEY=VALUE`. Only the shape is checked here; which keys and values
/// are acceptable is the manager's decision. The value may be empty and may
/// itself contain `=` (the first `=` separates).
pub fn parse_label(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!(
            "label '{input}' has an empty key; expected KEY=VALUE, e.g. rack=r1"
        )),
        None => Err(format!(
            "label '{input}' has no '='; expected KEY=VALUE, e.g. rack=r1"
        )),
    }
}

/// Parses a volume key as `KEY=VALUE` (the value may be empty).
pub fn parse_key(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!(
            "key '{input}' has an empty name; expected KEY=VALUE, e.g. owner=alice"
        )),
        None => Err(format!(
            "key '{input}' has no '='; expected KEY=VALUE, e.g. owner=alice"
        )),
    }
}

/// Parses a timeout such as `30s`, `500ms`, `2m` or `45` (seconds).
pub fn parse_timeout(input: &str) -> Result<Duration, String> {
    vsky_api::units::parse_duration(input).map_err(|e| {
        format!(
            "invalid timeout '{input}': {} (examples: 30s, 500ms, 2m)",
            e.reason()
        )
    })
}

#[cfg(test)]
mod tests;
