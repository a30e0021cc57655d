//! `vsky disk …`: physical disks of the storage servers.
//!
//! The API lists all disks; `disk list --server` filters on this side, but
//! first asks for the server so that a misspelt name is the manager's
//! `not_found` error rather than a silently empty table.

use vsky_api::Client;
use vsky_api::types::{CreateDisk, Disk};

use crate::args::DiskCommand;
use crate::commands::recovery::{self, Drained};
use crate::error::CliError;
use crate::render::{self, Align, KeyValue, Table};

pub async fn run(cmd: &DiskCommand, client: &Client, json: bool) -> Result<String, CliError> {
    match cmd {
        DiskCommand::Add {
            server,
            path,
            size,
            class,
        } => {
            let req = CreateDisk {
                server: server.clone(),
                path: path.clone(),
                size_bytes: *size,
                class: class.clone(),
            };
            let disk = client.create_disk(&req).await?;
            Ok(if json {
                render::json(&disk)
            } else {
                format!(
                    "Added disk {} ({} on {}).\n{}",
                    disk.id,
                    render::clean(&disk.path),
                    render::clean(&disk.server),
                    render_disk(&disk)
                )
            })
        }
        DiskCommand::List { server } => {
            if let Some(name) = server {
                // The answer is discarded: the call exists for its not_found.
                client.server(name).await?;
            }
            let mut disks = client.list_disks().await?;
            if let Some(name) = server {
                disks.retain(|d| &d.server == name);
            }
            Ok(if json {
                render::json(&disks)
            } else if disks.is_empty() {
                "No disks.\n".to_string()
            } else {
                render_disk_table(&disks)
            })
        }
        DiskCommand::Show { id } => {
            let disk = client.disk(*id).await?;
            Ok(if json {
                render::json(&disk)
            } else {
                render_disk(&disk)
            })
        }
        DiskCommand::Remove { id } => {
            client.remove_disk(*id).await?;
            Ok(if json {
                render::json(&serde_json::json!({ "result": "removed", "disk": id }))
            } else {
                format!("Removed disk {id}.\n")
            })
        }
        DiskCommand::Fail {
            id,
            wait,
            wait_timeout,
        } => {
            let disk = client.fail_disk(*id).await?;
            if *wait && !super::recovery::wait_for_rebuilds(client, *wait_timeout, json).await? {
                return Ok(String::new());
            }
            let disk = if *wait { client.disk(*id).await? } else { disk };
            Ok(if json {
                render::json(&disk)
            } else {
                format!("Marked disk {id} failed.\n{}", render_disk(&disk))
            })
        }
        DiskCommand::Drain {
            id,
            stop,
            wait,
            wait_timeout,
        } => {
            if *stop {
                let disk = client.stop_drain_disk(*id).await?;
                return Ok(if json {
                    render::json(&disk)
                } else if disk.draining {
                    let server = render::clean(&disk.server);
                    format!(
                        "Disk {id} stays draining: its server {server} is draining (`vsky server drain {server} --stop` ends that).\n{}",
                        render_disk(&disk)
                    )
                } else {
                    format!(
                        "Stopped draining disk {id}: it takes new chunks again; moves already under way finish.\n{}",
                        render_disk(&disk)
                    )
                });
            }
            let disk = client.drain_disk(*id).await?;
            if *wait {
                if !recovery::wait_for_drain(
                    client,
                    Drained::Disk(*id),
                    disk.legs_left,
                    *wait_timeout,
                    json,
                )
                .await?
                {
                    return Ok(String::new());
                }
                let disk = client.disk(*id).await?;
                return Ok(if json {
                    render::json(&disk)
                } else {
                    format!(
                        "Disk {id} is drained: it holds no legs. `vsky disk remove {id}` takes it out.\n{}",
                        render_disk(&disk)
                    )
                });
            }
            Ok(if json {
                render::json(&disk)
            } else if disk.legs_left == 0 {
                format!(
                    "Disk {id} is draining and holds no legs: `vsky disk remove {id}` takes it out.\n{}",
                    render_disk(&disk)
                )
            } else {
                format!(
                    "Draining disk {id}: its {} legs move to other disks. `vsky disk drain {id} --wait` follows them.\n{}",
                    disk.legs_left,
                    render_disk(&disk)
                )
            })
        }
    }
}

