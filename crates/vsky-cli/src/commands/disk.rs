//! `vsky disk …`: physical disks of the storage servers.
//!
//! The API lists all disks; `disk list --server` filters on this side, but
//! first asks for the server so that a misspelt name is the manager's
//! `not_found` error rather than a silently empty table.

use vsky_api::Client;
use vsky_api::types::{CreateDisk, Disk};

use crate::args::DiskCommand;
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
    }
}

pub fn render_disk(d: &Disk) -> String {
    let mut kv = KeyValue::new();
    kv.add("ID", d.id.to_string())
        .add("Server", d.server.as_str())
        .add("Path", d.path.as_str())
        .add("Class", render::opt(d.class.as_deref()))
        .add("State", render::state(&d.state))
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
        ("SIZE", Align::Right),
        ("CHUNKS", Align::Right),
        ("LEGS", Align::Right),
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
            render::size(d.size_bytes),
            d.chunk_count.to_string(),
            d.legs.to_string(),
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
                "ID  SERVER  PATH          CLASS  STATE      SIZE  CHUNKS  LEGS  FREE  RELEASING\n",
                " 7  node1   /dev/sdb      ssd    online  100 GiB     100    40    58          2\n",
                "12  node1   /dev/nvme0n1  -      online  100 GiB     100    40    58          2\n",
            )
        );
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
