//! Who a disk and the cluster belong to.
//!
//! A cluster draws its id once ([`Cluster::ensure_cluster_id`]). When an
//! agent registers, it reports what it read in each disk's header: nothing
//! (a blank disk), a label (cluster id, disk id, server name), or why it
//! cannot use the disk. [`Cluster::register_reported_disk`] decides, disk by
//! disk, whether the agent may serve it:
//!
//! - a blank disk is added (or, for a disk from before labels, kept); the
//!   agent then writes its label and registers again, which marks the
//!   record `labelled`;
//! - a label must name this cluster, this server and the disk the manager
//!   has at that path;
//! - anything else is refused, and if the manager has a disk at that path
//!   it is failed (its legs are rebuilt elsewhere): the disk there is not
//!   the one the manager knows, or cannot be used. A labelled disk that
//!   reads blank again was replaced or wiped, and is failed too.
//!
//! One refused disk never refuses the others: the agent serves the rest.
//! Relabelling a refused disk destroys its data and is the admin's
//! explicit act on its server (`vsky-agent reinitialize-disk`).

use super::{Changes, Cluster, NewDisk};
use crate::SecretSource;
use crate::entities::DiskState;
use crate::error::ModelError;
use crate::ids::{self, DiskId};
use crate::limits;

/// A disk label as an agent read it from the disk's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLabel {
    pub cluster_id: String,
    pub disk: DiskId,
    pub server: String,
}

/// What an agent found when it opened one of its disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FoundLabel {
    /// The label area is all zeros: a disk never labelled.
    Blank,
    Labelled(DiskLabel),
    /// The agent cannot use the disk (cannot open it, a corrupt label,
    /// foreign data in the header), and says why.
    Unusable(String),
}

/// One disk of a registering agent.
#[derive(Clone, Debug)]
pub struct ReportedDisk {
    pub disk: NewDisk,
    pub found: FoundLabel,
}

/// The verdict on one reported disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskVerdict {
    /// The agent serves this disk. `label` is true when the disk is blank
    /// and the agent must now write its label.
    Serve { disk: DiskId, label: bool },
    /// The agent must not touch this disk. `disk` is the manager's disk at
    /// that path, if any; `failed_now` says this verdict failed it.
    Refused {
        disk: Option<DiskId>,
        reason: String,
        failed_now: bool,
    },
}

