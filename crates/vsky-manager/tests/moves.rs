//! Draining and rebalancing against a real `vsky-manager` process on
//! loopback: the REST endpoints, their errors, the moves the recovery loop
//! plans, and (with the test playing the executors over the agent API) a
//! drain carried through until the disk holds no leg.

mod common;

use std::collections::BTreeSet;

use common::agents::{KeepAlive, eventually, kinds, resync_beat};
use common::*;
use serde_json::{Value, json};
use vsky_api::Client;
use vsky_api::types::*;

async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn disks_of(admin: &Client, server: &str) -> Vec<Disk> {
    admin
        .list_disks()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.server == server)
        .collect()
}

/// A 2-replica volume of `mirrored_disks` mirrored disks (8 MiB chunks
/// carry 7 MiB each).
async fn create_volume(admin: &Client, name: &str, mirrored_disks: u64) -> VolumeDetail {
    let mut req = volume(name, mirrored_disks * 7 * MIB);
    req.replicas = Some(2);
    admin.create_volume(&req).await.unwrap()
}

/// The active moves whose leg leaves a chunk for which `from` holds.
async fn moves_away(admin: &Client, from: impl Fn(&ChunkLocation) -> bool) -> Vec<Rebuild> {
    admin
        .rebuilds(false)
        .await
        .unwrap()
        .rebuilds
        .into_iter()
        .filter(|r| r.kind == RebuildKind::Move && from(&r.replaced))
        .collect()
}

/// Plays the executors: every running move is reported done by the server
/// that runs it.
async fn finish_running_moves(admin: &Client, agent: &Client) {
    for r in admin.rebuilds(false).await.unwrap().rebuilds {
        if r.state == RebuildState::Running
            && r.kind == RebuildKind::Move
            && let Some(executor) = &r.executor
        {
            agent
                .heartbeat(&resync_beat(executor, r.id, r.bytes_total, true))
                .await
                .unwrap();
        }
    }
}

/// Drain a disk: it takes no new chunks, the recovery loop plans one move
/// per leg (kind `move`, reason `drain`, into the extra slot), and once the
/// executors report the copies done every leg has left it, each mirrored
/// disk has its two legs again, and the disk can be removed.
#[tokio::test]
async fn draining_a_disk_moves_every_leg_away_and_lets_it_go() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    register_pool(&admin, &pool(4, 1)).await;
    let _alive = KeepAlive::start(agent.clone(), (0..4).map(|s| format!("s{s}")).collect());
    create_volume(&admin, "v", 4).await;
    let disk = disks_of(&admin, "s0").await.remove(0);
    assert!(disk.legs > 0 && !disk.draining, "{disk:?}");
    assert_eq!(disk.legs_left, disk.legs);

    let drained = admin.drain_disk(disk.id).await.unwrap();
    assert!(drained.draining);
    assert_eq!(drained.legs_left, disk.legs);
    // Idempotent: a second request changes nothing and records no event.
    assert!(admin.drain_disk(disk.id).await.unwrap().draining);
    let draining_events = kinds(&admin)
        .await
        .iter()
        .filter(|k| *k == "disk_draining")
        .count();
    assert_eq!(draining_events, 1);
    // The server itself is not draining; its other disks would be.
    assert!(!admin.server("s0").await.unwrap().draining);

    // New legs stay off the draining disk.
    let w = create_volume(&admin, "w", 2).await;
    assert!(
        w.layout
            .iter()
            .flat_map(|md| &md.legs)
            .all(|l| l.disk_id != disk.id),
        "{w:?}"
    );

    // The recovery loop plans a move for each of its legs.
    let moves = eventually("the drain's moves", async || {
        let moves = moves_away(&admin, |at| at.disk_id == disk.id).await;
        (moves.len() as u64 == disk.legs).then_some(moves)
    })
    .await;
    for r in &moves {
        assert_eq!(r.reason, Some(MoveReason::Drain), "{r:?}");
        assert_eq!(r.leg, 2, "a move fills the extra slot: {r:?}");
        assert!(r.from_leg.is_some_and(|l| l < 2), "{r:?}");
        assert_ne!(r.target.disk_id, disk.id);
        assert_ne!(r.target.server, "s0");
    }
    let shown = admin.disk(disk.id).await.unwrap();
    assert_eq!(shown.legs_moving, disk.legs, "{shown:?}");
    // A moving mirrored disk carries one leg more while the new one syncs.
    let v = admin.volume("v").await.unwrap();
    let moving = moves.iter().find(|r| r.volume == "v").unwrap();
    let md = &v.layout[moving.mirrored_disk as usize];
    assert_eq!(md.legs.len(), 3, "{md:?}");
    assert_eq!(md.legs[2].state, LegState::Syncing);

    // The executors finish the copies, one disk's turn at a time.
    eventually("the disk to hold no leg", async || {
        finish_running_moves(&admin, &agent).await;
        let d = admin.disk(disk.id).await.unwrap();
        (d.legs_left == 0).then_some(())
    })
    .await;
    for name in ["v", "w"] {
        let v = admin.volume(name).await.unwrap();
        for md in &v.layout {
            assert_eq!(md.legs.len(), 2, "{name}: {md:?}");
            assert!(md.legs.iter().all(|l| l.state == LegState::Active));
            assert!(md.legs.iter().all(|l| l.disk_id != disk.id));
            let servers: BTreeSet<&str> = md.legs.iter().map(|l| l.server.as_str()).collect();
            assert_eq!(servers.len(), 2, "legs on distinct servers: {md:?}");
        }
    }
    let all = admin.rebuilds(true).await.unwrap();
    let done = all
        .rebuilds
        .iter()
        .filter(|r| {
            r.kind == RebuildKind::Move
                && r.replaced.disk_id == disk.id
                && r.state == RebuildState::Done
        })
        .count();
    assert_eq!(done as u64, disk.legs);
    let d = admin.disk(disk.id).await.unwrap();
    assert_eq!((d.legs, d.legs_moving), (0, 0), "{d:?}");
    admin.remove_disk(disk.id).await.unwrap();
}

