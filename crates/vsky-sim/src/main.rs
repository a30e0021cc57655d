//! `vsky-sim`: runs recovery scenarios under simulated time and prints the
//! results (a Markdown table, or JSON with --json).

use clap::{Parser, Subcommand};
use vsky_sim::{
    ClonePattern, ClonesConfig, ForegroundReport, MoveReport, Report, ReturnReport, Scenario,
    SimConfig, run, run_clones, run_foreground, run_moves, run_return,
};

/// Simulates VastSky's pool-wide rebuild with the real allocator and
/// scheduler, next to dedicated-spare RAID1, an unscheduled rebuild and the
/// ideal bound. Deterministic for a seed.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print JSON instead of a Markdown table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One scenario on one pool.
    Run {
        #[arg(long, default_value_t = 100)]
        servers: usize,
        #[arg(long, default_value_t = 10)]
        disks_per_server: usize,
        /// Chunks per disk (1 GiB chunks).
        #[arg(long, default_value_t = 1023)]
        chunks_per_disk: u64,
        /// Fraction of chunks in use before the fault (0..1).
        #[arg(long, default_value_t = 0.5)]
        fill: f64,
        /// Resyncs a disk takes part in at once.
        #[arg(long, default_value_t = 1)]
        per_disk_limit: u32,
        #[arg(long, value_enum, default_value = "disk-loss")]
        scenario: Scenario,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// server-return: seconds the server is away (less than --grace).
        #[arg(long, default_value_t = 30.0)]
        outage: f64,
        /// server-return: seconds a silent server's legs are held.
        #[arg(long, default_value_t = 60.0)]
        grace: f64,
        /// server-return: mean bytes per second written to each mirrored
        /// disk (1 GiB of a volume) while the server is away.
        #[arg(long, default_value_t = 100e3)]
        write_rate: f64,
        /// rebalance: empty servers added to the filled pool (default: a
        /// tenth of --servers, at least 1).
        #[arg(long)]
        new_servers: Option<usize>,
        /// rebalance: the background policy's window, moves queued or
        /// running at most (the manager's --auto-rebalance-moves; default:
        /// sized to the pool, as the manager does).
        #[arg(long)]
        rebalance_moves: Option<usize>,
        /// rebalance: moves per admin request (`vsky pool rebalance
        /// --max-moves`, at most 10000).
        #[arg(long, default_value_t = 10_000)]
        rebalance_request_moves: usize,
    },
    /// A rebuild under a foreground load on every disk (the volumes' own
    /// I/O), at k = 1, k = 2 and unscheduled: the foreground throughput the
    /// resyncs take, and the rebuild's time. The data for choosing the
    /// manager's --resyncs-per-disk.
    Foreground {
        #[arg(long, default_value_t = 100)]
        servers: usize,
        /// disk-loss, server-loss or second-failure.
        #[arg(long, value_enum, default_value = "server-loss")]
        scenario: Scenario,
        /// Foreground demand on every disk, bytes per second (the disks
        /// serve 200 MB/s).
        #[arg(long, default_value_t = 100e6)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Space taken by clones of a thin template (docs/benchmarks.md): the
    /// template written whole, each clone writing a share of it, the pools
    /// growing by the manager's rule; against thick copies. Sequential and
    /// scattered 4 KiB writes.
    Clones {
        /// The template's size in GiB (1 GiB chunks).
        #[arg(long, default_value_t = 10)]
        template_gib: u64,
        #[arg(long, default_value_t = 10)]
        clones: usize,
        /// Share of the template each clone writes, in percent.
        #[arg(long, default_value_t = 1.0)]
        written_percent: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The tables of docs/benchmarks.md: 10, 100 and 1000 servers × 10
    /// disks, every scenario (server-return, the drains and the rebalance
    /// in tables of their own).
    Table {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Largest pool (servers): 1000 takes minutes.
        #[arg(long, default_value_t = 1000)]
        max_servers: usize,
    },
}

/// One report of either kind, for `--json` (each names its scenario in its
/// config).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum AnyReport {
    Rebuild(Report),
    Return(ReturnReport),
    Moves(MoveReport),
    Foreground(ForegroundReport),
}

const FOREGROUND_HEADER: &str = "| pool | scenario | foreground per disk | k | rebuild | foreground lost | of the demand while it ran | slowest disk's foreground | peak/disk |\n|---|---|---:|---|---:|---:|---:|---:|---:|";