/// A cluster id: what [`SecretSource::export_secret`] draws, 128 random
/// bits in hex from the OS in the manager.
fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::CLUSTER_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Cluster {
    /// This cluster's id (empty only for a store from before ids, until
    /// [`Self::ensure_cluster_id`] ran).
    pub fn cluster_id(&self) -> &str {
        &self.settings.cluster_id
    }

    /// Gives the cluster its id if it has none yet (a new cluster, or a
    /// store from before ids). The id never changes afterwards.
    pub fn ensure_cluster_id(&mut self, secrets: &mut dyn SecretSource) -> Changes {
        let mut changes = Changes::default();
        if self.settings.cluster_id.is_empty() {
            self.settings.cluster_id = secrets.export_secret();
            changes.settings = true;
        }
        self.commit(changes)
    }

    /// Registers one disk of an agent's server from what the agent found on
    /// it (see the module docs). A disk that cannot be served is a verdict,
    /// not an error, so one bad disk does not fail the server's
    /// registration; errors are for a malformed report (an unknown server,
    /// an invalid path or class), which changes nothing.
    pub fn register_reported_disk(
        &mut self,
        report: ReportedDisk,
    ) -> Result<(DiskVerdict, Changes), ModelError> {
        let server = self.server_by_name(&report.disk.server)?.id;
        let new = report.disk;
        ids::validate_device_path(&new.path)?;
        if let Some(class) = &new.class {
            ids::validate_name("disk class", class)?;
        }
        let existing = self
            .disks_of(server)
            .find(|d| d.path == new.path)
            .map(|d| (d.id, d.labelled));
        let ours = self.settings.cluster_id.clone();
        let path = clip(&new.path, limits::DEVICE_PATH_LEN_MAX).to_string();
        let here = clip(&new.server, limits::NAME_LEN_MAX).to_string();
        let reinit = format!(
            "if its data may be destroyed, run `vsky-agent reinitialize-disk --destroy-data {path}` on server '{here}' and restart its agent"
        );
        let refusal = match &report.found {
            FoundLabel::Unusable(problem) => Some(format!(
                "disk {path} on server '{here}' cannot be used: {}",
                clip(problem, limits::DISK_PROBLEM_LEN_MAX)
            )),
            FoundLabel::Labelled(label) if !valid_cluster_id(&label.cluster_id) => Some(format!(
                "disk {path} on server '{here}' carries a label with an invalid cluster id; {reinit}"
            )),
            FoundLabel::Labelled(label) if label.cluster_id != ours => Some(format!(
                "disk {path} on server '{here}' belongs to cluster {}, not to this manager's cluster {ours}: \
                 it holds that cluster's data. If this manager was started on an empty or lost store, \
                 start it on the store of cluster {} instead; {reinit}",
                label.cluster_id, label.cluster_id
            )),
            FoundLabel::Labelled(label) if label.server != new.server => Some(format!(
                "disk {path} on server '{here}' carries the label of disk {} of server '{}': the same disk \
                 seems to be visible to two servers. Serve it from '{}' only, and remove it from this \
                 server's --disk list; {reinit}",
                label.disk.0,
                clip(&label.server, limits::NAME_LEN_MAX),
                clip(&label.server, limits::NAME_LEN_MAX)
            )),
            FoundLabel::Labelled(label) => match existing {
                Some((id, _)) if id == label.disk => None,
                Some((id, _)) => Some(format!(
                    "disk {path} on server '{here}' carries the label of disk {}, but disk {} is registered \
                     at this path: the devices were swapped or renamed. Give the agent each disk under its \
                     registered path (`vsky disk list --server {here}`); {reinit}",
                    label.disk.0, id.0
                )),
                None => match self.disk(label.disk) {
                    Ok(other) if other.server == server => Some(format!(
                        "disk {path} on server '{here}' carries the label of disk {}, registered at {}: the \
                         device was renamed. Give the agent --disk {} instead",
                        label.disk.0, other.path, other.path
                    )),
                    _ => Some(format!(
                        "disk {path} on server '{here}' carries the label of disk {}, which this cluster \
                         no longer has (it was removed); {reinit}",
                        label.disk.0
                    )),
                },
            },
            FoundLabel::Blank => match existing {
                Some((id, true)) => Some(format!(
                    "disk {path} on server '{here}' was labelled as disk {} but now reads blank: it was \
                     replaced or wiped, so its chunks are lost and its legs are rebuilt elsewhere. \
                     Remove it with `vsky disk remove` once it holds no legs, then restart the agent to \
                     add the new disk",
                    id.0
                )),
                _ => None,
            },
        };
        let refusal = match refusal {
            Some(reason) => reason,
            None => {
                let labelled = matches!(report.found, FoundLabel::Labelled(_));
                match self.register_disk(new) {
                    Ok((id, mut changes)) => {
                        let disk = self.disks.get_mut(&id).expect("just registered");
                        if labelled && !disk.labelled {
                            disk.labelled = true;
                            let mut confirmed = Changes::default();
                            confirmed.disks.insert(id);
                            changes.merge(self.commit(confirmed));
                        }
                        return Ok((
                            DiskVerdict::Serve {
                                disk: id,
                                label: !labelled,
                            },
                            changes,
                        ));
                    }
                    Err(e) => e.to_string(),
                }
            }
        };
        let mut changes = Changes::default();
        let mut failed_now = false;
        if let Some((id, _)) = existing {
            failed_now = self.disks[&id].state != DiskState::Failed;
            changes = self.fail_disk(id)?;
        }
        Ok((
            DiskVerdict::Refused {
                disk: existing.map(|(id, _)| id),
                reason: refusal,
                failed_now,
            },
            changes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CountingSecrets, NewServer, NewVolume, Settings};

    const CHUNK: u64 = 8 << 20;

    fn cluster() -> Cluster {
        let mut c = Cluster::new(Settings::new(CHUNK)).unwrap();
        c.ensure_cluster_id(&mut CountingSecrets::default());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            c.register_server(NewServer {
                name: name.to_string(),
                address: format!("10.0.0.{i}:10809"),
                labels: Default::default(),
            })
            .unwrap();
        }
        c
    }

    fn report(server: &str, path: &str, found: FoundLabel) -> ReportedDisk {
        ReportedDisk {
            disk: NewDisk {
                server: server.into(),
                path: path.into(),
                size_bytes: (1 << 20) + 8 * CHUNK,
                class: None,
            },
            found,
        }
    }

    fn label(c: &Cluster, disk: DiskId, server: &str) -> FoundLabel {
        FoundLabel::Labelled(DiskLabel {
            cluster_id: c.cluster_id().to_string(),
            disk,
            server: server.into(),
        })
    }

    fn serve(c: &mut Cluster, r: ReportedDisk) -> DiskId {
        match c.register_reported_disk(r).unwrap().0 {
            DiskVerdict::Serve { disk, .. } => disk,
            other => panic!("refused: {other:?}"),
        }
    }

    fn refused(c: &mut Cluster, r: ReportedDisk) -> (Option<DiskId>, String, bool) {
        match c.register_reported_disk(r).unwrap().0 {
            DiskVerdict::Refused {
                disk,
                reason,
                failed_now,
            } => (disk, reason, failed_now),
            other => panic!("served: {other:?}"),
        }
    }

    #[test]
    fn the_id_is_drawn_once() {
        let mut c = Cluster::new(Settings::new(CHUNK)).unwrap();
        assert_eq!(c.cluster_id(), "");
        let mut secrets = CountingSecrets::default();
        assert!(c.ensure_cluster_id(&mut secrets).settings);
        let id = c.cluster_id().to_string();
        assert!(valid_cluster_id(&id));
        assert!(c.ensure_cluster_id(&mut secrets).is_empty());
        assert_eq!(c.cluster_id(), id);
    }

    #[test]
    fn blank_disks_are_added_and_labelled_on_the_next_registration() {
        let mut c = cluster();
        let (verdict, changes) = c
            .register_reported_disk(report("a", "/d0", FoundLabel::Blank))
            .unwrap();
        let DiskVerdict::Serve { disk, label: true } = verdict else {
            panic!("{verdict:?}")
        };
        assert!(changes.disks.contains(&disk));
        assert!(!c.disk(disk).unwrap().labelled);
        // The agent wrote the label and registers again.
        let (verdict, changes) = c
            .register_reported_disk(report("a", "/d0", label(&c, disk, "a")))
            .unwrap();
        assert_eq!(verdict, DiskVerdict::Serve { disk, label: false });
        assert!(changes.disks.contains(&disk));
        assert!(c.disk(disk).unwrap().labelled);
        // And again: nothing changes.
        let (_, changes) = c
            .register_reported_disk(report("a", "/d0", label(&c, disk, "a")))
            .unwrap();
        assert!(changes.is_empty());
        c.check_invariants().unwrap();
    }

    #[test]
    fn another_clusters_disk_is_refused_and_changes_nothing() {
        let mut c = cluster();
        let found = FoundLabel::Labelled(DiskLabel {
            cluster_id: "0123456789abcdef0123456789abcdef".into(),
            disk: DiskId(7),
            server: "a".into(),
        });
        let before = c.records();
        let (disk, reason, failed_now) = refused(&mut c, report("a", "/d0", found));
        assert_eq!((disk, failed_now), (None, false));
        assert!(
            reason.contains("0123456789abcdef0123456789abcdef"),
            "{reason}"
        );
        assert!(reason.contains(c.cluster_id()), "{reason}");
        assert!(
            reason.contains("reinitialize-disk --destroy-data /d0"),
            "{reason}"
        );
        assert_eq!(format!("{:?}", c.records()), format!("{before:?}"));
    }

    #[test]
    fn a_disk_labelled_by_another_server_is_refused() {
        let mut c = cluster();
        let d = serve(&mut c, report("a", "/shared", FoundLabel::Blank));
        let found = label(&c, d, "a");
        let (disk, reason, _) = refused(&mut c, report("b", "/shared", found));
        assert_eq!(disk, None);
        assert!(reason.contains("server 'a'"), "{reason}");
        assert_eq!(c.disks_of(c.server_by_name("b").unwrap().id).count(), 0);
    }

    /// A disk with legs whose header turns out wrong is failed, and only it.
    #[test]
    fn a_wrong_disk_at_a_known_path_fails_only_that_disk() {
        let mut c = cluster();
        let mut disks = Vec::new();
        for s in ["a", "b", "c"] {
            for p in ["/d0", "/d1"] {
                let d = serve(&mut c, report(s, p, FoundLabel::Blank));
                let found = label(&c, d, s);
                serve(&mut c, report(s, p, found));
                disks.push(d);
            }
        }
        c.create_volume(
            NewVolume {
                name: "v".into(),
                size_bytes: 20 * CHUNK,
                ..Default::default()
            },
            &mut CountingSecrets::default(),
        )
        .unwrap();
        // a:/d0 reads blank now (replaced), a:/d1 carries d0's label
        // (swapped): both are failed; b and c are untouched.
        let (disk, reason, failed_now) = refused(&mut c, report("a", "/d0", FoundLabel::Blank));
        assert_eq!((disk, failed_now), (Some(disks[0]), true));
        assert!(reason.contains("reads blank"), "{reason}");
        let found = label(&c, disks[0], "a");
        let (disk, reason, failed_now) = refused(&mut c, report("a", "/d1", found));
        assert_eq!((disk, failed_now), (Some(disks[1]), true));
        assert!(reason.contains("swapped or renamed"), "{reason}");
        // Reported again: still refused, not failed anew.
        let (_, _, failed_now) = refused(&mut c, report("a", "/d0", FoundLabel::Blank));
        assert!(!failed_now);
        for (i, d) in disks.iter().enumerate() {
            let state = c.disk(*d).unwrap().state;
            assert_eq!(state == DiskState::Failed, i < 2, "disk {i}");
        }
        c.check_invariants().unwrap();
    }

    #[test]
    fn a_shrunk_or_unusable_disk_is_refused_and_failed() {
        let mut c = cluster();
        let d0 = serve(&mut c, report("a", "/d0", FoundLabel::Blank));
        let d1 = serve(&mut c, report("a", "/d1", FoundLabel::Blank));
        let mut shrunk = report("a", "/d0", FoundLabel::Blank);
        shrunk.disk.size_bytes = (1 << 20) + 2 * CHUNK;
        let (disk, reason, failed_now) = refused(&mut c, shrunk);
        assert_eq!((disk, failed_now), (Some(d0), true));
        assert!(reason.contains("shrank"), "{reason}");
        let (disk, reason, _) = refused(
            &mut c,
            report("a", "/d1", FoundLabel::Unusable("cannot open: EIO".into())),
        );
        assert_eq!(disk, Some(d1));
        assert!(reason.contains("EIO"), "{reason}");
        // A new disk that cannot be used is refused without a record.
        let (disk, _, _) = refused(
            &mut c,
            report("a", "/d2", FoundLabel::Unusable("is empty".into())),
        );
        assert_eq!(disk, None);
        assert_eq!(c.disks_of(c.server_by_name("a").unwrap().id).count(), 2);
    }

    #[test]
    fn a_renamed_or_removed_disk_is_refused_with_its_story() {
        let mut c = cluster();
        let d0 = serve(&mut c, report("a", "/d0", FoundLabel::Blank));
        let found = label(&c, d0, "a");
        let (_, reason, _) = refused(&mut c, report("a", "/renamed", found.clone()));
        assert!(reason.contains("--disk /d0"), "{reason}");
        c.remove_disk(d0).unwrap();
        let (_, reason, _) = refused(&mut c, report("a", "/d0", found));
        assert!(reason.contains("no longer has"), "{reason}");
    }

    proptest::proptest! {
        /// Whatever agents report, in any order: no panic, the invariants
        /// hold, a refusal touches no disk but the one at that path (which
        /// it fails), and only a blank disk or a label of this cluster,
        /// server and disk is ever served.
        #[test]
        fn any_report_sequence_keeps_the_cluster_sound(
            steps in proptest::collection::vec(
                (0usize..3, 0usize..3, 0u8..6, 0u64..12, 0usize..3, 1u64..12),
                1..40,
            )
        ) {
            let mut c = cluster();
            let servers = ["a", "b", "c"];
            for (server, path, kind, disk, label_server, chunks) in steps {
                let found = match kind {
                    0 | 1 => FoundLabel::Blank,
                    2 => FoundLabel::Unusable("bad".into()),
                    3 => FoundLabel::Labelled(DiskLabel {
                        cluster_id: "other-cluster".into(),
                        disk: DiskId(disk),
                        server: servers[label_server].into(),
                    }),
                    _ => FoundLabel::Labelled(DiskLabel {
                        cluster_id: c.cluster_id().into(),
                        disk: DiskId(disk),
                        server: servers[label_server].into(),
                    }),
                };
                let mut r = report(servers[server], &format!("/d{path}"), found.clone());
                r.disk.size_bytes = (1 << 20) + chunks * CHUNK;
                let before = c.records();
                let (verdict, _) = c.register_reported_disk(r).unwrap();
                c.check_invariants().unwrap();
                let sid = c.server_by_name(servers[server]).unwrap().id;
                let here = |d: &crate::Disk| d.server == sid && d.path == format!("/d{path}");
                match verdict {
                    DiskVerdict::Refused { disk, .. } => {
                        let after = c.records();
                        let others = |rs: &crate::Records| -> Vec<crate::Disk> {
                            rs.disks.iter().filter(|d| !here(d)).cloned().collect()
                        };
                        proptest::prop_assert_eq!(others(&before), others(&after));
                        proptest::prop_assert_eq!(after.disks.len(), before.disks.len());
                        if let Some(d) = disk {
                            proptest::prop_assert_eq!(c.disk(d).unwrap().state, DiskState::Failed);
                        }
                    }
                    DiskVerdict::Serve { disk, .. } => {
                        proptest::prop_assert!(here(c.disk(disk).unwrap()));
                        match found {
                            FoundLabel::Blank => {}
                            FoundLabel::Labelled(l) => {
                                proptest::prop_assert_eq!(l.cluster_id.as_str(), c.cluster_id());
                                proptest::prop_assert_eq!(l.server.as_str(), servers[server]);
                                proptest::prop_assert_eq!(l.disk, disk);
                            }
                            FoundLabel::Unusable(_) => proptest::prop_assert!(false, "served an unusable disk"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_malformed_report_is_an_error() {
        let mut c = cluster();
        assert!(matches!(
            c.register_reported_disk(report("zz", "/d0", FoundLabel::Blank)),
            Err(ModelError::NotFound { .. })
        ));
        let unusable = FoundLabel::Unusable("cannot open".into());
        assert!(matches!(
            c.register_reported_disk(report("a", "relative/d0", unusable)),
            Err(ModelError::Invalid { .. })
        ));
        let mut classy = report("a", "/d0", FoundLabel::Blank);
        classy.disk.class = Some("no spaces".into());
        assert!(matches!(
            c.register_reported_disk(classy),
            Err(ModelError::Invalid { .. })
        ));
    }
}
