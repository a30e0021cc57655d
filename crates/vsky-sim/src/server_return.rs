//! `ServerReturn`: a server back within its grace period. [`run_return`]
//! holds its legs while it is away, brings them back as the manager does,
//! and times the catch-up of the regions written meanwhile
//! ([`dirty_bytes`]), next to no grace period and a server never back.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use vsky_model::*;

use crate::checks::check;
use crate::config::{Rng, SimConfig};
use crate::fluid::{Fault, Outcome, rates, simulate};
use crate::pool::{build_pool, random_used_disk};

/// How one server outage ends, three ways, on one pool in one run.
#[derive(Clone, Debug, Serialize)]
pub struct ReturnReport {
    pub config: SimConfig,
    /// The server that goes away (the one `ServerLoss` fails for this seed).
    pub server: String,
    /// Its legs: reported failed by their heads, held for the grace period,
    /// active again when it returns.
    pub legs_returned: usize,
    /// The server returns after `outage_seconds`: its legs catch up the
    /// regions written meanwhile ([`dirty_bytes`]), at most k catch-ups per
    /// disk at once. `restore_seconds` counts from the server going away
    /// (outage + catch-up); `jobs` counts the legs with regions to copy.
    pub returned: Outcome,
    /// The same with every catch-up at once: what the heads' dm-raid does
    /// (the manager does not schedule catch-ups, only replacements).
    pub returned_unscheduled: Outcome,
    /// The catch-up alone, from the server's return, with and without k.
    pub catch_up_seconds: f64,
    pub catch_up_unscheduled_seconds: f64,
    /// The same outage without a grace period: the server is failed at once
    /// and every one of its legs rebuilt elsewhere (the `ServerLoss` path,
    /// with k).
    pub no_grace: Outcome,
    /// The server never comes back: its legs are held for the grace period,
    /// then it is declared failed (`fail_silent_server`) and they are
    /// rebuilt (with k); `restore_seconds` includes the grace period.
    pub never_back: Outcome,
    /// `no_grace.bytes_copied` ÷ `returned.bytes_copied`.
    pub bytes_saved_factor: f64,
}

/// The bytes a returned leg catches up: the bitmap regions written while
/// its server was away. Each mirrored disk is written at a rate drawn
/// uniformly from 0 to 2 × `write_bytes_per_second` (seeded; the mean is the
/// configured rate) for the whole outage; the bytes written are taken as
/// distinct and contiguous, rounded up to whole regions, and at most the
/// chunk's data. (A small random write dirties a whole region, so for such
/// workloads read the rate as regions dirtied × region size per second.)
pub fn dirty_bytes(config: &SimConfig, chunk_data_bytes: u64, rng: &mut Rng) -> u64 {
    let rate = config.write_bytes_per_second * rng.below(1 << 20) as f64 / f64::from(1u32 << 19);
    let regions = (rate * config.outage_seconds / config.region_bytes as f64).ceil() as u64;
    regions
        .saturating_mul(config.region_bytes)
        .min(chunk_data_bytes)
}

