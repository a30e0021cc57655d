//! Model → API translations. The only place that knows both shapes.

use vsky_api::types as api;
use vsky_model as m;
use vsky_model::Cluster;

fn server_state(s: m::ServerState) -> api::ServerState {
    match s {
        m::ServerState::Online => api::ServerState::Online,
        m::ServerState::Failed => api::ServerState::Failed,
    }
}

fn disk_state(s: m::DiskState) -> api::DiskState {
    match s {
        m::DiskState::Online => api::DiskState::Online,
        m::DiskState::Failed => api::DiskState::Failed,
    }
}

pub fn leg_state(s: m::LegState) -> api::LegState {
    match s {
        m::LegState::Active => api::LegState::Active,
        m::LegState::Syncing => api::LegState::Syncing,
        m::LegState::Failed => api::LegState::Failed,
    }
}

pub fn stripe(s: m::Stripe) -> api::Stripe {
    api::Stripe {
        width: s.width,
        unit_bytes: s.unit_bytes,
    }
}

pub fn chunk(c: m::ChunkRef) -> api::ChunkId {
    api::ChunkId {
        disk_id: c.disk.0,
        index: c.index,
    }
}

pub fn summary(cluster_id: &str, s: m::Summary) -> api::ClusterSummary {
    api::ClusterSummary {
        cluster_id: cluster_id.to_string(),
        servers: s.servers,
        servers_failed: s.servers_failed,
        disks: s.disks,
        disks_failed: s.disks_failed,
        chunk_size_bytes: s.chunk_size_bytes,
        default_replicas: s.default_replicas,
        capacity_bytes: s.capacity_bytes,
        free_bytes: s.free_bytes,
        used_bytes: s.used_bytes,
        releasing_bytes: s.releasing_bytes,
        unavailable_bytes: s.unavailable_bytes,
        volumes: s.volumes,
        volumes_attached: s.volumes_attached,
        provisioned_bytes: s.provisioned_bytes,
        thin_allocated_bytes: s.thin_allocated_bytes,
        mirrored_disks: s.mirrored_disks,
        mirrored_disks_degraded: s.mirrored_disks_degraded,
        mirrored_disks_rebuilding: s.mirrored_disks_rebuilding,
    }
}

pub fn server(c: &Cluster, s: &m::Server) -> api::Server {
    let chunk = c.settings().chunk_size_bytes;
    let (mut disks, mut capacity, mut free, mut legs) = (0, 0, 0, 0);
    let mut drain = m::DrainProgress::default();
    for d in c.disks_of(s.id) {
        let u = c.disk_usage(d.id);
        disks += 1;
        capacity += u64::from(d.chunk_count) * chunk;
        free += u.free_chunks * chunk;
        legs += u.legs;
        let p = c.drain_progress(d.id);
        drain.legs_left += p.legs_left;
        drain.moving += p.moving;
    }
    api::Server {
        id: s.id.0,
        name: s.name.clone(),
        address: s.address.clone(),
        labels: s.labels.clone(),
        state: server_state(s.state),
        disks,
        capacity_bytes: capacity,
        free_bytes: free,
        legs,
        draining: s.draining,
        storage_only: s.storage_only,
        legs_left: drain.legs_left,
        legs_moving: drain.moving,
    }
}

pub fn disk(c: &Cluster, d: &m::Disk) -> api::Disk {
    let u = c.disk_usage(d.id);
    let drain = c.drain_progress(d.id);
    api::Disk {
        id: d.id.0,
        server: c
            .server(d.server)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        path: d.path.clone(),
        size_bytes: d.size_bytes,
        class: d.class.clone(),
        state: disk_state(d.state),
        chunk_count: d.chunk_count,
        legs: u.legs,
        free_chunks: u.free_chunks,
        releasing_chunks: u.releasing_chunks,
        draining: c.is_draining(d.id),
        legs_left: drain.legs_left,
        legs_moving: drain.moving,
    }
}

/// The records whose mirrored disks hold a volume's data: a thick
/// volume's own; a thin volume's or a snapshot's layers.
fn data_records<'a>(c: &'a Cluster, v: &'a m::Volume) -> Vec<&'a m::Volume> {
    if v.role.is_thick() {
        return vec![v];
    }
    c.chain(v.id)
        .into_iter()
        .filter_map(|id| c.volume(id))
        .collect()
}

