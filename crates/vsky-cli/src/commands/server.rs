//! `vsky server …`: storage servers.
//!
//! `server show` is the one command here that makes two requests (the
//! server, then the disk list filtered to it) because an admin looking at a
//! server nearly always wants its disks next; with `--json` it returns the
//! manager's server object alone so that the output stays one API object.

use std::collections::BTreeMap;

use vsky_api::Client;
use vsky_api::types::{CreateServer, Disk, Server};

use crate::args::ServerCommand;
use crate::commands::disk::{draining, render_disk_table, yes_no};
use crate::commands::recovery::{self, Drained};
use crate::error::CliError;
use crate::render::{self, Align, KeyValue, Table};

pub async fn run(cmd: &ServerCommand, client: &Client, json: bool) -> Result<String, CliError> {
    match cmd {
        ServerCommand::Add {
            name,
            address,
            labels,
        } => {
            let req = CreateServer {
                name: name.clone(),
                address: address.clone(),
                labels: label_map(labels)?,
            };
            let server = client.create_server(&req).await?;
            Ok(if json {
                render::json(&server)
            } else {
                format!(
                    "Added server {}.\n{}",
                    render::clean(&server.name),
                    render_server(&server)
                )
            })
        }
        ServerCommand::List => {
            let servers = client.list_servers().await?;
            Ok(if json {
                render::json(&servers)
            } else {
                render_server_table(&servers)
            })
        }
        ServerCommand::Show { name } => {
            let server = client.server(name).await?;
            if json {
                return Ok(render::json(&server));
            }
            let disks: Vec<Disk> = client
                .list_disks()
                .await?
                .into_iter()
                .filter(|d| d.server == server.name)
                .collect();
            Ok(render_server_with_disks(&server, &disks))
        }
        ServerCommand::Remove { name } => {
            client.remove_server(name).await?;
            Ok(if json {
                render::json(&serde_json::json!({ "result": "removed", "server": name }))
            } else {
                format!("Removed server {}.\n", render::clean(name))
            })
        }
        ServerCommand::Fail {
            name,
            wait,
            wait_timeout,
        } => {
            let server = client.fail_server(name).await?;
            if *wait && !super::recovery::wait_for_rebuilds(client, *wait_timeout, json).await? {
                return Ok(String::new());
            }
            let server = if *wait {
                client.server(name).await?
            } else {
                server
            };
            Ok(if json {
                render::json(&server)
            } else {
                format!(
                    "Marked server {} failed.\n{}",
                    render::clean(&server.name),
                    render_server(&server)
                )
            })
        }
        ServerCommand::Drain {
            name,
            stop,
            wait,
            wait_timeout,
        } => {
            let shown = render::clean(name);
            if *stop {
                let server = client.stop_drain_server(name).await?;
                return Ok(if json {
                    render::json(&server)
                } else {
                    format!(
                        "Stopped draining server {shown}: it takes new chunks again (disks drained on their own stay draining); moves already under way finish.\n{}",
                        render_server(&server)
                    )
                });
            }
            let server = client.drain_server(name).await?;
            if *wait {
                if !recovery::wait_for_drain(
                    client,
                    Drained::Server(name),
                    server.legs_left,
                    *wait_timeout,
                    json,
                )
                .await?
                {
                    return Ok(String::new());
                }
                let server = client.server(name).await?;
                return Ok(if json {
                    render::json(&server)
                } else {
                    format!(
                        "Server {shown} is drained: it holds no legs. Stop its agent, then `vsky server remove {shown}` takes it out (an agent that registers again adds it back).\n{}",
                        render_server(&server)
                    )
                });
            }
            Ok(if json {
                render::json(&server)
            } else if server.legs_left == 0 {
                format!(
                    "Server {shown} is draining and holds no legs: `vsky server remove {shown}` takes it out.\n{}",
                    render_server(&server)
                )
            } else {
                format!(
                    "Draining server {shown}: the {} legs on its disks move to other servers. `vsky server drain {shown} --wait` follows them.\n{}",
                    server.legs_left,
                    render_server(&server)
                )
            })
        }
    }
}

/// Collects `--label` pairs, refusing a key given twice: silently keeping
/// one of two different failure domains would be worse than an error.
pub fn label_map(labels: &[(String, String)]) -> Result<BTreeMap<String, String>, CliError> {
    let mut map = BTreeMap::new();
    for (key, value) in labels {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(CliError::Usage(format!(
                "label '{key}' is given more than once; give each key once"
            )));
        }
    }
    Ok(map)
}

pub fn render_server(s: &Server) -> String {
    let mut kv = KeyValue::new();
    kv.add("Name", s.name.as_str())
        .add("ID", s.id.to_string())
        .add("Address", s.address.as_str())
        .add("State", render::state(&s.state))
        .add("Draining", draining(s.draining, s.legs_left, s.legs_moving))
        .add(
            "Role",
            if s.storage_only {
                "storage only (its agent runs with --storage-only: no volume can be attached)"
            } else {
                "head and storage"
            },
        )
        .add("Labels", render::labels(&s.labels))
        .add("Disks", s.disks.to_string())
        .add("Capacity", render::size(s.capacity_bytes))
        .add("Free", render::size(s.free_bytes))
        .add("Legs", s.legs.to_string());
    kv.render()
}

