//! One module per resource. Handlers only translate: parse the request,
//! call one model operation through the `Manager` (`crate::manager`),
//! convert the answer.

pub mod agent;
pub mod cluster;
pub mod disks;
pub mod events;
pub mod groups;
pub mod pool;
pub mod rebuilds;
pub mod servers;
pub mod snapshots;
pub mod volumes;

use crate::events::{NewEvent, Severity};

/// The event of an attach that took a volume over from a gone head (the
/// admin's attach and the head agent's share it).
pub(crate) fn taken_over_event(volume: &str, from: &str, to: &str) -> NewEvent {
    NewEvent::new(
        Severity::Warning,
        "volume_taken_over",
        format!(
            "volume {volume} taken over from {from} (declared failed, or silent longer than --head-grace) by {to}: its legs have new export names, so {from} can no longer write them"
        ),
    )
    .volume(volume)
    .server(from)
}
