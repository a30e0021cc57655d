//! Volume URIs: `vsky://<group>/<volume>`, as the volume plugin's
//! Volume.stat answers them. Both parts are manager names, checked here so
//! that no URI can address anything but a volume (or reach a path).

use smapi::{SmapiError, SmapiResult};

pub const SCHEME: &str = "vsky";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeUri {
    pub group: String,
    pub volume: String,
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl VolumeUri {
    pub fn parse(uri: &str) -> SmapiResult<VolumeUri> {
        let bad = |why: &str| {
            SmapiError::invalid_argument(format!(
                "uri '{uri}' {why}; expected {SCHEME}://<group>/<volume> as Volume.stat answers it"
            ))
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| bad("has not the vsky:// scheme"))?;
        let (group, volume) = rest
            .split_once('/')
            .ok_or_else(|| bad("has no volume part"))?;
        if !is_valid_name(group) || !is_valid_name(volume) {
            return Err(bad("names an invalid group or volume"));
        }
        Ok(VolumeUri {
            group: group.to_string(),
            volume: volume.to_string(),
        })
    }

    /// The device the agent assembles: deterministic, so attach can answer
    /// it before activate builds it.
    pub fn device(&self) -> String {
        format!("/dev/mapper/vsky-{}", self.volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_uris_parse_and_name_the_device() {
        let u = VolumeUri::parse("vsky://sr-1/0f1c2d3e-0000-4000-8000-00000000000a").unwrap();
        assert_eq!(u.group, "sr-1");
        assert_eq!(
            u.device(),
            "/dev/mapper/vsky-0f1c2d3e-0000-4000-8000-00000000000a"
        );
    }

    #[test]
    fn bad_uris_are_refused() {
        for bad in [
            "",
            "vsky://",
            "vsky://sr",
            "vsky://sr/",
            "vsky://sr/a/b",
            "vsky://sr/../x",
            "tapdisk://sr/v",
            "vsky:/sr/v",
            "vsky://sr/v?x=1",
        ] {
            assert!(VolumeUri::parse(bad).is_err(), "{bad}");
        }
    }
}
