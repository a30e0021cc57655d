//! `vsky group …`: named groups of volumes, what XAPI calls storage
//! repositories. All groups share the pool; a group only names a set of
//! volumes and sums their sizes and redundancy.

use vsky_api::Client;
use vsky_api::types::{CreateGroup, Group};

use crate::args::GroupCommand;
use crate::commands::volume::render_volume_table;
use crate::error::CliError;
use crate::render::{self, Align, KeyValue, Table};

pub async fn run(cmd: &GroupCommand, client: &Client, json: bool) -> Result<String, CliError> {
    match cmd {
        GroupCommand::Create {
            name,
            display_name,
            description,
            uuid,
        } => {
            let req = CreateGroup {
                name: name.clone(),
                uuid: uuid.clone(),
                display_name: display_name.clone(),
                description: description.clone(),
            };
            let group = client.create_group(&req).await?;
            Ok(if json {
                render::json(&group)
            } else {
                format!(
                    "Created group {}.\n{}",
                    render::clean(&group.name),
                    render_group(&group)
                )
            })
        }
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            Ok(if json {
                render::json(&groups)
            } else if groups.is_empty() {
                "No groups.\n".to_string()
            } else {
                render_group_table(&groups)
            })
        }
        GroupCommand::Show { name } => {
            let group = client.group(name).await?;
            let volumes = client.list_volumes_in(name).await?;
            Ok(if json {
                render::json(&group)
            } else if volumes.is_empty() {
                format!("{}\nNo volumes.\n", render_group(&group))
            } else {
                format!(
                    "{}\n{}",
                    render_group(&group),
                    render_volume_table(&volumes)
                )
            })
        }
        GroupCommand::Delete { name } => {
            client.delete_group(name).await?;
            Ok(if json {
                render::json(&serde_json::json!({ "result": "deleted", "group": name }))
            } else {
                format!("Deleted group {}.\n", render::clean(name))
            })
        }
    }
}

pub fn render_group(g: &Group) -> String {
    let mut kv = KeyValue::new();
    kv.add("Name", g.name.as_str())
        .add("Display name", g.display_name.as_str())
        .add("UUID", render::opt(g.uuid.as_deref()))
        .add("Description", g.description.as_str())
        .add("Volumes", g.volumes.to_string())
        .add("Virtual size", render::size_exact(g.virtual_size_bytes))
        .add("Physical", render::size_exact(g.physical_bytes))
        .add(
            "Mirrored disks",
            format!(
                "{} degraded, {} rebuilding",
                g.mirrored_disks_degraded, g.mirrored_disks_rebuilding
            ),
        );
    kv.render()
}

pub fn render_group_table(groups: &[Group]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("DISPLAY NAME", Align::Left),
        ("VOLUMES", Align::Right),
        ("VIRTUAL", Align::Right),
        ("PHYSICAL", Align::Right),
        ("DEGRADED", Align::Right),
        ("REBUILDING", Align::Right),
    ]);
    for g in groups {
        t.row(vec![
            g.name.clone(),
            g.display_name.clone(),
            g.volumes.to_string(),
            render::size(g.virtual_size_bytes),
            render::size(g.physical_bytes),
            g.mirrored_disks_degraded.to_string(),
            g.mirrored_disks_rebuilding.to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, volumes: usize) -> Group {
        Group {
            name: name.into(),
            uuid: Some("0d6c5e1e".into()),
            display_name: format!("SR {name}"),
            description: String::new(),
            volumes,
            virtual_size_bytes: 10 << 30,
            physical_bytes: 20 << 30,
            mirrored_disks_degraded: 1,
            mirrored_disks_rebuilding: 0,
        }
    }

    #[test]
    fn group_table_aligns_numbers_right() {
        let out = render_group_table(&[group("sr-a", 3), group("lab", 12)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  DISPLAY NAME  VOLUMES  VIRTUAL  PHYSICAL  DEGRADED  REBUILDING"
        );
        assert_eq!(
            lines[1],
            "sr-a  SR sr-a             3   10 GiB    20 GiB         1           0"
        );
        assert_eq!(
            lines[2],
            "lab   SR lab             12   10 GiB    20 GiB         1           0"
        );
    }

    #[test]
    fn group_block_shows_sizes_and_redundancy() {
        let out = render_group(&group("sr-a", 3));
        assert!(out.contains("Volumes:         3"), "{out}");
        assert!(
            out.contains("Mirrored disks:  1 degraded, 0 rebuilding"),
            "{out}"
        );
    }
}
