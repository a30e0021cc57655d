//! `vsky volume …`: mirrored volumes.
//!
//! `volume show` prints the full layout, one line per leg, because that is
//! what an admin needs when a disk fails: which mirrored disks had a leg
//! there, where their other legs live, and whether a resync is running.
//! Offsets are printed in exact bytes (not rounded sizes) so they can be
//! compared with what the agent and device-mapper report.

use std::time::{Duration, Instant};

use vsky_api::Client;
use vsky_api::types::{
    AttachmentState, CreateVolume, PoolUse, ServerState, Stripe, UpdateVolume, Volume, VolumeDetail,
};

use crate::args::VolumeCommand;
use crate::error::CliError;
use crate::render::{self, Align, KeyValue, Table};

pub async fn run(cmd: &VolumeCommand, client: &Client, json: bool) -> Result<String, CliError> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            replicas,
            stripe_width,
            stripe_unit,
            class,
            near,
            thin,
        } => {
            // clap makes the two stripe options require each other, so both
            // or neither are present here.
            let stripe = match (stripe_width, stripe_unit) {
                (Some(width), Some(unit_bytes)) => Some(Stripe {
                    width: *width,
                    unit_bytes: *unit_bytes,
                }),
                _ => None,
            };
            let req = CreateVolume {
                name: name.clone(),
                size_bytes: *size,
                replicas: *replicas,
                stripe,
                class: class.clone(),
                near_server: near.clone(),
                thin: *thin,
                ..Default::default()
            };
            let detail = client.create_volume(&req).await?;
            Ok(detail_output(&detail, json, "Created"))
        }
        VolumeCommand::List => {
            let volumes = client.list_volumes().await?;
            Ok(if json {
                render::json(&volumes)
            } else {
                render_volume_table(&volumes)
            })
        }
        VolumeCommand::Show { name } => {
            let detail = client.volume(name).await?;
            Ok(if json {
                render::json(&detail)
            } else {
                render_volume_detail(&detail)
            })
        }
        VolumeCommand::Delete { name } => {
            client.delete_volume(name).await?;
            Ok(if json {
                render::json(&serde_json::json!({ "result": "deleted", "volume": name }))
            } else {
                format!("Deleted volume {}.\n", render::clean(name))
            })
        }
        VolumeCommand::Attach {
            name,
            server_pos,
            server,
            read_only,
        } => {
            // clap's required group guarantees exactly one of the two.
            let head = server_pos
                .as_deref()
                .or(server.as_deref())
                .unwrap_or_default();
            let detail = client.attach_volume_as(name, head, *read_only).await?;
            let verb = if detail.volume.read_on.iter().any(|s| s == head) {
                "Reading"
            } else {
                "Attached"
            };
            Ok(detail_output(&detail, json, verb))
        }
        VolumeCommand::Detach {
            name,
            server,
            force,
            no_wait,
            wait_timeout,
        } => {
            if *force {
                let detail = client.force_detach_volume(name).await?;
                return Ok(detail_output(&detail, json, "Force-detached (fenced)"));
            }
            let detail = match server {
                Some(server) => {
                    let detail = client.detach_from(name, server).await?;
                    // Not its head (which releases): the server's read
                    // ended.
                    if detail.volume.attached_to.as_deref() != Some(server.as_str()) {
                        return Ok(detail_output(&detail, json, "Read ended on"));
                    }
                    detail
                }
                None => client.detach_volume(name).await?,
            };
            if *no_wait {
                let verb = if detail.volume.attachment_state.is_some() {
                    "Releasing"
                } else {
                    "Detached"
                };
                return Ok(detail_output(&detail, json, verb));
            }
            let detail = wait_released(client, detail, *wait_timeout).await?;
            Ok(detail_output(&detail, json, "Detached"))
        }
        VolumeCommand::Resize {
            name,
            size,
            no_wait,
        } => {
            let detail = client
                .resize_volume(name, *size, no_wait.then_some(0))
                .await?;
            Ok(detail_output(&detail, json, "Resized"))
        }
        VolumeCommand::Snapshot { name, snapshot } => {
            let detail = client.snapshot_volume(name, snapshot).await?;
            Ok(detail_output(&detail, json, "Created"))
        }
        VolumeCommand::Clone { source, name } => {
            let detail = client.clone_volume(source, name).await?;
            Ok(detail_output(&detail, json, "Created"))
        }
        VolumeCommand::Revert { name, snapshot } => {
            let detail = client.revert_volume(name, snapshot).await?;
            Ok(detail_output(&detail, json, "Reverted"))
        }
        VolumeCommand::Set {
            name,
            display_name,
            description,
            keys,
            unset_keys,
        } => {
            let mut set_keys = std::collections::BTreeMap::new();
            for (k, v) in keys {
                if set_keys.insert(k.clone(), v.clone()).is_some() {
                    return Err(CliError::Usage(format!("key '{k}' given twice")));
                }
            }
            if display_name.is_none()
                && description.is_none()
                && set_keys.is_empty()
                && unset_keys.is_empty()
            {
                return Err(CliError::Usage(
                    "nothing to change: give --display-name, --description, --key or --unset-key"
                        .into(),
                ));
            }
            let req = UpdateVolume {
                display_name: display_name.clone(),
                description: description.clone(),
                set_keys,
                unset_keys: unset_keys.clone(),
            };
            let detail = client.update_volume(name, &req).await?;
            Ok(detail_output(&detail, json, "Updated"))
        }
    }
}