/// Runs `ServerReturn`: one server goes silent and returns within its
/// grace period, driven through the model exactly as the manager does
/// (`crates/vsky-manager/src/recovery.rs`, and `bring_back_legs` in its
/// agent handlers), next to the same outage without a grace period and a
/// server that never returns, on the same pool.
pub fn run_return(config: &SimConfig) -> Result<ReturnReport, String> {
    if !(config.outage_seconds >= 0.0 && config.outage_seconds < config.grace_seconds) {
        return Err(format!(
            "the outage ({} s) must be shorter than the grace period ({} s)",
            config.outage_seconds, config.grace_seconds
        ));
    }
    let mut rng = Rng::new(config.seed);
    let mut pool = build_pool(config, &mut rng)?;
    pool.check_invariants()?;
    // The server ServerLoss fails for this seed, and its planning seed.
    let first = random_used_disk(&pool, &mut rng, None, &BTreeSet::new())
        .ok_or("the pool holds no legs")?;
    let server = pool.disk(first).map_err(|e| e.to_string())?.server;
    let name = pool.server(server).expect("disk's server").name.clone();
    let second_seed = rng.next_u64();
    let mut dirty_rng = Rng::new(rng.next_u64());
    attach_heads(&mut pool, server)?;
    let limit = config.per_disk_limit;

    // Without a grace period: failed at once, every leg rebuilt.
    let no_grace = simulate(
        config,
        pool.clone(),
        &Fault::Server(name.clone()),
        limit,
        second_seed,
    )?
    .outcome;

    // Never back: held for the grace period, declared failed, rebuilt.
    let mut c = pool.clone();
    go_silent(&mut c, server, limit)?;
    let mut never_back = simulate(
        config,
        c,
        &Fault::SilentServer(name.clone()),
        limit,
        second_seed,
    )?
    .outcome;
    never_back.restore_seconds += config.grace_seconds;

    // Back within the grace period: as `bring_back_legs`, every failed leg
    // on the server not being replaced is active again; the next planning
    // pass holds nothing and must find nothing to replace.
    let mut c = pool;
    let legs = go_silent(&mut c, server, limit)?;
    let back = c.failed_legs_on(server);
    for &(addr, _) in &back {
        c.leg_returned(addr).map_err(|e| e.to_string())?;
    }
    let (pass, _) = c.recovery_pass(
        &held_pass(limit, BTreeSet::new()),
        &mut Rng::new(second_seed),
    );
    if !pass.planned.is_empty() {
        return Err(format!(
            "{} legs planned for replacement after their server returned",
            pass.planned.len()
        ));
    }
    check(&c, limit)?;
    let all_active = c.volumes().all(|v| {
        v.mirrored_disks
            .iter()
            .all(|md| md.legs.iter().all(|l| l.state == LegState::Active))
    });
    if back.len() != legs || !all_active {
        return Err(format!(
            "{} of {legs} legs returned, and not every leg is active again",
            back.len()
        ));
    }
    let per_chunk = c.settings().data_bytes_per_chunk();
    let mut copies = Vec::new();
    for &(addr, chunk) in &back {
        let bytes = dirty_bytes(config, per_chunk, &mut dirty_rng);
        let v = c
            .volume(addr.volume)
            .ok_or("returned leg of an unknown volume")?;
        // dm-raid reads the regions from an in-sync leg.
        let source = v.mirrored_disks[addr.mirrored_disk as usize]
            .legs
            .iter()
            .enumerate()
            .find(|&(i, leg)| i != usize::from(addr.leg) && leg.state == LegState::Active)
            .map(|(_, leg)| leg.chunk.disk)
            .ok_or("a returned leg has no in-sync partner to catch up from")?;
        if bytes > 0 {
            copies.push((source, chunk.disk, bytes));
        }
    }
    let bytes: u64 = copies.iter().map(|c| c.2).sum();
    let (catch_up_seconds, peak) = catch_up(config, &c, &copies, limit)?;
    let (catch_up_unscheduled_seconds, peak_unscheduled) = catch_up(config, &c, &copies, u32::MAX)?;
    let returned = |seconds: f64, peak: u32| Outcome {
        restore_seconds: config.outage_seconds + seconds,
        peak_resyncs_per_disk: peak,
        bytes_copied: bytes,
        jobs: copies.len(),
        failed_jobs: 0,
        // The catch-ups run without a foreground load.
        ..Outcome::default()
    };
    Ok(ReturnReport {
        config: config.clone(),
        server: name,
        legs_returned: back.len(),
        returned: returned(catch_up_seconds, peak),
        returned_unscheduled: returned(catch_up_unscheduled_seconds, peak_unscheduled),
        catch_up_seconds,
        catch_up_unscheduled_seconds,
        bytes_saved_factor: no_grace.bytes_copied as f64 / bytes.max(1) as f64,
        no_grace,
        never_back,
    })
}