/// Draining a server drains each of its disks; stopping it lets them take
/// chunks again, while a disk's own drain is separate.
#[tokio::test]
async fn draining_a_server_drains_its_disks_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(4, 2)).await;
    create_volume(&admin, "v", 4).await;
    let before = admin.server("s0").await.unwrap();
    assert!(before.legs > 0 && !before.draining);

    let s = admin.drain_server("s0").await.unwrap();
    assert!(s.draining);
    assert_eq!(s.legs_left, before.legs);
    for d in disks_of(&admin, "s0").await {
        assert!(d.draining, "a draining server's disks drain: {d:?}");
    }
    // Stopping one disk's own drain does not undo the server's.
    let one = disks_of(&admin, "s0").await.remove(0);
    assert!(admin.stop_drain_disk(one.id).await.unwrap().draining);

    let moves = eventually("the server's moves", async || {
        let moves = moves_away(&admin, |at| at.server == "s0").await;
        (moves.len() as u64 == before.legs).then_some(moves)
    })
    .await;
    assert!(moves.iter().all(|r| r.reason == Some(MoveReason::Drain)));
    assert!(moves.iter().all(|r| r.target.server != "s0"));
    assert_eq!(
        admin.server("s0").await.unwrap().legs_moving,
        before.legs,
        "summed over its disks"
    );
    let w = create_volume(&admin, "w", 3).await;
    assert!(
        w.layout
            .iter()
            .flat_map(|md| &md.legs)
            .all(|l| l.server != "s0"),
        "{w:?}"
    );

    let s = admin.stop_drain_server("s0").await.unwrap();
    assert!(!s.draining);
    assert!(!admin.stop_drain_server("s0").await.unwrap().draining);
    for d in disks_of(&admin, "s0").await {
        assert!(!d.draining, "{d:?}");
    }
    // A disk drained on its own stays so when its server's drain stops.
    admin.drain_disk(one.id).await.unwrap();
    admin.drain_server("s0").await.unwrap();
    admin.stop_drain_server("s0").await.unwrap();
    assert!(admin.disk(one.id).await.unwrap().draining);
    let kinds = kinds(&admin).await;
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(count("server_draining"), 2, "{kinds:?}");
    assert_eq!(count("server_drain_stopped"), 2, "{kinds:?}");
    assert_eq!(count("disk_draining"), 1, "{kinds:?}");
}

