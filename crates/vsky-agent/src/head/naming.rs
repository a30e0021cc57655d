//! Names the head gives the kernel: the backend identifier of an NBD
//! import (`vsky:<vol>:<k>:<disk>:<index>`) and the leg tag of a chunk in
//! device names (`d<disk>c<index>`), and parsing both back.

use vsky_api::types::ChunkId;
use vsky_kernel::dm::VolumeName;

/// The start of every backend identifier of `volume`'s imports,
/// `vsky:<vol>:` (`vsky` is the agent's name prefix,
/// `vsky_kernel::dm::name_prefix_word`): we only ever touch our imports.
/// Volume names hold no ':', so the prefix ends exactly at the volume.
pub(super) fn backend_prefix(volume: &str) -> String {
    format!("{}:{volume}:", vsky_kernel::dm::name_prefix_word())
}

/// The identifier the kernel keeps for an imported leg (visible in sysfs,
/// so it holds no secret): volume, mirrored disk and chunk,
/// `vsky:<vol>:<k>:<disk>:<index>`. Not the slot: a moved leg changes
/// slots and must keep its import. Agents before moves existed put the
/// slot in too (`vsky:<vol>:<k>:<l>:<disk>:<index>`); `Head::find_import`
/// adopts both.
pub(super) fn backend_id(volume: &str, k: usize, chunk: ChunkId) -> String {
    format!(
        "{}{k}:{}:{}",
        backend_prefix(volume),
        chunk.disk_id,
        chunk.index
    )
}

/// Chunks of a mirror's slots for the log, `[d1c2 - d3c4]`.
pub(super) fn describe_chunks(chunks: &[Option<ChunkId>]) -> String {
    let tags: Vec<String> = chunks
        .iter()
        .map(|c| c.map_or_else(|| "-".to_string(), leg_tag))
        .collect();
    format!("[{}]", tags.join(" "))
}

/// The leg tag of a chunk, `d<disk>c<index>`, as in device names.
pub(super) fn leg_tag(chunk: ChunkId) -> String {
    format!("d{}c{}", chunk.disk_id, chunk.index)
}

pub(super) fn parse_tag(tag: &str) -> Option<ChunkId> {
    let (disk, index) = tag.strip_prefix('d')?.split_once('c')?;
    Some(ChunkId {
        disk_id: disk.parse().ok()?,
        index: index.parse().ok()?,
    })
}

/// (mirror, chunk) of one of `vol`'s leg devices, `vsky-<vol>+r<k>+<tag>+meta|data`.
pub(super) fn leg_device_of(vol: &VolumeName, name: &str) -> Option<(u32, ChunkId)> {
    let rest = name
        .strip_prefix(vsky_kernel::dm::name_prefix())?
        .strip_prefix(vol.as_str())?
        .strip_prefix("+r")?;
    let (k, rest) = rest.split_once('+')?;
    let tag = rest
        .strip_suffix("+meta")
        .or_else(|| rest.strip_suffix("+data"))?;
    Some((k.parse().ok()?, parse_tag(tag)?))
}

/// (mirror, chunk) of an import's backend id past `vsky:<vol>:`:
/// `<k>:<disk>:<index>`, or `<k>:<l>:<disk>:<index>` from agents that
/// named the slot too.
pub(super) fn parse_backend_rest(rest: &str) -> Option<(u32, ChunkId)> {
    let parts: Vec<&str> = rest.split(':').collect();
    let (k, disk_id, index) = match parts.as_slice() {
        [k, disk, index] => (k, disk, index),
        [k, slot, disk, index] => {
            let _slot: u32 = slot.parse().ok()?;
            (k, disk, index)
        }
        _ => return None,
    };
    Some((
        k.parse().ok()?,
        ChunkId {
            disk_id: disk_id.parse().ok()?,
            index: index.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(disk_id: u64, index: u32) -> ChunkId {
        ChunkId { disk_id, index }
    }

    #[test]
    fn backend_ids_name_no_slot() {
        assert_eq!(backend_id("vol-1", 3, chunk(17, 5)), "vsky:vol-1:3:17:5");
    }

    #[test]
    fn backend_ids_parse_in_both_forms() {
        assert_eq!(parse_backend_rest("3:17:5"), Some((3, chunk(17, 5))));
        // Imports made by agents that named the slot.
        assert_eq!(parse_backend_rest("3:1:17:5"), Some((3, chunk(17, 5))));
        for bad in [
            "",
            "3",
            "3:17",
            "3:1:17:5:9",
            "x:17:5",
            "3:x:17:5",
            "3:17:-1",
        ] {
            assert_eq!(parse_backend_rest(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunks_are_described_for_the_log() {
        assert_eq!(
            describe_chunks(&[Some(chunk(1, 2)), None, Some(chunk(3, 4))]),
            "[d1c2 - d3c4]"
        );
    }
}