/// Attaches every volume with a leg on `server` to a server holding
/// another of its legs: only a volume's head reports its legs failed.
fn attach_heads(c: &mut Cluster, server: ServerId) -> Result<(), String> {
    let mut heads = Vec::new();
    for v in c.volumes() {
        let legs = || v.mirrored_disks.iter().flat_map(|md| &md.legs);
        let server_of = |leg: &Leg| c.disk(leg.chunk.disk).map(|d| d.server).ok();
        if !legs().any(|l| server_of(l) == Some(server)) {
            continue;
        }
        let head = legs()
            .filter_map(server_of)
            .find(|s| *s != server)
            .ok_or_else(|| format!("{} has no leg off the failing server", v.name))?;
        let head = c.server(head).expect("leg's server").name.clone();
        heads.push((v.name.clone(), head));
    }
    for (volume, head) in heads {
        c.attach_volume(&volume, &head).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The server goes silent: the heads of its volumes report each of its
/// legs failed (`report_leg_failed`), and the manager's planning pass
/// holds them for the grace period (`recovery_pass` with the server
/// held), so nothing is replaced. Returns how many legs failed.
fn go_silent(c: &mut Cluster, server: ServerId, limit: u32) -> Result<usize, String> {
    let addrs: Vec<LegAddr> = c
        .disks_of(server)
        .flat_map(|d| c.legs_on_disk(d.id).map(|(_, a)| a))
        .collect();
    let mut reports = Vec::new();
    for a in addrs {
        let v = c.volume(a.volume).ok_or("leg of an unknown volume")?;
        let head = v
            .attachment
            .as_ref()
            .ok_or_else(|| format!("{} has no head to report its legs", v.name))?
            .head;
        reports.push((head, v.name.clone(), a.mirrored_disk, a.leg));
    }
    for (head, volume, m, l) in &reports {
        c.report_leg_failed(*head, volume, *m, *l)
            .map_err(|e| e.to_string())?;
    }
    let (pass, _) = c.recovery_pass(
        &held_pass(limit, BTreeSet::from([server])),
        &mut Rng::new(0),
    );
    if !pass.planned.is_empty() {
        return Err(format!(
            "{} legs of a server in its grace period planned for replacement",
            pass.planned.len()
        ));
    }
    check(c, limit)?;
    Ok(reports.len())
}

/// The manager's planning pass while `held` are in their grace period
/// (nothing drains or rebalances here).
pub(crate) fn held_pass(limit: u32, held: BTreeSet<ServerId>) -> PassConfig {
    PassConfig {
        per_disk_limit: limit,
        held,
        auto_rebalance: None,
        scrubs: None,
    }
}

/// Runs catch-up copies (source disk, target disk, bytes) under the same
/// fluid rates as resyncs, at most `limit` per disk at once, each started
/// as soon as its disks allow, in order. Returns the time until the last
/// one ends and the most copies any disk took part in at once.
fn catch_up(
    config: &SimConfig,
    c: &Cluster,
    copies: &[(DiskId, DiskId, u64)],
    limit: u32,
) -> Result<(f64, u32), String> {
    let mut pending: Vec<usize> = (0..copies.len()).collect();
    let mut running: Vec<(usize, f64)> = Vec::new();
    let mut busy: HashMap<DiskId, u32> = HashMap::new();
    let mut now = 0.0f64;
    let mut peak = 0u32;
    loop {
        pending.retain(|&i| {
            let (source, target, _) = copies[i];
            let free = |d: DiskId| busy.get(&d).copied().unwrap_or(0) < limit;
            if free(source) && free(target) {
                *busy.entry(source).or_default() += 1;
                *busy.entry(target).or_default() += 1;
                running.push((i, 0.0));
                false
            } else {
                true
            }
        });
        peak = peak.max(busy.values().copied().max().unwrap_or(0));
        if limit != u32::MAX && peak > limit {
            return Err(format!(
                "a disk is in {peak} catch-ups, over the limit {limit}"
            ));
        }
        if running.is_empty() {
            if !pending.is_empty() {
                return Err("catch-ups pending but none can start".into());
            }
            return Ok((now, peak));
        }
        let pairs: Vec<(DiskId, DiskId)> = running
            .iter()
            .map(|&(i, _)| (copies[i].0, copies[i].1))
            .collect();
        let rates = rates(config, c, &pairs);
        let dt = running
            .iter()
            .zip(&rates)
            .map(|(&(i, done), rate)| (copies[i].2 as f64 - done) / rate)
            .fold(f64::INFINITY, f64::min);
        now += dt;
        let mut still = Vec::with_capacity(running.len());
        for ((i, done), rate) in running.into_iter().zip(&rates) {
            let done = done + rate * dt;
            if done >= copies[i].2 as f64 * (1.0 - 1e-9) {
                for d in [copies[i].0, copies[i].1] {
                    let n = busy.get_mut(&d).expect("busy disk");
                    *n -= 1;
                    if *n == 0 {
                        busy.remove(&d);
                    }
                }
            } else {
                still.push((i, done));
            }
        }
        running = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scenario;
    use crate::rebuild::run;
    use crate::tests::small;

    /// A server back within its grace period (issue #6): its legs are held
    /// while it is away (`run_return` fails if any is planned for
    /// replacement), all return, and catching up the regions written
    /// meanwhile copies far fewer bytes than rebuilding every leg, which is
    /// what the same outage costs without a grace period. Byte counts, not
    /// timings: deterministic.
    #[test]
    fn server_return_catches_up_far_fewer_bytes_than_a_rebuild() {
        for seed in 0..6 {
            let config = small(Scenario::ServerReturn, seed);
            let r = run_return(&config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let chunk =
                (config.chunk_bytes - Settings::new(config.chunk_bytes).leg_meta_bytes) as f64;
            assert!(r.legs_returned > 0, "{r:?}");
            // Without a grace period every leg of the server is rebuilt whole.
            assert_eq!(r.no_grace.jobs, r.legs_returned, "{r:?}");
            assert_eq!(r.no_grace.failed_jobs, 0, "{r:?}");
            assert_eq!(
                r.no_grace.bytes_copied as f64,
                r.legs_returned as f64 * chunk,
                "{r:?}"
            );
            // 30 s at a mean 100 kB/s: a few 1 MiB regions of a 64 MiB chunk.
            assert!(
                r.returned.bytes_copied * 10 <= r.no_grace.bytes_copied,
                "seed {seed}: caught up {} bytes, rebuilt {}",
                r.returned.bytes_copied,
                r.no_grace.bytes_copied
            );
            assert!(r.returned.bytes_copied > 0 && r.bytes_saved_factor >= 10.0);
            assert_eq!(r.returned.bytes_copied, r.returned_unscheduled.bytes_copied);
            // Every copy is whole regions, at most 2 × rate × outage each.
            let most = (2.0 * config.write_bytes_per_second * config.outage_seconds
                / config.region_bytes as f64)
                .ceil() as u64
                * config.region_bytes;
            assert!(r.returned.bytes_copied <= r.legs_returned as u64 * most);
            assert_eq!(r.returned.bytes_copied % config.region_bytes, 0);
            assert!(r.returned.peak_resyncs_per_disk <= 1, "{r:?}");
            assert!(r.returned.restore_seconds > config.outage_seconds);
            // The catch-up cannot beat the returned server's inbound link.
            assert!(
                r.catch_up_unscheduled_seconds
                    >= r.returned.bytes_copied as f64 / config.network_bytes_per_second
                        * (1.0 - 1e-9)
            );
            // A server that never returns: the hold only delays the same
            // rebuild by the grace period.
            assert_eq!(r.never_back.bytes_copied, r.no_grace.bytes_copied);
            assert!(
                (r.never_back.restore_seconds - config.grace_seconds - r.no_grace.restore_seconds)
                    .abs()
                    < 1e-6,
                "{r:?}"
            );
        }
    }

    /// No writes while away: nothing to catch up, redundancy is back the
    /// moment the server is; an outage as long as the grace period is not
    /// a return.
    #[test]
    fn server_return_edges() {
        let mut config = small(Scenario::ServerReturn, 3);
        config.write_bytes_per_second = 0.0;
        let r = run_return(&config).unwrap();
        assert_eq!(r.returned.bytes_copied, 0);
        assert_eq!(r.returned.jobs, 0);
        assert_eq!(r.returned.restore_seconds, config.outage_seconds);
        config.outage_seconds = config.grace_seconds;
        assert!(run_return(&config).is_err());
        assert!(run(&config).is_err(), "run does not take ServerReturn");
    }
}