/// Unknown disks and servers are 404, bad ids 400, failed ones 409, wrong
/// methods 405, and the endpoints take the admin token only.
#[tokio::test]
async fn drain_and_rebalance_refuse_bad_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(10)).await;
    let failed_disk = disks_of(&admin, "s2").await.remove(0);
    admin.fail_disk(failed_disk.id).await.unwrap();
    admin.fail_server("s1").await.unwrap();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = http.request(method, format!("{}{path}", m.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    use reqwest::Method;
    let failed = format!("/api/v1/disks/{}/drain", failed_disk.id);
    let cases: Vec<(Method, &str, Option<&str>, u16, &str)> = vec![
        (
            Method::POST,
            "/api/v1/disks/999/drain",
            Some(ADMIN_TOKEN),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/disks/999/drain",
            Some(ADMIN_TOKEN),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/disks/sdb/drain",
            Some(ADMIN_TOKEN),
            400,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/api/v1/servers/ghost/drain",
            Some(ADMIN_TOKEN),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/servers/ghost/drain",
            Some(ADMIN_TOKEN),
            404,
            "not_found",
        ),
        (Method::POST, &failed, Some(ADMIN_TOKEN), 409, "conflict"),
        (
            Method::POST,
            "/api/v1/servers/s1/drain",
            Some(ADMIN_TOKEN),
            409,
            "conflict",
        ),
        (
            Method::GET,
            "/api/v1/servers/s0/drain",
            Some(ADMIN_TOKEN),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/pool/rebalance",
            Some(ADMIN_TOKEN),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/api/v1/servers/s0/drain",
            Some(AGENT_TOKEN),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/api/v1/pool/rebalance",
            Some(AGENT_TOKEN),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/api/v1/pool/rebalance",
            None,
            401,
            "unauthorized",
        ),
        (
            Method::DELETE,
            "/api/v1/disks/1/drain",
            None,
            401,
            "unauthorized",
        ),
    ];
    for (method, path, token, status, code) in cases {
        let (got, body) = status_and_body(call(method.clone(), path, token).await.unwrap()).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {body}"
        );
        assert!(!body["message"].as_str().unwrap_or_default().is_empty());
    }
    // The conflict says why.
    let err = admin.drain_disk(failed_disk.id).await.unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    // Nothing was marked draining by the refused requests.
    assert!(
        admin
            .list_disks()
            .await
            .unwrap()
            .iter()
            .all(|d| !d.draining)
    );
    assert!(
        admin
            .list_servers()
            .await
            .unwrap()
            .iter()
            .all(|s| !s.draining)
    );
    // Stopping a drain that never started is fine (idempotent).
    let d = disks_of(&admin, "s0").await.remove(0);
    assert!(!admin.stop_drain_disk(d.id).await.unwrap().draining);

    // Rebalance bodies: optional, but what is sent must be right.
    let post = |body: &'static str, ctype: Option<&'static str>| {
        let mut r = reqwest::Client::new()
            .post(format!("{}/api/v1/pool/rebalance", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r.send()
    };
    let json_ct = Some("application/json");
    for (body, ctype, status, code) in [
        (r#"{"max_moves": 0}"#, json_ct, 400, "invalid_argument"),
        (r#"{"max_moves": 10001}"#, json_ct, 400, "invalid_argument"),
        (r#"{"max_moves": -1}"#, json_ct, 400, "invalid_argument"),
        (r#"{"max_moves": "x"}"#, json_ct, 400, "invalid_argument"),
        (
            r#"{"max_moves": 4, "bogus": 1}"#,
            json_ct,
            400,
            "invalid_argument",
        ),
        ("{not json", json_ct, 400, "invalid_argument"),
        (
            r#"{"max_moves": 4}"#,
            Some("text/plain"),
            415,
            "unsupported_media_type",
        ),
    ] {
        let (got, resp) = status_and_body(post(body, ctype).await.unwrap()).await;
        assert_eq!(
            (got, resp["code"].as_str()),
            (status, Some(code)),
            "{body}: {resp}"
        );
    }
    let (_, resp) = status_and_body(post(r#"{"max_moves": 0}"#, json_ct).await.unwrap()).await;
    assert!(
        resp["message"].as_str().unwrap().contains("1 to 10000"),
        "{resp}"
    );
    for (body, ctype) in [
        ("", None),
        ("", json_ct),
        ("  \n", None),
        ("{}", json_ct),
        (r#"{"max_moves": null}"#, json_ct),
        ("null", json_ct),
        (
            r#"{"max_moves": 10000}"#,
            Some("application/json; charset=utf-8"),
        ),
    ] {
        let (got, resp) = status_and_body(post(body, ctype).await.unwrap()).await;
        assert_eq!(got, 200, "{body:?} {ctype:?}: {resp}");
        assert_eq!(resp["moves"], json!([]), "nothing to move here");
    }
    assert!(
        !kinds(&admin)
            .await
            .iter()
            .any(|k| k == "disk_draining" || k == "server_draining")
    );
}

/// With `--auto-rebalance`, the recovery loop moves legs onto servers that
/// join, keeping at most `--auto-rebalance-moves` moves in flight and
/// topping the window up as the executors finish them.
#[tokio::test]
async fn the_background_policy_keeps_a_window_of_moves_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &[
            "--chunk-size",
            "8MiB",
            "--auto-rebalance",
            "10",
            "--auto-rebalance-moves",
            "2",
        ],
    );
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    let spec = pool(3, 1);
    register_pool(&admin, &spec).await;
    create_volume(&admin, "v", 12).await;
    for s in 3..6 {
        register_server(&admin, &spec, s, 1).await;
    }
    let _alive = KeepAlive::start(agent.clone(), (0..6).map(|s| format!("s{s}")).collect());
    // Rebalance moves, active only or all (done ones too).
    let rebalancing = async |all: bool| -> Vec<Rebuild> {
        admin
            .rebuilds(all)
            .await
            .unwrap()
            .rebuilds
            .into_iter()
            .filter(|r| r.reason == Some(MoveReason::Rebalance))
            .collect()
    };
    eventually("the window to fill", async || {
        (rebalancing(false).await.len() == 2).then_some(())
    })
    .await;
    // Two more recovery ticks: still the window, no more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(rebalancing(true).await.len(), 2);
    // The executors finish what runs: the window is topped up, never
    // beyond it.
    eventually("three windows' worth of moves", async || {
        let active = rebalancing(false).await;
        assert!(active.len() <= 2, "{active:?}");
        finish_running_moves(&admin, &agent).await;
        (rebalancing(true).await.len() >= 6).then_some(())
    })
    .await;
    let events = admin
        .events(0, None, std::time::Duration::ZERO)
        .await
        .unwrap()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rebalance_planned" && e.message.contains("background rebalance")),
        "{events:?}"
    );
}

/// After servers join an evenly filled pool, a rebalance moves legs from
/// the old disks to the new ones, at most as many as asked, as moves with
/// reason `rebalance`; a balanced pool gets none.
#[tokio::test]
async fn rebalance_moves_legs_to_new_disks_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    let spec = pool(3, 1);
    register_pool(&admin, &spec).await;
    create_volume(&admin, "v", 12).await;
    // 24 legs on 3 disks of 16 chunks: evenly half full.
    let balanced = admin.rebalance(&RebalanceRequest::default()).await.unwrap();
    assert!(balanced.moves.is_empty(), "{balanced:?}");
    assert_eq!(balanced.fill_spread_before, 0.0);

    for s in 3..6 {
        register_server(&admin, &spec, s, 1).await;
    }
    let old: BTreeSet<String> = (0..3).map(|s| format!("s{s}")).collect();
    let new: BTreeSet<String> = (3..6).map(|s| format!("s{s}")).collect();

    let first = admin
        .rebalance(&RebalanceRequest { max_moves: Some(2) })
        .await
        .unwrap();
    assert_eq!(first.moves.len(), 2, "{first:?}");
    assert!((first.fill_spread_before - 0.5).abs() < 1e-9, "{first:?}");
    for mv in &first.moves {
        assert_eq!(mv.volume, "v");
        assert!(old.contains(&mv.from_server), "{mv:?}");
        assert!(new.contains(&mv.to_server), "{mv:?}");
    }
    let listed = admin.rebuilds(false).await.unwrap();
    for mv in &first.moves {
        let r = listed
            .rebuilds
            .iter()
            .find(|r| r.id == mv.rebuild)
            .unwrap_or_else(|| panic!("rebuild {} listed: {listed:?}", mv.rebuild));
        assert_eq!(r.kind, RebuildKind::Move);
        assert_eq!(r.reason, Some(MoveReason::Rebalance));
        assert_eq!(r.replaced.disk_id, mv.from_disk);
        assert_eq!(r.target.disk_id, mv.to_disk);
        assert_eq!(r.mirrored_disk, mv.mirrored_disk);
    }

    // The default bound, and the moves under way counted as done.
    let second = admin.rebalance(&RebalanceRequest::default()).await.unwrap();
    assert!(
        !second.moves.is_empty() && second.moves.len() <= REBALANCE_MAX_MOVES_DEFAULT as usize,
        "{second:?}"
    );
    let ids: BTreeSet<u64> = first
        .moves
        .iter()
        .chain(&second.moves)
        .map(|mv| mv.rebuild)
        .collect();
    assert_eq!(ids.len(), first.moves.len() + second.moves.len());
    let mirrored: BTreeSet<u32> = first
        .moves
        .iter()
        .chain(&second.moves)
        .map(|mv| mv.mirrored_disk)
        .collect();
    assert_eq!(
        mirrored.len(),
        ids.len(),
        "one move per mirrored disk at a time"
    );
    assert!(second.moves.iter().all(|mv| new.contains(&mv.to_server)));

    let kinds = kinds(&admin).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "rebalance_planned").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "rebuild_queued").count() >= ids.len(),
        "{kinds:?}"
    );
    let summary = admin.cluster().await.unwrap();
    assert_eq!(summary.mirrored_disks_degraded, 0);
}
