//! The disks this agent serves: validated and sized at start-up.
//!
//! A disk is a block device or a regular file (files are for labs and
//! tests). Its size is read from the device itself, so the manager never
//! carves chunks the disk does not have.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

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