fn foreground_rows(r: &ForegroundReport) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let c = &r.config;
    let mut rows = vec![format!(
        "| {} × {} | {:?} | none | {} | {:.0} s | | | | {} |",
        c.servers,
        c.disks_per_server,
        c.scenario,
        c.per_disk_limit,
        r.idle_pool.restore_seconds,
        r.idle_pool.peak_resyncs_per_disk,
    )];
    for run in &r.runs {
        rows.push(format!(
            "| {} × {} | {:?} | {:.0} MB/s | {} | {:.0} s | {:.0} GiB | {:.1} % | {:.0} MB/s | {} |",
            c.servers,
            c.disks_per_server,
            c.scenario,
            c.foreground_bytes_per_second / 1e6,
            run.per_disk_limit
                .map_or_else(|| "unscheduled".to_string(), |k| k.to_string()),
            run.outcome.restore_seconds,
            run.outcome.foreground_lost_bytes / GIB,
            run.lost_share() * 100.0,
            run.outcome.foreground_slowest_bytes_per_second / 1e6,
            run.outcome.peak_resyncs_per_disk,
        ));
    }
    rows.join("\n")
}

fn row(r: &Report) -> String {
    format!(
        "| {} × {} | {:?} | {} | {:.0} s | {:.0} s | {:.0} s | {:.1} s | {:.1} s | {:.0}× | {:.2} | {:.2} | {} | {} | {} |",
        r.config.servers,
        r.config.disks_per_server,
        r.config.scenario,
        r.legs_to_rebuild,
        r.scheduled.restore_seconds,
        r.unscheduled.restore_seconds,
        r.dedicated_spare_seconds,
        r.ideal_seconds,
        r.bound_seconds,
        r.speedup_vs_dedicated_spare,
        r.fraction_of_ideal,
        r.fraction_of_bound,
        r.bounds.busiest_source_reads,
        r.scheduled.peak_resyncs_per_disk,
        r.unscheduled.peak_resyncs_per_disk,
    )
}

fn return_row(r: &ReturnReport) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    format!(
        "| {} × {} | {:.0} s | {:.0} kB/s | {} | {:.1} GiB | {:.0} GiB | {:.0}× | {:.1} s | {:.1} s | {:.1} s | {:.0} s | {:.0} s | {} | {} |",
        r.config.servers,
        r.config.disks_per_server,
        r.config.outage_seconds,
        r.config.write_bytes_per_second / 1e3,
        r.legs_returned,
        r.returned.bytes_copied as f64 / GIB,
        r.no_grace.bytes_copied as f64 / GIB,
        r.bytes_saved_factor,
        r.catch_up_seconds,
        r.catch_up_unscheduled_seconds,
        r.returned.restore_seconds,
        r.no_grace.restore_seconds,
        r.never_back.restore_seconds,
        r.returned.peak_resyncs_per_disk,
        r.returned_unscheduled.peak_resyncs_per_disk,
    )
}

fn drain_row(r: &MoveReport) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let s = &r.scheduled;
    format!(
        "| {} × {} | {:?} | {} | {:.0} s | {:.0} s | {:.1} s | {:.1} s | {:.0}× | {:.2} | {:.2} | {:.0} GiB | {} | {} | {} → {} | {} | {} |",
        r.config.servers,
        r.config.disks_per_server,
        r.config.scenario,
        r.legs_to_move,
        s.seconds,
        r.naive_seconds,
        r.ideal_seconds,
        r.bound_seconds,
        r.speedup_vs_naive,
        r.fraction_of_ideal,
        r.fraction_of_bound,
        s.bytes_copied as f64 / GIB,
        s.repairs,
        s.moves_abandoned,
        r.shared_domains_before,
        s.shared_domains_after,
        s.peak_resyncs_per_disk,
        s.min_active_legs,
    )
}

const DRAIN_HEADER: &str = "| pool | scenario | legs moved | drained (k=1) | naive (one leg at a time) | ideal (fluid) | bound (whole chunks) | vs naive | of ideal | of bound | copied | repairs | moves abandoned | same-rack mirrored disks | peak/disk | fewest active legs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn rebalance_row(r: &MoveReport) -> String {
    let s = &r.scheduled;
    let b = r
        .bounded_passes
        .as_ref()
        .expect("a rebalance has bounded passes");
    format!(
        "| {} × {} | +{} | {:.1} % | {:.1} % | {} | {:.0} s ({} × {}) | {:.0} s ({} top-ups, window {}) | {:.0} s | {:.1} s | {:.1} s | {:.2} | {:.2} | {} → {} | {} | {} |",
        r.config.servers,
        r.config.disks_per_server,
        r.config.new_servers,
        r.fill_spread_before * 100.0,
        s.fill_spread_after * 100.0,
        s.moves,
        s.seconds,
        s.passes,
        r.config.rebalance_request_moves,
        b.seconds,
        b.passes,
        r.config
            .rebalance_moves
            .map_or_else(|| "sized to the pool".to_string(), |n| n.to_string()),
        r.naive_seconds,
        r.ideal_seconds,
        r.bound_seconds,
        r.fraction_of_ideal,
        r.fraction_of_bound,
        r.shared_domains_before,
        s.shared_domains_after.max(b.shared_domains_after),
        s.peak_resyncs_per_disk.max(b.peak_resyncs_per_disk),
        s.min_active_legs.min(b.min_active_legs),
    )
}

