//! Groups, and the descriptive data of volumes and groups.
//!
//! A group is a named set of volumes (an XAPI SR): it may carry a UUID, and
//! creating it again with the same UUID is a no-op (a retried SR.create); it
//! is deleted only when empty. A volume's metadata (group, display name,
//! description, keys) is checked against the bounds in `limits.rs` and must
//! name an existing group.

use std::collections::BTreeMap;

use super::{Changes, Cluster, not_found};
use crate::entities::{Group, Volume, VolumeMeta};
use crate::error::ModelError;
use crate::ids;
use crate::limits;

/// A change to a volume's descriptive data; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct VolumeMetaUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub set_keys: BTreeMap<String, String>,
    pub unset_keys: Vec<String>,
}

/// A change to a group's descriptive data; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct GroupUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
}

/// A UUID in its canonical 8-4-4-4-12 hex form (an XAPI SR's uuid).
fn validate_uuid(what: &'static str, text: &str) -> Result<(), ModelError> {
    let canonical = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !canonical {
        return Err(ModelError::invalid(
            what,
            "must be a UUID in the form 8-4-4-4-12 hex digits, e.g. 0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e3f (an SR's uuid); leave it out if the group has none",
        ));
    }
    Ok(())
}

fn validate_display_name(text: &str) -> Result<(), ModelError> {
    if text.len() > limits::DISPLAY_NAME_LEN_MAX || text.chars().any(char::is_control) {
        return Err(ModelError::invalid(
            "display name",
            format!(
                "at most {} bytes without control characters",
                limits::DISPLAY_NAME_LEN_MAX
            ),
        ));
    }
    Ok(())
}

impl Cluster {
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn group(&self, name: &str) -> Result<&Group, ModelError> {
        self.groups
            .get(name)
            .ok_or_else(|| not_found("group", "group", name))
    }

    /// Volumes of one group.
    pub fn volumes_in(&self, group: &str) -> impl Iterator<Item = &Volume> {
        let group = group.to_string();
        self.volumes
            .values()
            .filter(move |v| v.meta.group.as_deref() == Some(group.as_str()))
    }

    /// Creates a group. Creating it again with the same uuid is a no-op, so
    /// a retried SR.create does not fail.
    pub fn create_group(&mut self, group: Group) -> Result<Changes, ModelError> {
        ids::validate_name("group name", &group.name)?;
        validate_display_name(&group.display_name)?;
        ids::validate_description(&group.description)?;
        if let Some(u) = &group.uuid {
            validate_uuid("group uuid", u)?;
        }
        if let Some(existing) = self.groups.get(&group.name) {
            if existing.uuid.is_some() && existing.uuid == group.uuid {
                return Ok(Changes::default());
            }
            return Err(ModelError::AlreadyExists {
                kind: "group",
                key: group.name,
            });
        }
        let mut changes = Changes::default();
        changes.groups.insert(group.name.clone());
        self.groups.insert(group.name.clone(), group);
        Ok(self.commit(changes))
    }

    pub fn update_group(&mut self, name: &str, update: GroupUpdate) -> Result<Changes, ModelError> {
        self.group(name)?;
        if let Some(d) = &update.display_name {
            validate_display_name(d)?;
        }
        if let Some(d) = &update.description {
            ids::validate_description(d)?;
        }
        let group = self.groups.get_mut(name).expect("checked");
        let mut changes = Changes::default();
        if let Some(d) = update.display_name
            && d != group.display_name
        {
            group.display_name = d;
            changes.groups.insert(name.to_string());
        }
        if let Some(d) = update.description
            && d != group.description
        {
            group.description = d;
            changes.groups.insert(name.to_string());
        }
        Ok(self.commit(changes))
    }

    /// Deletes an empty group.
    pub fn delete_group(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.group(name)?;
        let volumes = self.volumes_in(name).count();
        if volumes > 0 {
            return Err(ModelError::Conflict(format!(
                "group '{name}' still holds {volumes} volumes; delete them first"
            )));
        }
        self.groups.remove(name);
        let mut changes = Changes::default();
        changes.groups.insert(name.to_string());
        Ok(self.commit(changes))
    }

    /// Changes a volume's display name, description or keys.
    pub fn update_volume_meta(
        &mut self,
        name: &str,
        update: VolumeMetaUpdate,
    ) -> Result<Changes, ModelError> {
        let id = self.volume_by_name(name)?.id;
        if let Some(d) = &update.display_name {
            validate_display_name(d)?;
        }
        if let Some(d) = &update.description {
            ids::validate_description(d)?;
        }
        let mut meta = self.volumes[&id].meta.clone();
        if let Some(d) = update.display_name {
            meta.display_name = Some(d);
        }
        if let Some(d) = update.description {
            meta.description = d;
        }
        meta.keys.extend(update.set_keys);
        for k in &update.unset_keys {
            meta.keys.remove(k);
        }
        self.validate_meta(&meta)?;
        let mut changes = Changes::default();
        let volume = self.volumes.get_mut(&id).expect("exists");
        if volume.meta != meta {
            volume.meta = meta;
            changes.volumes.insert(id);
        }
        Ok(self.commit(changes))
    }

    pub(super) fn validate_meta(&self, meta: &VolumeMeta) -> Result<(), ModelError> {
        if let Some(g) = &meta.group {
            self.group(g)?;
        }
        if let Some(d) = &meta.display_name {
            validate_display_name(d)?;
        }
        ids::validate_description(&meta.description)?;
        if meta.keys.len() > limits::VOLUME_KEYS_MAX {
            return Err(ModelError::invalid(
                "keys",
                format!("at most {} per volume", limits::VOLUME_KEYS_MAX),
            ));
        }
        for (k, v) in &meta.keys {
            if k.is_empty()
                || k.len() > limits::VOLUME_KEY_LEN_MAX
                || v.len() > limits::VOLUME_KEY_VALUE_LEN_MAX
                || k.chars().any(char::is_control)
            {
                return Err(ModelError::invalid(
                    "key",
                    format!(
                        "keys are 1..={} bytes without control characters, values at most {} bytes",
                        limits::VOLUME_KEY_LEN_MAX,
                        limits::VOLUME_KEY_VALUE_LEN_MAX
                    ),
                ));
            }
        }
        Ok(())
    }
}