/// How often a detach looks whether the head has let go.
const RELEASE_POLL: Duration = Duration::from_millis(250);

/// Waits until a releasing volume is detached (its head reported its
/// devices gone), up to `timeout`.
async fn wait_released(
    client: &Client,
    mut detail: VolumeDetail,
    timeout: Duration,
) -> Result<VolumeDetail, CliError> {
    let deadline = Instant::now() + timeout;
    // A failed head never confirms: say so at once rather than wait.
    if let (Some(AttachmentState::Releasing), Some(head)) = (
        detail.volume.attachment_state,
        detail.volume.attached_to.as_deref(),
    ) && client
        .server(head)
        .await
        .is_ok_and(|s| s.state == ServerState::Failed)
    {
        let (head, name) = (render::clean(head), render::clean(&detail.volume.name));
        return Err(CliError::Incomplete(format!(
            "volume {name} is releasing, but its head {head} is failed and will never report its devices gone; no other server can attach it until you fence {head} with `vsky volume detach --force {name}`"
        )));
    }
    loop {
        let v = &detail.volume;
        match (v.attachment_state, v.attached_to.as_deref()) {
            (Some(AttachmentState::Releasing), head) => {
                if Instant::now() >= deadline {
                    let head = render::clean(head.unwrap_or("?"));
                    let name = render::clean(&v.name);
                    return Err(CliError::WaitTimedOut(format!(
                        "volume {name} is still being released: its head {head} has not torn its devices down after {}s (a process may hold /dev/mapper/vsky-{name} open there; see the agent's log on {head}). \
                         No other server can attach it meanwhile. Close the device on {head}, or, if {head} is dead or cut off, fence it with `vsky volume detach --force {name}`.",
                        timeout.as_secs()
                    )));
                }
            }
            // Attached again (by its head, e.g. a retried activate), or by
            // an older manager that detaches at once.
            _ => return Ok(detail),
        }
        tokio::time::sleep(RELEASE_POLL).await;
        detail = client.volume(&v.name.clone()).await?;
    }
}

/// Output of a command that changed a volume: a one-line confirmation and
/// the volume as it now is.
fn detail_output(detail: &VolumeDetail, json: bool, verb: &str) -> String {
    if json {
        return render::json(detail);
    }
    format!(
        "{verb} volume {}.\n{}",
        render::clean(&detail.volume.name),
        render_volume_detail(detail)
    )
}

/// The head, with `(releasing)` while a graceful detach waits for it, and
/// the size it serves while a grow is not applied there yet; for a
/// snapshot, the servers that read it.
fn attachment(v: &Volume) -> String {
    if v.attached_to.is_none() && !v.read_on.is_empty() {
        return format!("read on {}", render::clean(&v.read_on.join(",")));
    }
    match (v.attached_to.as_deref(), v.attachment_state, v.served_bytes) {
        (Some(head), Some(AttachmentState::Releasing), _) => format!("{head} (releasing)"),
        (Some(head), _, Some(served)) if served < v.size_bytes => {
            format!("{head} (growing: serves {})", render::size(served))
        }
        (head, _, _) => render::opt(head),
    }
}