const REBALANCE_HEADER: &str = "| pool | servers added | fill spread before | after | moves | admin requests (k=1) | background policy (k=1) | naive (one move at a time) | ideal (fluid) | bound (whole chunks) | of ideal | of bound | same-rack mirrored disks | peak/disk | fewest active legs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

const RETURN_HEADER: &str = "| pool | outage | writes per mirrored disk | legs back | caught up | rebuilt without grace | fewer bytes | catch-up (k=1) | catch-up (unscheduled) | redundant again (k=1) | without grace | never back | peak/disk (k=1) | peak/disk (unscheduled) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

const HEADER: &str = "| pool | scenario | legs rebuilt | scheduled (k=1) | unscheduled | dedicated spare | ideal (fluid) | bound (whole chunks) | vs spare | of ideal | of bound | busiest source | peak/disk (k=1) | peak/disk (unscheduled) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

/// `vsky-sim clones`: one row per write pattern.
fn clones(template_gib: u64, count: usize, written_percent: f64, seed: u64, json: bool) {
    const GIB: f64 = (1u64 << 30) as f64;
    let valid = (1..=1024).contains(&template_gib)
        && (1..=1000).contains(&count)
        && written_percent > 0.0
        && written_percent <= 100.0;
    if !valid {
        eprintln!(
            "vsky-sim: need 1 ≤ --template-gib ≤ 1024, 1 ≤ --clones ≤ 1000 and 0 < --written-percent ≤ 100"
        );
        std::process::exit(2);
    }
    let mut reports = Vec::new();
    for pattern in [ClonePattern::Sequential, ClonePattern::Scattered] {
        let cfg = ClonesConfig {
            servers: 10,
            disks_per_server: 10,
            chunk_bytes: 1 << 30,
            template_bytes: template_gib << 30,
            clones: count,
            written_percent,
            pattern,
            seed,
        };
        match run_clones(&cfg) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("vsky-sim: clones, {pattern:?}: {e}");
                std::process::exit(1);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("reports serialise")
        );
        return;
    }
    println!(
        "| template | clones × written | writes | template holds | clones hold | of thick copies | mapped by the clones | mirrored disks per clone |\n|---|---|---|---:|---:|---:|---:|---:|"
    );
    for r in &reports {
        println!(
            "| {template_gib} GiB | {} × {} % | {:?} | {:.0} GiB | {:.0} GiB | {:.2} ({:.0} GiB) | {:.2} GiB | {}–{} |",
            r.clones,
            r.written_percent,
            r.pattern,
            r.template_bytes_held as f64 / GIB,
            r.clones_bytes_held as f64 / GIB,
            r.clones_bytes_held as f64 / r.thick_copies_bytes as f64,
            r.thick_copies_bytes as f64 / GIB,
            r.clones_bytes_mapped as f64 / GIB,
            r.clone_disks_min,
            r.clone_disks_max,
        );
    }
}