pub fn volume(c: &Cluster, v: &m::Volume) -> api::Volume {
    let name_of = |id: m::ServerId| c.server(id).map(|s| s.name.clone());
    let records = data_records(c, v);
    let degraded = records.iter().map(|r| r.degraded_mirrored_disks()).sum();
    let rebuilding = records.iter().map(|r| r.rebuilding_mirrored_disks()).sum();
    api::Volume {
        id: v.id.0,
        name: v.name.clone(),
        size_bytes: v.size_bytes,
        replicas: v.replicas,
        stripe: v.stripe.map(stripe),
        class: v.class.clone(),
        near_server: v.near_server.and_then(name_of),
        attached_to: v.attachment.as_ref().and_then(|a| name_of(a.head)),
        attachment_state: v.attachment.as_ref().map(|a| match a.state {
            m::AttachmentState::Attached => api::AttachmentState::Attached,
            m::AttachmentState::Releasing => api::AttachmentState::Releasing,
        }),
        served_bytes: v.attachment.as_ref().and_then(|a| a.served_bytes),
        read_on: v.readers.iter().filter_map(|&s| name_of(s)).collect(),
        health: if degraded > 0 {
            api::VolumeHealth::Degraded
        } else if rebuilding > 0 {
            api::VolumeHealth::Rebuilding
        } else {
            api::VolumeHealth::Healthy
        },
        thin: !v.role.is_thick(),
        snapshot_of: match &v.role {
            m::VolumeRole::Snapshot { snapshot_of, .. } => Some(snapshot_of.clone()),
            _ => None,
        },
        snapshot_time_unix_s: match &v.role {
            m::VolumeRole::Snapshot {
                snapshot_time_unix_s,
                ..
            } => Some(*snapshot_time_unix_s),
            _ => None,
        },
        mirrored_disks: records.iter().map(|r| r.mirrored_disks.len()).sum(),
        mirrored_disks_degraded: degraded,
        mirrored_disks_rebuilding: rebuilding,
        allocated_bytes: match records.first() {
            Some(own) if !v.role.is_thick() => {
                own.mirrored_disks.len() as u64 * c.settings().data_bytes_per_chunk()
            }
            _ => v.size_bytes,
        },
        group: v.meta.group.clone(),
        display_name: v
            .meta
            .display_name
            .clone()
            .unwrap_or_else(|| v.name.clone()),
        description: v.meta.description.clone(),
        keys: v.meta.keys.clone(),
        sharable: v.meta.sharable,
    }
}

pub fn group(c: &Cluster, g: &m::Group) -> api::Group {
    let chunk = c.settings().chunk_size_bytes;
    let mut out = api::Group {
        name: g.name.clone(),
        uuid: g.uuid.clone(),
        display_name: g.display_name.clone(),
        description: g.description.clone(),
        volumes: 0,
        virtual_size_bytes: 0,
        physical_bytes: 0,
        mirrored_disks_degraded: 0,
        mirrored_disks_rebuilding: 0,
    };
    // Layers shared by several volumes of the group count once.
    let mut counted = std::collections::BTreeSet::new();
    for v in c.volumes_in(&g.name) {
        out.volumes += 1;
        out.virtual_size_bytes += v.size_bytes;
        for r in data_records(c, v) {
            if !counted.insert(r.id) {
                continue;
            }
            out.physical_bytes += r.mirrored_disks.len() as u64 * u64::from(r.replicas) * chunk;
            out.mirrored_disks_degraded += r.degraded_mirrored_disks();
            out.mirrored_disks_rebuilding += r.rebuilding_mirrored_disks();
        }
    }
    out
}

/// A pool report of the model as the API shows it, in bytes of
/// `block_bytes` blocks.
pub fn pool_use(u: &m::PoolUsage, block_bytes: u64) -> api::PoolUse {
    let percent = u.used_meta_blocks.saturating_mul(100) / u.total_meta_blocks.max(1);
    api::PoolUse {
        mapped_bytes: u.used_data_blocks.saturating_mul(block_bytes),
        data_bytes: u.total_data_blocks.saturating_mul(block_bytes),
        metadata_used_percent: u8::try_from(percent.min(100)).unwrap_or(100),
        full: u.out_of_data_space,
    }
}

