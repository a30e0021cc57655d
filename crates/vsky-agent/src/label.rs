//! A disk's label: whose disk it is, written in the front of its header.
//!
//! The first MiB of every disk is a reserved header the manager never
//! carves. Its first [`LABEL_BYTES`] hold the label, written by the agent
//! once the manager has registered a blank disk, and read every time the
//! agent opens its disks. The manager (`vsky_model::cluster::identity`)
//! decides from it whether the agent may serve the disk: a disk of another
//! cluster or server, or not the disk the manager has at that path, is
//! refused. That stops one disk being served by two servers (where one
//! server's wipe of a freed chunk would destroy the other's live leg), and
//! a manager started on a lost store from carving the old cluster's chunks.
//!
//! Layout (little-endian), then zeros up to [`LABEL_BYTES`]:
//!
//! | bytes        | field                                           |
//! |--------------|-------------------------------------------------|
//! | 0..8         | magic `VSKYDISK`                                |
//! | 8..12        | format version ([`FORMAT_VERSION`])             |
//! | 12..20       | disk id                                         |
//! | 20           | cluster id length *c*, then *c* bytes           |
//! | then         | server name length *s*, then *s* bytes          |
//! | then 4 bytes | CRC-32 (IEEE) of everything before it           |
//!
//! Decoding is total: any bytes give a [`Decoded`] value, never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes at the front of the header that hold the label (the rest of the
/// header stays zero). Equal to `vsky_model::limits::DISK_LABEL_BYTES`.
pub const LABEL_BYTES: usize = 4096;
/// The label's first bytes.
pub const MAGIC: &[u8; 8] = b"VSKYDISK";
/// Bumped when the layout changes; a newer label is refused, not guessed.
pub const FORMAT_VERSION: u32 = 1;
/// Longest cluster id and server name a label holds (the manager's bounds
/// are lower: 64 bytes each).
const FIELD_MAX: usize = 255;

/// Whose disk this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub cluster_id: String,
    pub disk_id: u64,
    pub server: String,
}

/// What a disk's label area holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// All zeros: never labelled.
    Blank,
    Label(Label),
    /// Something that is not a label of ours, or a damaged one: the reason.
    Unusable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("label field {0} is longer than {FIELD_MAX} bytes")]
    FieldTooLong(&'static str),
}

/// CRC-32 (IEEE 802.3, as zlib), bit by bit: the label is tiny and read
/// once per start, so a table buys nothing.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The label area for `label`: exactly [`LABEL_BYTES`] bytes.
pub fn encode(label: &Label) -> Result<Vec<u8>, LabelError> {
    if label.cluster_id.len() > FIELD_MAX {
        return Err(LabelError::FieldTooLong("cluster id"));
    }
    if label.server.len() > FIELD_MAX {
        return Err(LabelError::FieldTooLong("server"));
    }
    let mut out = Vec::with_capacity(LABEL_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&label.disk_id.to_le_bytes());
    for field in [&label.cluster_id, &label.server] {
        out.push(field.len() as u8);
        out.extend_from_slice(field.as_bytes());
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(LABEL_BYTES, 0);
    Ok(out)
}

/// Reads a label area (any length; only the first [`LABEL_BYTES`] count).
pub fn decode(bytes: &[u8]) -> Decoded {
    let area = &bytes[..bytes.len().min(LABEL_BYTES)];
    if area.iter().all(|&b| b == 0) {
        return Decoded::Blank;
    }
    if !area.starts_with(MAGIC) {
        return Decoded::Unusable(
            "its header holds data that is not a VastSky label (a partition table, a file system, \
             another program's data?)"
                .into(),
        );
    }
    let corrupt = |what: &str| Decoded::Unusable(format!("its VastSky label is damaged ({what})"));
    let mut r = Reader {
        bytes: area,
        at: MAGIC.len(),
    };
    let Some(version) = r.take(4) else {
        return corrupt("truncated");
    };
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Decoded::Unusable(format!(
            "its label has format {version}, which this agent does not know (it knows {FORMAT_VERSION}); \
             upgrade the agent"
        ));
    }
    let Some(disk_id) = r.take(8) else {
        return corrupt("truncated");
    };
    let disk_id = u64::from_le_bytes(disk_id.try_into().expect("8 bytes"));
    let Some(cluster_id) = r.field() else {
        return corrupt("truncated");
    };
    let Some(server) = r.field() else {
        return corrupt("truncated");
    };
    let end = r.at;
    let Some(stored) = r.take(4) else {
        return corrupt("truncated");
    };
    if u32::from_le_bytes(stored.try_into().expect("4 bytes")) != crc32(&area[..end]) {
        return corrupt("checksum mismatch");
    }
    match (std::str::from_utf8(cluster_id), std::str::from_utf8(server)) {
        (Ok(cluster_id), Ok(server)) => Decoded::Label(Label {
            cluster_id: cluster_id.to_string(),
            disk_id,
            server: server.to_string(),
        }),
        _ => corrupt("a field is not UTF-8"),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    /// A length byte, then that many bytes.
    fn field(&mut self) -> Option<&'a [u8]> {
        let len = *self.take(1)?.first()?;
        self.take(usize::from(len))
    }
}