/// `vsky-sim foreground`: one report of its own.
fn foreground(servers: usize, scenario: Scenario, rate: f64, seed: u64, json: bool) {
    if servers < 3 || !(rate > 0.0 && rate < 200e6) {
        eprintln!("vsky-sim: need at least 3 servers and 0 < --rate < 200e6 (the disks' speed)");
        std::process::exit(2);
    }
    let mut c = SimConfig::standard(servers, scenario, seed);
    c.foreground_bytes_per_second = rate;
    match run_foreground(&c) {
        Ok(r) if json => println!(
            "{}",
            serde_json::to_string_pretty(&AnyReport::Foreground(r)).expect("reports serialise")
        ),
        Ok(r) => println!("{FOREGROUND_HEADER}\n{}", foreground_rows(&r)),
        Err(e) => {
            eprintln!("vsky-sim: {servers} servers, {scenario:?}, seed {seed}: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args = Args::parse();
    let configs: Vec<SimConfig> = match args.command {
        Command::Run {
            servers,
            disks_per_server,
            chunks_per_disk,
            fill,
            per_disk_limit,
            scenario,
            seed,
            outage,
            grace,
            write_rate,
            new_servers,
            rebalance_moves,
            rebalance_request_moves,
        } => {
            if !(0.0..1.0).contains(&fill)
                || servers < 3
                || disks_per_server == 0
                || per_disk_limit == 0
                || !(0.0..grace).contains(&outage)
                || !(write_rate >= 0.0 && write_rate.is_finite())
                || new_servers == Some(0)
                || rebalance_moves == Some(0)
                || rebalance_request_moves == 0
            {
                eprintln!(
                    "vsky-sim: need --fill in 0..1, at least 3 servers, 1 disk per server, --per-disk-limit ≥ 1, 0 ≤ --outage < --grace, --write-rate ≥ 0, --new-servers ≥ 1 and --rebalance-moves, --rebalance-request-moves ≥ 1"
                );
                std::process::exit(2);
            }
            let mut c = SimConfig::standard(servers, scenario, seed);
            c.disks_per_server = disks_per_server;
            c.chunks_per_disk = chunks_per_disk;
            c.fill = fill;
            c.per_disk_limit = per_disk_limit;
            c.outage_seconds = outage;
            c.grace_seconds = grace;
            c.write_bytes_per_second = write_rate;
            if let Some(n) = new_servers {
                c.new_servers = n;
            }
            c.rebalance_moves = rebalance_moves;
            c.rebalance_request_moves = rebalance_request_moves;
            vec![c]
        }
        Command::Table { seed, max_servers } => [10usize, 100, 1000]
            .into_iter()
            .filter(|&s| s <= max_servers)
            .flat_map(|servers| {
                [
                    Scenario::DiskLoss,
                    Scenario::ServerLoss,
                    Scenario::SecondFailure,
                ]
                .map(|s| SimConfig::standard(servers, s, seed))
            })
            .chain(
                [(10usize, 100e3), (100, 100e3), (100, 300e3), (1000, 100e3)]
                    .into_iter()
                    .filter(|&(s, _)| s <= max_servers)
                    .map(|(servers, write_rate)| {
                        let mut c = SimConfig::standard(servers, Scenario::ServerReturn, seed);
                        c.write_bytes_per_second = write_rate;
                        c
                    }),
            )
            .chain(
                [10usize, 100, 1000]
                    .into_iter()
                    .filter(|&s| s <= max_servers)
                    .flat_map(|servers| {
                        [Scenario::ServerDrain, Scenario::DrainFailure]
                            .map(|s| SimConfig::standard(servers, s, seed))
                    }),
            )
            .chain(
                [10usize, 100, 1000]
                    .into_iter()
                    .filter(|&s| s <= max_servers)
                    .map(|servers| SimConfig::standard(servers, Scenario::Rebalance, seed)),
            )
            .collect(),
        Command::Foreground {
            servers,
            scenario,
            rate,
            seed,
        } => {
            foreground(servers, scenario, rate, seed, args.json);
            return;
        }
        Command::Clones {
            template_gib,
            clones: count,
            written_percent,
            seed,
        } => {
            clones(template_gib, count, written_percent, seed, args.json);
            return;
        }
    };
    // One array, in table order; each report names its scenario.
    let mut reports: Vec<AnyReport> = Vec::new();
    let mut header = None;
    for c in &configs {
        let result = if c.scenario == Scenario::ServerReturn {
            run_return(c).map(|r| {
                let line = return_row(&r);
                reports.push(AnyReport::Return(r));
                (RETURN_HEADER, line)
            })
        } else if matches!(c.scenario, Scenario::ServerDrain | Scenario::DrainFailure) {
            run_moves(c).map(|r| {
                let line = drain_row(&r);
                reports.push(AnyReport::Moves(r));
                (DRAIN_HEADER, line)
            })
        } else if c.scenario == Scenario::Rebalance {
            run_moves(c).map(|r| {
                let line = rebalance_row(&r);
                reports.push(AnyReport::Moves(r));
                (REBALANCE_HEADER, line)
            })
        } else {
            run(c).map(|r| {
                let line = row(&r);
                reports.push(AnyReport::Rebuild(r));
                (HEADER, line)
            })
        };
        match result {
            Ok((h, line)) => {
                if !args.json {
                    if header != Some(h) {
                        if header.is_some() {
                            println!();
                        }
                        println!("{h}");
                        header = Some(h);
                    }
                    println!("{line}");
                }
            }
            Err(e) => {
                eprintln!(
                    "vsky-sim: {} servers, {:?}, seed {}: {e}",
                    c.servers, c.scenario, c.seed
                );
                std::process::exit(1);
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("reports serialise")
        );
    }
}