/// A volume with its layout. Export secrets are deliberately left out: only
/// the head's and the storage servers' agents receive them.
pub fn volume_detail(c: &Cluster, v: &m::Volume) -> api::VolumeDetail {
    let layers = if v.role.is_thick() {
        Vec::new()
    } else {
        data_records(c, v)
            .into_iter()
            .filter_map(|l| {
                let info = l.role.layer()?;
                Some(api::Layer {
                    name: l.name.clone(),
                    state: match info.state {
                        m::LayerState::Writable => api::LayerState::Writable,
                        m::LayerState::Freezing => api::LayerState::Freezing,
                        m::LayerState::Frozen => api::LayerState::Frozen,
                    },
                    thin_size_bytes: info.thin_size_bytes,
                    frozen_at_unix_s: info.frozen_at_unix_s,
                    shared_by: c
                        .volumes()
                        .filter(|h| {
                            // Handles: thin volumes and snapshots.
                            !h.role.is_thick()
                                && h.role.layer().is_none()
                                && c.chain(h.id).contains(&l.id)
                        })
                        .map(|h| h.name.clone())
                        .collect(),
                    layout: layout(c, l),
                    pool: None,
                })
            })
            .collect()
    };
    api::VolumeDetail {
        volume: volume(c, v),
        data_bytes_per_mirrored_disk: c.settings().data_bytes_per_chunk(),
        layout: layout(c, v),
        layers,
    }
}

/// A record's mirrored disks with their legs.
fn layout(c: &Cluster, v: &m::Volume) -> Vec<api::MirroredDisk> {
    v.mirrored_disks
        .iter()
        .enumerate()
        .map(|(index, md)| api::MirroredDisk {
            index,
            last_scrub_unix_s: md.last_scrub_unix_s,
            legs: md
                .legs
                .iter()
                .map(|leg| {
                    let d = c.disk(leg.chunk.disk).expect("legs sit on known disks");
                    api::Leg {
                        server: c
                            .server(d.server)
                            .map(|s| s.name.clone())
                            .unwrap_or_default(),
                        disk_id: d.id.0,
                        disk_path: d.path.clone(),
                        chunk_index: leg.chunk.index,
                        offset_bytes: c.settings().chunk_offset_bytes(leg.chunk.index),
                        state: leg_state(leg.state),
                    }
                })
                .collect(),
        })
        .collect()
}

pub fn desired_state(
    c: &Cluster,
    view: m::agent_view::AgentView,
    resync_rate_bytes_per_second: u64,
) -> api::DesiredState {
    let name_of = |id: m::ServerId| c.server(id).map(|s| s.name.clone()).unwrap_or_default();
    let leg_spec = |l: m::agent_view::LegSpec| api::LegSpec {
        chunk: chunk(l.chunk),
        server: name_of(l.server),
        server_address: l.server_address,
        export_name: l.export_name,
        local_disk_path: l.local_disk_path,
        offset_bytes: l.offset_bytes,
        state: leg_state(l.state),
        resync_job: l.resync_job.map(|j| j.0),
    };
    let settings = c.settings();
    api::DesiredState {
        resync_rate_bytes_per_second,
        copies: view
            .copies
            .into_iter()
            .map(|cp| api::CopySpec {
                job: cp.job.0,
                source: leg_spec(cp.source),
                target_chunk: chunk(cp.target),
                target_disk_path: cp.target_disk_path,
                target_offset_bytes: cp.target_offset_bytes,
                leg_meta_bytes: settings.leg_meta_bytes,
                chunk_size_bytes: settings.chunk_size_bytes,
                rate_bytes_per_second: resync_rate_bytes_per_second,
            })
            .collect(),
        scrubs: view
            .scrubs
            .into_iter()
            .map(|sc| api::ScrubSpec {
                scrub: sc.scrub,
                method: match sc.method {
                    vsky_model::ScrubMethod::RaidCheck => api::ScrubMethod::RaidCheck,
                    vsky_model::ScrubMethod::CompareLegs => api::ScrubMethod::CompareLegs,
                },
                volume: sc.volume,
                mirrored_disk: sc.mirrored_disk,
                legs: sc.legs.into_iter().map(leg_spec).collect(),
                leg_meta_bytes: settings.leg_meta_bytes,
                chunk_size_bytes: settings.chunk_size_bytes,
            })
            .collect(),
        generation: view.generation,
        exports: view
            .exports
            .into_iter()
            .map(|e| api::ExportSpec {
                export_name: e.export_name,
                chunk: chunk(e.chunk),
                disk_path: e.disk_path,
                offset_bytes: e.offset_bytes,
                size_bytes: e.size_bytes,
                writable_bytes: e.writable_bytes,
            })
            .collect(),
        wipes: view
            .wipes
            .into_iter()
            .map(|w| api::WipeSpec {
                chunk: chunk(w.chunk),
                release: w.release,
                disk_path: w.disk_path,
                offset_bytes: w.offset_bytes,
                size_bytes: w.size_bytes,
            })
            .collect(),
        volumes: view
            .volumes
            .into_iter()
            .map(|v| api::VolumeSpec {
                name: v.name,
                size_bytes: v.size_bytes,
                stripe: v.stripe.map(stripe),
                chunk_size_bytes: v.chunk_size_bytes,
                leg_meta_bytes: v.leg_meta_bytes,
                mirrored_disks: v
                    .mirrored_disks
                    .into_iter()
                    .map(|legs| legs.into_iter().map(leg_spec).collect())
                    .collect(),
                chain: v
                    .chain
                    .into_iter()
                    .map(|l| layer_spec(l, &leg_spec))
                    .collect(),
                read_only: v.read_only,
            })
            .collect(),
    }
}

