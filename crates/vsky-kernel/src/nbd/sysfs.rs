//! Discovery of connected NBD devices through sysfs: `/sys/block/nbdN/backend`
//! holds the backend identifier while a device is connected, which is how a
//! restarted agent adopts its imports.

use std::path::Path;

use devicemapper::Device;

use super::{NbdError, NbdIndex, Result};

/// Finds the connected device whose backend identifier is `id`, by reading
/// `/sys/block/nbd*/backend` (the file only exists while connected).
pub fn find_by_backend(id: &str) -> Result<Option<NbdIndex>> {
    find_by_backend_in(Path::new("/sys/block"), id)
}

/// [`find_by_backend`] over another sysfs root (tests).
pub fn find_by_backend_in(sys_block: &Path, id: &str) -> Result<Option<NbdIndex>> {
    Ok(list_backends_in(sys_block)?
        .into_iter()
        .find(|(_, b)| b == id)
        .map(|(i, _)| i))
}

/// Every connected NBD device with its backend identifier, sorted by index.
pub fn list_backends() -> Result<Vec<(NbdIndex, String)>> {
    list_backends_in(Path::new("/sys/block"))
}

/// [`list_backends`] over another sysfs root (tests).
pub fn list_backends_in(sys_block: &Path) -> Result<Vec<(NbdIndex, String)>> {
    let rd = std::fs::read_dir(sys_block).map_err(|source| NbdError::Sysfs {
        path: sys_block.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(idx) = name
            .to_str()
            .and_then(|n| n.strip_prefix("nbd"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path().join("backend");
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim_end_matches('\n');
                if !s.is_empty() {
                    out.push((NbdIndex(idx), s.to_string()));
                }
            }
            // Not connected (or a kernel without the attribute): skip.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(NbdError::Sysfs { path, source }),
        }
    }
    out.sort();
    Ok(out)
}

/// Reads `<sys_block>/nbdN/dev` ("43:32").
pub fn device_number(sys_block: &Path, index: NbdIndex) -> Result<Device> {
    let path = sys_block.join(index.to_string()).join("dev");
    let s = std::fs::read_to_string(&path).map_err(|source| NbdError::Sysfs {
        path: path.clone(),
        source,
    })?;
    s.trim()
        .parse::<Device>()
        .map_err(|e| NbdError::Malformed(format!("{}: {e}", path.display())))
}

/// The size of `<sys_block>/nbdN` in bytes (its `size` file counts
/// 512-byte sectors whatever the block size); 0 while not connected.
pub fn device_size_bytes(sys_block: &Path, index: NbdIndex) -> Result<u64> {
    let path = sys_block.join(index.to_string()).join("size");
    let s = std::fs::read_to_string(&path).map_err(|source| NbdError::Sysfs {
        path: path.clone(),
        source,
    })?;
    s.trim()
        .parse::<u64>()
        .ok()
        .and_then(|sectors| sectors.checked_mul(512))
        .ok_or_else(|| {
            NbdError::Malformed(format!("{}: {s:?} is not a sector count", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adoption reads the backend identifier from sysfs and ignores devices
    /// without one (not connected).
    #[test]
    fn find_by_backend_reads_sysfs() {
        let root = std::env::temp_dir().join(format!("vsky-nbd-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (n, backend, dev) in [
            (0, Some("srv-a/c1\n"), "43:0\n"),
            (3, Some("srv-b/c9\n"), "43:96\n"),
            (4, None, "43:128\n"),
        ] {
            let d = root.join(format!("nbd{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("dev"), dev).unwrap();
            std::fs::write(d.join("size"), format!("{}\n", n * 2048)).unwrap();
            if let Some(b) = backend {
                std::fs::write(d.join("backend"), b).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("loop0")).unwrap();
        assert_eq!(
            find_by_backend_in(&root, "srv-b/c9").unwrap(),
            Some(NbdIndex(3))
        );
        assert_eq!(find_by_backend_in(&root, "srv-x").unwrap(), None);
        assert_eq!(list_backends_in(&root).unwrap().len(), 2);
        assert_eq!(
            device_number(&root, NbdIndex(3)).unwrap(),
            Device {
                major: 43,
                minor: 96
            }
        );
        assert_eq!(device_size_bytes(&root, NbdIndex(3)).unwrap(), 3 << 20);
        assert_eq!(device_size_bytes(&root, NbdIndex(0)).unwrap(), 0);
        std::fs::write(root.join("nbd4").join("size"), "lots\n").unwrap();
        assert!(device_size_bytes(&root, NbdIndex(4)).is_err());
        assert!(device_size_bytes(&root, NbdIndex(7)).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
