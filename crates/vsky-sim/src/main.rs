//! `vsky-sim`: runs recovery scenarios under simulated time and prints the
//! results (a Markdown table, or JSON with --json).

use clap::{Parser, Subcommand};
use vsky_sim::{Report, Scenario, SimConfig, run};

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
    },
    /// The table of docs/benchmarks.md: 10, 100 and 1000 servers × 10 disks,
    /// every scenario.
    Table {
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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

const HEADER: &str = "| pool | scenario | legs rebuilt | scheduled (k=1) | unscheduled | dedicated spare | ideal (fluid) | bound (whole chunks) | vs spare | of ideal | of bound | busiest source | peak/disk (k=1) | peak/disk (unscheduled) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

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
        } => {
            if !(0.0..1.0).contains(&fill)
                || servers < 3
                || disks_per_server == 0
                || per_disk_limit == 0
            {
                eprintln!(
                    "vsky-sim: need --fill in 0..1, at least 3 servers, 1 disk per server and --per-disk-limit ≥ 1"
                );
                std::process::exit(2);
            }
            let mut c = SimConfig::standard(servers, scenario, seed);
            c.disks_per_server = disks_per_server;
            c.chunks_per_disk = chunks_per_disk;
            c.fill = fill;
            c.per_disk_limit = per_disk_limit;
            vec![c]
        }
        Command::Table { seed } => [10usize, 100, 1000]
            .into_iter()
            .flat_map(|servers| {
                [
                    Scenario::DiskLoss,
                    Scenario::ServerLoss,
                    Scenario::SecondFailure,
                ]
                .map(|s| SimConfig::standard(servers, s, seed))
            })
            .collect(),
    };
    let mut reports = Vec::new();
    if !args.json {
        println!("{HEADER}");
    }
    for c in &configs {
        match run(c) {
            Ok(r) => {
                if !args.json {
                    println!("{}", row(&r));
                }
                reports.push(r);
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