pub fn render_volume_table(volumes: &[Volume]) -> String {
    if volumes.is_empty() {
        return "No volumes.\n".to_string();
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("ID", Align::Right),
        ("SIZE", Align::Right),
        ("REPLICAS", Align::Right),
        ("STRIPE", Align::Left),
        ("CLASS", Align::Left),
        ("ATTACHED", Align::Left),
        ("HEALTH", Align::Left),
        ("MDISKS", Align::Right),
        ("DEGRADED", Align::Right),
        ("REBUILDING", Align::Right),
    ]);
    for v in volumes {
        t.row(vec![
            v.name.clone(),
            v.id.to_string(),
            render::size(v.size_bytes),
            v.replicas.to_string(),
            render::stripe(v.stripe.as_ref()),
            render::opt(v.class.as_deref()),
            attachment(v),
            render::state(&v.health),
            v.mirrored_disks.to_string(),
            v.mirrored_disks_degraded.to_string(),
            v.mirrored_disks_rebuilding.to_string(),
        ]);
    }
    t.render()
}

/// When the volume's legs were last read and compared in full: the oldest
/// of its mirrored disks' last scrubs, or how many were never scrubbed.
fn scrubbed(layout: &[vsky_api::types::MirroredDisk]) -> String {
    let never = layout
        .iter()
        .filter(|md| md.last_scrub_unix_s.is_none())
        .count();
    match layout.iter().filter_map(|md| md.last_scrub_unix_s).min() {
        Some(oldest) if never == 0 => format!(
            "{} (the oldest of its mirrored disks' last scrubs)",
            render::utc(oldest.saturating_mul(1000))
        ),
        _ if layout.is_empty() => "-".to_string(),
        _ => format!(
            "not yet: {never} of {} mirrored disks never scrubbed",
            layout.len()
        ),
    }
}

