//! Tests of the allocator's rules (`alloc.rs`).

use super::*;

fn entry(disk: u64, server: u64, domain: &str, legs: u64, free: u64) -> DiskEntry {
    DiskEntry {
        disk: DiskId(disk),
        server: ServerId(server),
        domain: domain.to_string(),
        class: None,
        legs,
        free_chunks: free,
    }
}

fn index(entries: Vec<DiskEntry>) -> AllocIndex {
    let mut idx = AllocIndex::default();
    for e in entries {
        idx.set(e.disk, Some(e));
    }
    idx
}

/// The pick rules, one case per rule, checked through one helper.
fn check(entries: Vec<DiskEntry>, replicas: u8, near: Option<Near>, expected: Option<Vec<u64>>) {
    let idx = index(entries);
    let got = idx.pick(replicas, None, near.as_ref(), &Partners::default());
    assert_eq!(got, expected.map(|v| v.into_iter().map(DiskId).collect()));
}

#[test]
fn least_loaded_first_then_most_free() {
    check(
        vec![
            entry(1, 1, "a", 3, 9),
            entry(2, 2, "b", 1, 9),
            entry(3, 3, "c", 1, 10),
        ],
        2,
        None,
        Some(vec![3, 2]),
    );
    check(
        vec![entry(1, 1, "a", 0, 5), entry(2, 2, "b", 0, 6)],
        2,
        None,
        Some(vec![2, 1]),
    );
}

/// Equally loaded disks are visited in an order that changes with
/// their load, so the same disks are not paired over and over.
#[test]
fn ties_are_broken_differently_as_load_changes() {
    let orders: BTreeSet<Vec<DiskId>> = (0..8)
        .map(|legs| {
            let idx = index(
                (1..=6)
                    .map(|d| entry(d, d, &format!("r{d}"), legs, 5))
                    .collect(),
            );
            idx.pick(2, None, None, &Partners::default()).unwrap()
        })
        .collect();
    assert!(orders.len() > 1, "always {orders:?}");
}

#[test]
fn never_two_legs_on_one_server() {
    check(
        vec![entry(1, 1, "a", 0, 5), entry(2, 1, "a", 0, 5)],
        2,
        None,
        None,
    );
    check(
        vec![
            entry(1, 1, "a", 0, 5),
            entry(2, 1, "a", 1, 5),
            entry(3, 2, "b", 9, 1),
        ],
        2,
        None,
        Some(vec![1, 3]),
    );
}

#[test]
fn distinct_domains_when_possible_else_distinct_servers() {
    // Disk 2 is less loaded than disk 3 but shares rack a with disk 1.
    check(
        vec![
            entry(1, 1, "a", 0, 5),
            entry(2, 2, "a", 1, 5),
            entry(3, 3, "b", 5, 5),
        ],
        2,
        None,
        Some(vec![1, 3]),
    );
    // Only one rack: fall back to distinct servers.
    check(
        vec![entry(1, 1, "a", 0, 5), entry(2, 2, "a", 1, 5)],
        2,
        None,
        Some(vec![1, 2]),
    );
}

#[test]
fn near_hint_prefers_the_head_then_its_domain() {
    let pool = || {
        vec![
            entry(1, 1, "a", 0, 5),
            entry(2, 2, "b", 3, 5),
            entry(3, 3, "c", 4, 5),
        ]
    };
    let near = |s: u64, d: &str| {
        Some(Near {
            server: ServerId(s),
            domain: d.to_string(),
        })
    };
    check(pool(), 2, near(3, "c"), Some(vec![3, 1]));
    check(pool(), 2, near(9, "b"), Some(vec![2, 1]));
    check(pool(), 2, near(9, "zz"), Some(vec![1, 2]));
}

#[test]
fn class_restricts_every_leg() {
    let mut ssd = entry(3, 3, "c", 9, 5);
    ssd.class = Some("ssd".into());
    let mut ssd2 = entry(4, 4, "d", 9, 5);
    ssd2.class = Some("ssd".into());
    let idx = index(vec![
        entry(1, 1, "a", 0, 5),
        entry(2, 2, "b", 0, 5),
        ssd,
        ssd2,
    ]);
    assert_eq!(
        idx.pick(2, Some("ssd"), None, &Partners::default()),
        Some(vec![DiskId(3), DiskId(4)])
    );
    assert_eq!(idx.pick(2, Some("nvme"), None, &Partners::default()), None);
    assert_eq!(idx.free_chunks(Some("ssd")), 10);
    assert_eq!(idx.free_chunks(None), 20);
}

#[test]
fn removing_and_full_disks_leave_the_index() {
    let mut idx = index(vec![entry(1, 1, "a", 0, 5), entry(2, 2, "b", 0, 5)]);
    idx.set(DiskId(2), Some(entry(2, 2, "b", 5, 0)));
    assert_eq!(idx.pick(2, None, None, &Partners::default()), None);
    assert_eq!(idx.free_chunks(None), 5);
    idx.set(DiskId(1), None);
    assert_eq!(idx.free_chunks(None), 0);
    assert_eq!(idx.eligible_servers(None), 0);
}