pub fn render_server_with_disks(server: &Server, disks: &[Disk]) -> String {
    let mut out = render_server(server);
    out.push('\n');
    if disks.is_empty() {
        out.push_str("No disks.\n");
    } else {
        out.push_str(&render_disk_table(disks));
    }
    out
}

pub fn render_server_table(servers: &[Server]) -> String {
    if servers.is_empty() {
        return "No servers.\n".to_string();
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("ID", Align::Right),
        ("ADDRESS", Align::Left),
        ("STATE", Align::Left),
        ("DRAINING", Align::Left),
        ("DISKS", Align::Right),
        ("CAPACITY", Align::Right),
        ("FREE", Align::Right),
        ("LEGS", Align::Right),
        ("MOVING", Align::Right),
        ("LABELS", Align::Left),
    ]);
    for s in servers {
        t.row(vec![
            s.name.clone(),
            s.id.to_string(),
            s.address.clone(),
            render::state(&s.state),
            yes_no(s.draining),
            s.disks.to_string(),
            render::size(s.capacity_bytes),
            render::size(s.free_bytes),
            s.legs.to_string(),
            s.legs_moving.to_string(),
            render::labels(&s.labels),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::{DiskState, ServerState};

    pub(crate) fn server(name: &str, id: u64, state: ServerState) -> Server {
        Server {
            id,
            name: name.into(),
            address: format!("10.0.0.{id}:10809"),
            labels: [("rack".to_string(), format!("r{id}"))]
                .into_iter()
                .collect(),
            state,
            disks: 2,
            capacity_bytes: 2 << 40,
            free_bytes: 3 << 39,
            legs: 512,
            draining: false,
            legs_left: 512,
            legs_moving: 0,
            storage_only: false,
        }
    }

    #[test]
    fn duplicate_labels_are_a_usage_error() {
        let ok = label_map(&[("rack".into(), "r1".into()), ("room".into(), "b".into())]).unwrap();
        assert_eq!(ok.len(), 2);
        let err =
            label_map(&[("rack".into(), "r1".into()), ("rack".into(), "r2".into())]).unwrap_err();
        assert_eq!(err.exit_status(), crate::error::ExitStatus::Usage);
        assert!(err.to_string().contains("'rack'"), "{err}");
    }

    #[test]
    fn server_table_aligns_columns() {
        let text = render_server_table(&[
            server("node1", 1, ServerState::Online),
            server("n12", 12, ServerState::Failed),
        ]);
        assert_eq!(
            text,
            "NAME   ID  ADDRESS          STATE   DRAINING  DISKS  CAPACITY     FREE  LEGS  MOVING  LABELS\n\
             node1   1  10.0.0.1:10809   online  no            2     2 TiB  1.5 TiB   512       0  rack=r1\n\
             n12    12  10.0.0.12:10809  failed  no            2     2 TiB  1.5 TiB   512       0  rack=r12\n"
        );
        assert_eq!(render_server_table(&[]), "No servers.\n");
    }

    #[test]
    fn draining_servers_say_so_with_their_legs_left() {
        let mut s = server("node1", 1, ServerState::Online);
        s.draining = true;
        s.legs_left = 300;
        s.legs_moving = 4;
        let table = render_server_table(std::slice::from_ref(&s));
        assert!(table.contains(" online  yes "), "{table}");
        assert!(table.contains("   512       4  "), "{table}");
        let text = render_server(&s);
        assert!(text.contains("State:     online\n"), "{text}");
        assert!(
            text.contains("Draining:  yes: 300 legs left, 4 moving\n"),
            "{text}"
        );
    }

    #[test]
    fn server_show_lists_its_disks() {
        let s = server("node1", 1, ServerState::Online);
        let text = render_server_with_disks(&s, &[]);
        assert!(
            text.starts_with("Name:      node1\nID:        1\n"),
            "{text}"
        );
        assert!(text.contains("State:     online\n"), "{text}");
        assert!(text.contains("Role:      head and storage\n"), "{text}");
        assert!(text.ends_with("\nNo disks.\n"), "{text}");
        let storage = Server {
            storage_only: true,
            ..s.clone()
        };
        let text = render_server(&storage);
        assert!(
            text.contains("Role:      storage only (its agent runs with --storage-only"),
            "{text}"
        );
        let disk = Disk {
            id: 3,
            server: "node1".into(),
            path: "/dev/sdb".into(),
            size_bytes: 1 << 40,
            class: None,
            state: DiskState::Online,
            chunk_count: 1024,
            legs: 10,
            free_chunks: 1014,
            releasing_chunks: 0,
            draining: false,
            legs_left: 10,
            legs_moving: 0,
        };
        let text = render_server_with_disks(&s, &[disk]);
        assert!(text.contains("\nID  SERVER  PATH"), "{text}");
        assert!(text.contains("/dev/sdb"), "{text}");
    }
}
