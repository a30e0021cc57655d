//! The disks this agent serves: validated, sized and their labels read at
//! start-up.
//!
//! A disk is a block device or a regular file (files are for labs and
//! tests). Its size is read from the device itself, so the manager never
//! carves chunks the disk does not have. Its label ([`crate::label`]) says
//! whose disk it is. A disk that cannot be opened or read is not an error
//! of the agent: [`inspect`] reports why, the manager fails that disk, and
//! the agent serves the others.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::label::{self, Decoded};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    pub path: PathBuf,
    pub class: Option<String>,
}

impl std::str::FromStr for DiskArg {
    type Err = String;

    /// `PATH` or `PATH,class=CLASS`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, rest) = match s.split_once(',') {
            Some((p, r)) => (p, Some(r)),
            None => (s, None),
        };
        if !path.starts_with('/') {
            return Err(format!("disk '{path}' must be an absolute path"));
        }
        let class = match rest {
            None => None,
            Some(r) => match r.strip_prefix("class=") {
                Some(c) if !c.is_empty() => Some(c.to_string()),
                _ => return Err(format!("unknown disk option '{r}'; expected class=NAME")),
            },
        };
        Ok(DiskArg {
            path: PathBuf::from(path),
            class,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedDisk {
    pub path: PathBuf,
    pub class: Option<String>,
    pub size_bytes: u64,
    pub is_block_device: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: {reason}")]
    Unusable { path: String, reason: String },
}

/// A disk as the agent found it at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectedDisk {
    pub arg: DiskArg,
    /// `Ok` with the size and label, or why the disk cannot be used.
    pub state: Result<(ProbedDisk, Decoded), String>,
}

impl InspectedDisk {
    /// The disk, if it can be opened and its label area read.
    pub fn probed(&self) -> Option<&ProbedDisk> {
        self.state.as_ref().ok().map(|(p, _)| p)
    }
}

/// Probes a disk and reads its label; never fails, so one bad disk does
/// not stop the agent.
pub fn inspect(arg: &DiskArg) -> InspectedDisk {
    let state = probe(arg)
        .map_err(|DiskError::Unusable { reason, .. }| reason)
        .and_then(|p| {
            let file = File::open(&p.path).map_err(|e| format!("cannot open: {e}"))?;
            let found = label::read(&file).map_err(|e| format!("cannot read its label: {e}"))?;
            Ok((p, found))
        });
    InspectedDisk {
        arg: arg.clone(),
        state,
    }
}

/// Zeroes a whole disk, label included: it then joins the cluster as a new,
/// blank disk. Destroys all its data. Returns what its label said before.
pub fn reinitialize(path: &std::path::Path) -> Result<(Decoded, u64), DiskError> {
    let arg = DiskArg {
        path: path.to_path_buf(),
        class: None,
    };
    let probed = probe(&arg)?;
    let unusable = |reason: String| DiskError::Unusable {
        path: path.display().to_string(),
        reason,
    };
    // A block device is opened exclusively (held while it is zeroed): the
    // kernel refuses while it is mounted or in use by device-mapper.
    let mut options = File::options();
    options.read(true);
    if probed.is_block_device {
        options.custom_flags(libc::O_EXCL);
    }
    let file = options
        .open(path)
        .map_err(|e| unusable(format!("cannot open it exclusively (in use?): {e}")))?;
    let before = label::read(&file).map_err(|e| unusable(format!("cannot read: {e}")))?;
    crate::wipe::zero_range(path, 0, probed.size_bytes)
        .map_err(|e| unusable(format!("cannot zero it: {e}")))?;
    match label::read(&file).map_err(|e| unusable(format!("cannot read: {e}")))? {
        Decoded::Blank => Ok((before, probed.size_bytes)),
        other => Err(unusable(format!(
            "its header does not read back as zeros after zeroing ({other:?})"
        ))),
    }
}

/// Opens a disk read-write (as the NBD server will) and reads its size.
pub fn probe(arg: &DiskArg) -> Result<ProbedDisk, DiskError> {
    let unusable = |reason: String| DiskError::Unusable {
        path: arg.path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(&arg.path).map_err(|e| unusable(format!("cannot stat: {e}")))?;
    let kind = meta.file_type();
    let is_block_device = kind.is_block_device();
    if !is_block_device && !kind.is_file() {
        return Err(unusable(
            "is neither a block device nor a regular file".into(),
        ));
    }
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(&arg.path)
        .map_err(|e| unusable(format!("cannot open read-write: {e}")))?;
    // Seeking to the end gives the size of block devices and files alike.
    let size_bytes = file
        .seek(SeekFrom::End(0))
        .map_err(|e| unusable(format!("cannot read size: {e}")))?;
    if size_bytes == 0 {
        return Err(unusable("is empty".into()));
    }
    Ok(ProbedDisk {
        path: arg.path.clone(),
        class: arg.class.clone(),
        size_bytes,
        is_block_device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_disk_arguments() {
        assert_eq!(
            "/dev/sdb,class=ssd".parse::<DiskArg>(),
            Ok(DiskArg {
                path: "/dev/sdb".into(),
                class: Some("ssd".into())
            })
        );
        assert!("dev/sdb".parse::<DiskArg>().is_err());
        assert!("/dev/sdb,speed=fast".parse::<DiskArg>().is_err());
        assert!("/dev/sdb,class=".parse::<DiskArg>().is_err());
    }

    #[test]
    fn inspect_reports_what_it_found_and_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let arg = |name: &str| DiskArg {
            path: dir.path().join(name),
            class: None,
        };
        let blank = arg("blank.img");
        std::fs::File::create(&blank.path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let d = inspect(&blank);
        assert_eq!(d.state.as_ref().unwrap().1, Decoded::Blank);
        assert_eq!(d.probed().unwrap().size_bytes, 8 << 20);
        // Foreign data in the header (an MBR's boot signature).
        let foreign = arg("mbr.img");
        let mut header = vec![0u8; 8 << 20];
        header[510] = 0x55;
        header[511] = 0xaa;
        std::fs::write(&foreign.path, &header).unwrap();
        assert!(matches!(
            inspect(&foreign).state,
            Ok((_, Decoded::Unusable(ref why))) if why.contains("not a VastSky label")
        ));
        let missing = inspect(&arg("missing.img"));
        assert!(missing.probed().is_none());
        assert!(missing.state.unwrap_err().contains("cannot stat"));
        // Reinitializing zeroes the whole disk and says what it held.
        let (before, size) = reinitialize(&foreign.path).unwrap();
        assert!(matches!(before, Decoded::Unusable(_)));
        assert_eq!(size, 8 << 20);
        assert_eq!(inspect(&foreign).state.unwrap().1, Decoded::Blank);
        assert!(
            std::fs::read(&foreign.path)
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn probes_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk.img");
        std::fs::File::create(&f)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let d = probe(&DiskArg {
            path: f,
            class: None,
        })
        .unwrap();
        assert_eq!((d.size_bytes, d.is_block_device), (64 << 20, false));
        assert!(
            probe(&DiskArg {
                path: dir.path().to_path_buf(),
                class: None
            })
            .is_err()
        );
        assert!(
            probe(&DiskArg {
                path: dir.path().join("missing"),
                class: None
            })
            .is_err()
        );
        let empty = dir.path().join("empty");
        std::fs::File::create(&empty).unwrap();
        assert!(
            probe(&DiskArg {
                path: empty,
                class: None
            })
            .is_err()
        );
    }
}