fn layer_spec(
    l: m::agent_view::LayerSpec,
    leg_spec: &dyn Fn(m::agent_view::LegSpec) -> api::LegSpec,
) -> api::LayerSpec {
    api::LayerSpec {
        name: l.name,
        form: match l.form {
            m::agent_view::LayerForm::Top => api::LayerForm::Top,
            m::agent_view::LayerForm::Freezing => api::LayerForm::Freezing,
            m::agent_view::LayerForm::Base => api::LayerForm::Base,
        },
        mirrored_disks: l
            .mirrored_disks
            .into_iter()
            .map(|legs| legs.into_iter().map(leg_spec).collect())
            .collect(),
        meta_bytes: l.meta_bytes,
        added_meta_bytes: l.added_meta_bytes,
        block_sectors: l.block_sectors,
        thin_size_bytes: l.thin_size_bytes,
        parent: l.parent,
    }
}

fn move_reason(r: m::MoveReason) -> api::MoveReason {
    match r {
        m::MoveReason::Drain => api::MoveReason::Drain,
        m::MoveReason::Rebalance => api::MoveReason::Rebalance,
    }
}

/// The name of the server holding a disk (empty if either is gone).
fn server_of_disk(c: &Cluster, disk: m::DiskId) -> String {
    c.disk(disk)
        .ok()
        .and_then(|d| c.server(d.server))
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// A move planned by a rebalance, as its answer lists it.
pub fn planned_move(c: &Cluster, p: &m::PlannedMove) -> api::PlannedMoveInfo {
    let (volume, mirrored_disk) = c
        .job(p.job)
        .map(|j| (c.volume_label(j.volume), j.mirrored_disk))
        .unwrap_or_default();
    api::PlannedMoveInfo {
        rebuild: p.job.0,
        volume,
        mirrored_disk,
        from_disk: p.from.0,
        from_server: server_of_disk(c, p.from),
        to_disk: p.to.0,
        to_server: server_of_disk(c, p.to),
    }
}

fn location(c: &Cluster, at: m::ChunkRef) -> api::ChunkLocation {
    api::ChunkLocation {
        server: server_of_disk(c, at.disk),
        disk_id: at.disk.0,
        chunk_index: at.index,
    }
}

/// A resync job as the API shows it; `rate` is the measured copy rate.
pub fn rebuild(c: &Cluster, j: &m::ResyncJob, rate: Option<f64>) -> api::Rebuild {
    let state = match j.state {
        m::JobState::Queued => api::RebuildState::Queued,
        m::JobState::Running => api::RebuildState::Running,
        m::JobState::Done => api::RebuildState::Done,
        m::JobState::Failed => api::RebuildState::Failed,
    };
    let rate = rate.filter(|_| j.state == m::JobState::Running);
    let (kind, reason, from_leg) = match j.kind {
        m::JobKind::Repair => (api::RebuildKind::Repair, None, None),
        m::JobKind::Move { from, reason } => (
            api::RebuildKind::Move,
            Some(move_reason(reason)),
            Some(from),
        ),
    };
    api::Rebuild {
        id: j.id.0,
        kind,
        reason,
        from_leg,
        volume: c.volume_label(j.volume),
        mirrored_disk: j.mirrored_disk,
        leg: j.leg,
        state,
        source: j.source.map(|s| location(c, s)),
        target: location(c, j.target),
        replaced: location(c, j.replaced),
        executor: c
            .job_executor(j.id)
            .and_then(|e| c.server(e.server()))
            .map(|s| s.name.clone()),
        bytes_total: j.bytes_total,
        bytes_done: j.bytes_done,
        rate_bytes_per_second: rate,
        eta_seconds: rate
            .filter(|r| *r > 0.0)
            .map(|r| j.bytes_total.saturating_sub(j.bytes_done) as f64 / r),
        error: j.error.clone(),
    }
}