/// Reads the label area of an open disk.
pub fn read(file: &File) -> std::io::Result<Decoded> {
    let mut buf = vec![0u8; LABEL_BYTES];
    let mut filled = 0;
    // A disk shorter than the label area reads short; the rest stays zero.
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(decode(&buf))
}

/// Writes `label` into the disk's header and makes it durable.
pub fn write(path: &Path, label: &Label) -> std::io::Result<()> {
    let bytes = encode(label).map_err(std::io::Error::other)?;
    let file = File::options().read(true).write(true).open(path)?;
    file.write_all_at(&bytes, 0)?;
    file.sync_data()?;
    // Read it back: a disk that does not keep its label is not trusted.
    match read(&file)? {
        Decoded::Label(back) if back == *label => Ok(()),
        other => Err(std::io::Error::other(format!(
            "the label did not read back ({other:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn label() -> Label {
        Label {
            cluster_id: "5f0c1d2e3a4b5c6d7e8f901a2b3c4d5e".into(),
            disk_id: 42,
            server: "node1".into(),
        }
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_label_round_trips_and_zeros_are_blank() {
        let bytes = encode(&label()).unwrap();
        assert_eq!(bytes.len(), LABEL_BYTES);
        assert_eq!(decode(&bytes), Decoded::Label(label()));
        assert_eq!(decode(&[0; LABEL_BYTES]), Decoded::Blank);
        assert_eq!(decode(&[]), Decoded::Blank);
    }

    #[test]
    fn damage_foreign_data_and_new_formats_are_unusable() {
        let good = encode(&label()).unwrap();
        let mut flipped = good.clone();
        flipped[14] ^= 1; // a bit of the disk id
        let Decoded::Unusable(why) = decode(&flipped) else {
            panic!()
        };
        assert!(why.contains("checksum"), "{why}");
        let mut ext4 = vec![0u8; LABEL_BYTES];
        ext4[1080] = 0x53; // ext4's superblock magic 0xEF53
        ext4[1081] = 0xef;
        let Decoded::Unusable(why) = decode(&ext4) else {
            panic!()
        };
        assert!(why.contains("not a VastSky label"), "{why}");
        let mut newer = good.clone();
        newer[8] = 2;
        let Decoded::Unusable(why) = decode(&newer) else {
            panic!()
        };
        assert!(why.contains("upgrade the agent"), "{why}");
        let Decoded::Unusable(why) = decode(&good[..20]) else {
            panic!()
        };
        assert!(why.contains("truncated"), "{why}");
    }

    #[test]
    fn over_long_fields_are_refused_by_the_encoder() {
        let mut l = label();
        l.server = "x".repeat(FIELD_MAX + 1);
        assert!(encode(&l).is_err());
    }

    #[test]
    fn written_labels_read_back_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(8 << 20).unwrap();
        let open = || File::open(&path).unwrap();
        assert_eq!(read(&open()).unwrap(), Decoded::Blank);
        write(&path, &label()).unwrap();
        assert_eq!(read(&open()).unwrap(), Decoded::Label(label()));
        // A file shorter than the label area reads as far as it goes.
        let short = dir.path().join("short.img");
        std::fs::write(&short, b"VSKY").unwrap();
        assert!(matches!(
            read(&File::open(&short).unwrap()).unwrap(),
            Decoded::Unusable(_)
        ));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, and a label it accepts
        /// encodes back to the same bytes.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            if let Decoded::Label(l) = decode(&bytes) {
                let again = encode(&l).unwrap();
                prop_assert_eq!(decode(&again), Decoded::Label(l));
            }
        }

        /// Damaged labels (arbitrary bytes after a valid magic and version,
        /// or one flipped byte of a good label) never panic either, and a
        /// flipped byte is never taken for another valid label.
        #[test]
        fn a_flipped_byte_is_caught(at in 0usize..64, bit in 0u8..8, id in any::<u64>(),
                                    cluster in "[0-9a-f]{0,40}", server in "\\PC{0,30}") {
            let l = Label { cluster_id: cluster, disk_id: id, server };
            let mut bytes = encode(&l).unwrap();
            bytes[at] ^= 1 << bit;
            match decode(&bytes) {
                Decoded::Label(other) => prop_assert_eq!(other, l),
                Decoded::Blank => prop_assert!(false, "a damaged label read as blank"),
                Decoded::Unusable(_) => {}
            }
        }
    }
}
