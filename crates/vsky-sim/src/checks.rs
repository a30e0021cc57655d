//! The invariants every run keeps, checked outside the code under test
//! ([`check`], [`check_redundancy`]), and the failure-domain measure the
//! moves report ([`shared_domains`]).

use std::collections::BTreeSet;

use vsky_model::*;

/// Checks that every mirrored disk of `volumes` has at least `floor`
/// active legs (R while nothing failed: a move must never lower
/// redundancy; R − failures after some, and never 0: no data lost) and
/// returns the fewest seen.
pub(crate) fn check_redundancy<'a>(
    volumes: impl IntoIterator<Item = &'a Volume>,
    floor: usize,
) -> Result<usize, String> {
    let mut fewest = usize::MAX;
    for v in volumes {
        for (m, md) in v.mirrored_disks.iter().enumerate() {
            let active = md.healthy_legs();
            if active < floor {
                return Err(format!(
                    "{} mirrored disk {m} has {active} active legs, fewer than {floor}",
                    v.name
                ));
            }
            fewest = fewest.min(active);
        }
    }
    Ok(fewest)
}

/// Mirrored disks with two legs on servers of one failure domain.
pub fn shared_domains(c: &Cluster) -> usize {
    let label = &c.settings().failure_domain_label;
    let domain = |leg: &Leg| {
        let server = c.disk(leg.chunk.disk).expect("leg's disk").server;
        c.server(server)
            .expect("disk's server")
            .failure_domain(label)
    };
    c.volumes()
        .flat_map(|v| &v.mirrored_disks)
        .filter(|md| {
            let domains: BTreeSet<String> = md.legs.iter().map(domain).collect();
            domains.len() < md.legs.len()
        })
        .count()
}

/// The invariants every run must keep (checked outside the code under
/// test, TigerBeetle-style):
/// - the model's own consistency (no chunk used twice, exact accounting,
///   legs of a mirrored disk on distinct servers);
/// - every syncing leg has exactly one active resync, and no disk takes part
///   in more than `limit` resyncs;
/// - no mirrored disk loses its last healthy leg (the scenarios never fail
///   more than R−1 legs of one mirrored disk).
pub fn check(c: &Cluster, limit: u32) -> Result<(), String> {
    c.check_invariants()?;
    c.check_recovery_invariants(limit)?;
    match c.lost_mirrored_disks() {
        0 => Ok(()),
        n => Err(format!("{n} mirrored disks lost every leg")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rng, Scenario};
    use crate::pool::{build_pool, critical_disks, random_used_disk};
    use crate::tests::small;

    /// short of R, and a mirrored disk with no active leg fails even the
    /// floor after a failure.
    #[test]
    fn redundancy_check_catches_a_missing_leg() {
        let config = small(Scenario::DiskLoss, 1);
        let mut c = build_pool(&config, &mut Rng::new(1)).unwrap();
        assert_eq!(check_redundancy(c.volumes(), 2), Ok(2));
        let disk = random_used_disk(&c, &mut Rng::new(2), None, &BTreeSet::new()).unwrap();
        c.fail_disk(disk).unwrap();
        assert!(check_redundancy(c.volumes(), 2).is_err());
        assert_eq!(check_redundancy(c.volumes(), 1), Ok(1));
        let partner = critical_disks(&c).into_iter().next().unwrap();
        c.fail_disk(partner).unwrap();
        assert!(check_redundancy(c.volumes(), 1).is_err());
    }
}