pub fn render_volume_detail(d: &VolumeDetail) -> String {
    let v = &d.volume;
    let mut kv = KeyValue::new();
    kv.add("Name", v.name.as_str())
        .add("ID", v.id.to_string())
        .add("Size", render::size_exact(v.size_bytes))
        .add("Replicas", v.replicas.to_string())
        .add("Stripe", render::stripe(v.stripe.as_ref()))
        .add("Class", render::opt(v.class.as_deref()))
        .add("Near server", render::opt(v.near_server.as_deref()))
        .add("Attached to", attachment(v))
        .add("Health", render::state(&v.health))
        .add("Provisioning", if v.thin { "thin" } else { "thick" });
    if let Some(of) = &v.snapshot_of {
        kv.add(
            "Snapshot of",
            format!(
                "{} (taken {}, read-only)",
                render::clean(of),
                render::utc(
                    v.snapshot_time_unix_s
                        .unwrap_or_default()
                        .saturating_mul(1000)
                )
            ),
        );
    }
    kv.add(
        "Mirrored disks",
        format!(
            "{} ({} degraded, {} rebuilding)",
            v.mirrored_disks, v.mirrored_disks_degraded, v.mirrored_disks_rebuilding
        ),
    )
    .add(
        "Data per mirrored disk",
        render::size_exact(d.data_bytes_per_mirrored_disk),
    )
    .add("Scrubbed", scrubbed(&d.layout))
    .add("Group", render::opt(v.group.as_deref()))
    .add("Display name", render::clean(&v.display_name))
    .add("Description", render::clean(&v.description))
    .add("Keys", render::clean(&render::labels(&v.keys)));
    let mut out = kv.render();
    out.push('\n');
    if !d.layers.is_empty() {
        // A thin volume or snapshot: its layers, then their legs.
        let mut t = Table::new(&[
            ("LAYER", Align::Left),
            ("STATE", Align::Left),
            ("SIZE", Align::Right),
            ("MDISKS", Align::Right),
            ("POOL USED", Align::Left),
            ("FROZEN", Align::Left),
            ("DATA OF", Align::Left),
        ]);
        for l in &d.layers {
            t.row(vec![
                l.name.clone(),
                render::state(&l.state),
                render::size(l.thin_size_bytes),
                l.layout.len().to_string(),
                l.pool.as_ref().map_or_else(|| "-".into(), pool_used),
                l.frozen_at_unix_s
                    .map_or_else(|| "-".into(), |s| render::utc(s.saturating_mul(1000))),
                render::clean(&l.shared_by.join(", ")),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
        for l in &d.layers {
            out.push_str(&format!("Layer {}:\n", l.name));
            out.push_str(&legs_table(&l.layout));
        }
        return out;
    }
    if d.layout.is_empty() {
        out.push_str("No layout.\n");
        return out;
    }
    out.push_str(&legs_table(&d.layout));
    out
}

/// `16 MiB of 27 MiB`: what a writable pool has mapped of what it holds
/// (it grows as it fills), as its head last reported; `FULL` when the head
/// holds writes for want of space.
fn pool_used(p: &PoolUse) -> String {
    let used = format!(
        "{} of {}",
        render::size(p.mapped_bytes),
        render::size(p.data_bytes)
    );
    if p.full { format!("{used} FULL") } else { used }
}

/// Every leg of `layout`, one row each.
fn legs_table(layout: &[vsky_api::types::MirroredDisk]) -> String {
    let mut t = Table::new(&[
        ("MDISK", Align::Right),
        ("LEG", Align::Right),
        ("SERVER", Align::Left),
        ("DISK", Align::Right),
        ("PATH", Align::Left),
        ("CHUNK", Align::Right),
        ("OFFSET", Align::Right),
        ("STATE", Align::Left),
    ]);
    for md in layout {
        for (leg_index, leg) in md.legs.iter().enumerate() {
            t.row(vec![
                md.index.to_string(),
                leg_index.to_string(),
                leg.server.clone(),
                leg.disk_id.to_string(),
                leg.disk_path.clone(),
                leg.chunk_index.to_string(),
                leg.offset_bytes.to_string(),
                render::state(&leg.state),
            ]);
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::{Layer, LayerState, Leg, LegState, MirroredDisk, PoolUse, VolumeHealth};

    fn volume(name: &str, stripe: Option<Stripe>, attached_to: Option<&str>) -> Volume {
        Volume {
            id: 3,
            name: name.into(),
            size_bytes: 10 << 30,
            replicas: 2,
            stripe,
            class: None,
            near_server: None,
            attachment_state: attached_to.map(|_| AttachmentState::Attached),
            attached_to: attached_to.map(String::from),
            served_bytes: attached_to.map(|_| 10 << 30),
            read_on: Vec::new(),
            health: VolumeHealth::Rebuilding,
            thin: false,
            snapshot_of: None,
            snapshot_time_unix_s: None,
            mirrored_disks: 2,
            mirrored_disks_degraded: 0,
            mirrored_disks_rebuilding: 1,
            group: None,
            display_name: name.into(),
            description: String::new(),
            keys: Default::default(),
            sharable: false,
            allocated_bytes: 0,
        }
    }

    fn leg(server: &str, disk_id: u64, chunk_index: u32, state: LegState) -> Leg {
        Leg {
            server: server.into(),
            disk_id,
            disk_path: format!("/dev/sd{}", (b'a' + disk_id as u8) as char),
            chunk_index,
            offset_bytes: 1_048_576 + u64::from(chunk_index) * (1 << 30),
            state,
        }
    }

    #[test]
    fn volume_table_aligns_and_shows_stripes() {
        let text = render_volume_table(&[
            volume("vm-101-disk-0", None, Some("node1")),
            volume(
                "db",
                Some(Stripe {
                    width: 4,
                    unit_bytes: 64 << 10,
                }),
                None,
            ),
        ]);
        assert_eq!(
            text,
            "NAME           ID    SIZE  REPLICAS  STRIPE      CLASS  ATTACHED  HEALTH      MDISKS  DEGRADED  REBUILDING\n\
             vm-101-disk-0   3  10 GiB         2  none        -      node1     rebuilding       2         0           1\n\
             db              3  10 GiB         2  4 x 64 KiB  -      -         rebuilding       2         0           1\n"
        );
        assert_eq!(render_volume_table(&[]), "No volumes.\n");
    }

    #[test]
    fn a_thin_volume_shows_its_layers_and_their_legs() {
        let mut v = volume("vm1", None, None);
        v.thin = true;
        let layer = |name: &str, state, frozen, shared: &[&str], chunk| Layer {
            name: name.into(),
            state,
            thin_size_bytes: 24 << 20,
            frozen_at_unix_s: frozen,
            shared_by: shared.iter().map(|s| s.to_string()).collect(),
            pool: (state == LayerState::Writable).then_some(PoolUse {
                mapped_bytes: 16 << 20,
                data_bytes: 27 << 20,
                metadata_used_percent: 1,
                full: false,
            }),
            layout: vec![MirroredDisk {
                last_scrub_unix_s: None,
                index: 0,
                legs: vec![
                    leg("node1", 1, chunk, LegState::Active),
                    leg("node2", 2, chunk, LegState::Active),
                ],
            }],
        };
        let detail = VolumeDetail {
            volume: v,
            data_bytes_per_mirrored_disk: 31 << 20,
            layout: Vec::new(),
            layers: vec![
                layer("_L9", LayerState::Writable, None, &["vm1"], 4),
                layer(
                    "_L6",
                    LayerState::Frozen,
                    Some(86_400),
                    &["snap", "tmpl", "vm1"],
                    2,
                ),
            ],
        };
        let text = render_volume_detail(&detail);
        assert!(text.contains("Provisioning:            thin\n"), "{text}");
        let expected = "\
LAYER  STATE       SIZE  MDISKS  POOL USED         FROZEN                DATA OF
_L9    writable  24 MiB       1  16 MiB of 27 MiB  -                     vm1
_L6    frozen    24 MiB       1  -                 1970-01-02 00:00:00Z  snap, tmpl, vm1

Layer _L9:
";
        assert!(text.contains(expected), "{text}");
        assert!(text.contains("Layer _L6:\nMDISK  LEG"), "{text}");
        assert!(!text.contains("No layout."), "{text}");
    }

    #[test]
    fn volume_show_lists_every_leg_with_its_place_and_state() {
        let detail = VolumeDetail {
            volume: volume("v1", None, None),
            data_bytes_per_mirrored_disk: 5 << 30,
            layout: vec![
                MirroredDisk {
                    last_scrub_unix_s: None,
                    index: 0,
                    legs: vec![
                        leg("node1", 1, 0, LegState::Active),
                        leg("node2", 2, 3, LegState::Active),
                    ],
                },
                MirroredDisk {
                    last_scrub_unix_s: None,
                    index: 1,
                    legs: vec![
                        leg("node1", 1, 1, LegState::Active),
                        leg("node3", 3, 12, LegState::Syncing),
                    ],
                },
            ],
            layers: Vec::new(),
        };
        let text = render_volume_detail(&detail);
        let expected_layout = "\
MDISK  LEG  SERVER  DISK  PATH      CHUNK       OFFSET  STATE
    0    0  node1      1  /dev/sdb      0      1048576  active
    0    1  node2      2  /dev/sdc      3   3222274048  active
    1    0  node1      1  /dev/sdb      1   1074790400  active
    1    1  node3      3  /dev/sdd     12  12885950464  syncing
";
        assert!(text.ends_with(expected_layout), "{text}");
        assert!(text.starts_with("Name:                    v1\n"), "{text}");
        assert!(
            text.contains("Size:                    10 GiB (10737418240 bytes)\n"),
            "{text}"
        );
        assert!(
            text.contains("Mirrored disks:          2 (0 degraded, 1 rebuilding)\n"),
            "{text}"
        );
        assert!(text.contains("Attached to:             -\n"), "{text}");
        // A grow its head has not applied yet shows the size it serves.
        let mut growing = detail.clone();
        growing.volume.attached_to = Some("node1".into());
        growing.volume.attachment_state = Some(AttachmentState::Attached);
        growing.volume.served_bytes = Some(4 << 30);
        assert!(
            render_volume_detail(&growing)
                .contains("Attached to:             node1 (growing: serves 4 GiB)\n"),
            "{}",
            render_volume_detail(&growing)
        );
        growing.volume.served_bytes = Some(10 << 30);
        assert!(render_volume_detail(&growing).contains("Attached to:             node1\n"));
        // A snapshot read by backups shows where.
        let mut read = detail.clone();
        read.volume.read_on = vec!["node2".into(), "node3".into()];
        assert!(
            render_volume_detail(&read).contains("Attached to:             read on node2,node3\n"),
            "{}",
            render_volume_detail(&read)
        );
        assert!(
            text.contains(
                "Scrubbed:                not yet: 2 of 2 mirrored disks never scrubbed\n"
            ),
            "{text}"
        );
        let mut both = detail.clone();
        both.layout[0].last_scrub_unix_s = Some(1_796_012_345);
        both.layout[1].last_scrub_unix_s = Some(1_796_012_400);
        assert!(
            render_volume_detail(&both).contains(
                "Scrubbed:                2026-11-30 04:19:05Z (the oldest of its mirrored disks' last scrubs)\n"
            ),
            "{}",
            render_volume_detail(&both)
        );

        let empty = VolumeDetail {
            layout: vec![],
            ..detail
        };
        assert!(render_volume_detail(&empty).ends_with("\nNo layout.\n"));
    }

    #[test]
    fn json_output_is_the_api_shape() {
        let detail = VolumeDetail {
            volume: volume("v1", None, None),
            data_bytes_per_mirrored_disk: 1,
            layout: vec![],
            layers: Vec::new(),
        };
        let value: serde_json::Value = serde_json::from_str(&render::json(&detail)).unwrap();
        // VolumeDetail flattens the volume: the fields sit at the top level.
        assert_eq!(value["name"], "v1");
        assert_eq!(value["health"], "rebuilding");
        assert_eq!(value["layout"], serde_json::json!([]));
    }
}