/// `yes` or `no` (tables).
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `no`, or `yes: 12 legs left, 2 moving` (show pages).
pub fn draining(draining: bool, legs_left: u64, legs_moving: u64) -> String {
    if draining {
        format!("yes: {legs_left} legs left, {legs_moving} moving")
    } else {
        "no".into()
    }
}

pub fn render_disk(d: &Disk) -> String {
    let mut kv = KeyValue::new();
    kv.add("ID", d.id.to_string())
        .add("Server", d.server.as_str())
        .add("Path", d.path.as_str())
        .add("Class", render::opt(d.class.as_deref()))
        .add("State", render::state(&d.state))
        .add("Draining", draining(d.draining, d.legs_left, d.legs_moving))
        .add("Size", render::size_exact(d.size_bytes))
        .add("Chunks", d.chunk_count.to_string())
        .add("Legs", d.legs.to_string())
        .add("Free chunks", d.free_chunks.to_string())
        .add("Releasing chunks", d.releasing_chunks.to_string());
    kv.render()
}

/// Chunk counts rather than bytes: the disk object does not carry the
/// chunk size, and counts are what the allocator reasons in.
pub fn render_disk_table(disks: &[Disk]) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("SERVER", Align::Left),
        ("PATH", Align::Left),
        ("CLASS", Align::Left),
        ("STATE", Align::Left),
        ("DRAINING", Align::Left),
        ("SIZE", Align::Right),
        ("CHUNKS", Align::Right),
        ("LEGS", Align::Right),
        ("MOVING", Align::Right),
        ("FREE", Align::Right),
        ("RELEASING", Align::Right),
    ]);
    for d in disks {
        t.row(vec![
            d.id.to_string(),
            d.server.clone(),
            d.path.clone(),
            render::opt(d.class.as_deref()),
            render::state(&d.state),
            yes_no(d.draining),
            render::size(d.size_bytes),
            d.chunk_count.to_string(),
            d.legs.to_string(),
            d.legs_moving.to_string(),
            d.free_chunks.to_string(),
            d.releasing_chunks.to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::DiskState;

    fn disk(id: u64, path: &str, class: Option<&str>) -> Disk {
        Disk {
            id,
            server: "node1".into(),
            path: path.into(),
            size_bytes: 100 << 30,
            class: class.map(String::from),
            state: DiskState::Online,
            chunk_count: 100,
            legs: 40,
            free_chunks: 58,
            releasing_chunks: 2,
            draining: false,
            legs_left: 40,
            legs_moving: 0,
        }
    }

    #[test]
    fn disk_table_aligns_and_marks_missing_class() {
        assert_eq!(
            render_disk_table(&[
                disk(7, "/dev/sdb", Some("ssd")),
                disk(12, "/dev/nvme0n1", None)
            ]),
            concat!(
                "ID  SERVER  PATH          CLASS  STATE   DRAINING     SIZE  CHUNKS  LEGS  MOVING  FREE  RELEASING\n",
                " 7  node1   /dev/sdb      ssd    online  no        100 GiB     100    40       0    58          2\n",
                "12  node1   /dev/nvme0n1  -      online  no        100 GiB     100    40       0    58          2\n",
            )
        );
    }

    #[test]
    fn draining_disks_say_so_with_their_legs_left() {
        let mut d = disk(7, "/dev/sdb", None);
        d.draining = true;
        d.legs_left = 12;
        d.legs_moving = 2;
        let table = render_disk_table(std::slice::from_ref(&d));
        assert!(
            table.ends_with(" 7  node1   /dev/sdb  -      online  yes       100 GiB     100    40       2    58          2\n"),
            "{table}"
        );
        let text = render_disk(&d);
        assert!(text.contains("State:             online\n"), "{text}");
        assert!(
            text.contains("Draining:          yes: 12 legs left, 2 moving\n"),
            "{text}"
        );
        assert!(render_disk(&disk(1, "/dev/x", None)).contains("Draining:          no\n"));
    }

    #[test]
    fn disk_show_has_exact_size() {
        let text = render_disk(&disk(7, "/dev/sdb", None));
        assert!(
            text.contains("Size:              100 GiB (107374182400 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("Class:             -\n"), "{text}");
    }
}
