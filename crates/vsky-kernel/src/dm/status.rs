//! dm-raid's status line, parsed: each leg's health, sync progress, the
//! array's current action and the mismatch count of the last check.

use std::fmt;
use std::str::FromStr;

use super::Sectors;

/// Health of one raid leg, from the status health characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegHealth {
    /// `A`: alive and in sync.
    InSync,
    /// `a`: alive, being resynced or recovered.
    Syncing,
    /// `D`: failed; the mirror runs degraded without it.
    Dead,
    /// `-`: the slot was given as `- -`.
    Missing,
}

impl LegHealth {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'A' => LegHealth::InSync,
            'a' => LegHealth::Syncing,
            'D' => LegHealth::Dead,
            '-' => LegHealth::Missing,
            _ => return None,
        })
    }
    pub fn as_char(self) -> char {
        match self {
            LegHealth::InSync => 'A',
            LegHealth::Syncing => 'a',
            LegHealth::Dead => 'D',
            LegHealth::Missing => '-',
        }
    }
}

/// What md is doing with the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    Idle,
    Frozen,
    Resync,
    Recover,
    Check,
    Repair,
    Reshape,
}

impl FromStr for SyncAction {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        Ok(match s {
            "idle" => SyncAction::Idle,
            "frozen" => SyncAction::Frozen,
            "resync" => SyncAction::Resync,
            "recover" => SyncAction::Recover,
            "check" => SyncAction::Check,
            "repair" => SyncAction::Repair,
            "reshape" => SyncAction::Reshape,
            _ => return Err(()),
        })
    }
}

/// Parsed `raid1 <#devs> <health> <synced>/<total> <action> <mismatch>
/// <data_offset> [<journal>]` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidStatus {
    pub legs: Vec<LegHealth>,
    pub synced: Sectors,
    pub total: Sectors,
    pub sync_action: SyncAction,
    /// Only meaningful after a `check`.
    pub mismatch_count: u64,
}

impl RaidStatus {
    /// Every present leg is `A` and md is idle: safe to lose any one leg.
    pub fn is_in_sync(&self) -> bool {
        self.sync_action == SyncAction::Idle && self.legs.iter().all(|h| *h == LegHealth::InSync)
    }
    /// Slots whose leg failed.
    pub fn dead_legs(&self) -> Vec<usize> {
        self.legs
            .iter()
            .enumerate()
            .filter(|(_, h)| **h == LegHealth::Dead)
            .map(|(i, _)| i)
            .collect()
    }
    /// Resync/recovery progress in 0.0..=1.0.
    pub fn sync_ratio(&self) -> f64 {
        if *self.total == 0 {
            1.0
        } else {
            *self.synced as f64 / *self.total as f64
        }
    }
    pub fn health_string(&self) -> String {
        self.legs.iter().map(|h| h.as_char()).collect()
    }
}

impl fmt::Display for RaidStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} {:?} mismatch={}",
            self.health_string(),
            *self.synced,
            *self.total,
            self.sync_action,
            self.mismatch_count
        )
    }
}

impl FromStr for RaidStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        if t.len() < 6 {
            return Err(format!("{} fields, expected at least 6", t.len()));
        }
        if t[0] != "raid1" {
            return Err(format!("raid type {:?}, expected raid1", t[0]));
        }
        let ndevs: usize = t[1].parse().map_err(|_| "bad #devs".to_string())?;
        let legs = t[2]
            .chars()
            .map(|c| LegHealth::from_char(c).ok_or_else(|| format!("unknown health char {c:?}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if legs.len() != ndevs {
            return Err(format!("{} health chars for {ndevs} devices", legs.len()));
        }
        let (a, b) = t[3].split_once('/').ok_or("sync ratio without '/'")?;
        let synced = a.parse::<u64>().map_err(|_| "bad synced count")?;
        let total = b.parse::<u64>().map_err(|_| "bad total count")?;
        let sync_action = t[4]
            .parse()
            .map_err(|_| format!("unknown sync action {:?}", t[4]))?;
        let mismatch_count = t[5].parse().map_err(|_| "bad mismatch count")?;
        Ok(RaidStatus {
            legs,
            synced: Sectors(synced),
            total: Sectors(total),
            sync_action,
            mismatch_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status lines from dm-raid parse into health, progress and action.
    #[test]
    fn raid_status_parses() {
        let s: RaidStatus = "raid1 2 AA 131072/131072 idle 0 0 -".parse().unwrap();
        assert!(s.is_in_sync());
        assert_eq!(s.sync_ratio(), 1.0);
        let d: RaidStatus = "raid1 2 AD 131072/131072 idle 0 0 -".parse().unwrap();
        assert_eq!(d.legs, vec![LegHealth::InSync, LegHealth::Dead]);
        assert_eq!(d.dead_legs(), vec![1]);
        assert!(!d.is_in_sync());
        let r: RaidStatus = "raid1 3 Aa- 65536/131072 recover 0 0 -".parse().unwrap();
        assert_eq!(r.sync_action, SyncAction::Recover);
        assert_eq!(r.sync_ratio(), 0.5);
        assert_eq!(r.health_string(), "Aa-");
        // Older kernels print no journal field.
        let o: RaidStatus = "raid1 2 aa 0/131072 resync 7 0".parse().unwrap();
        assert_eq!((o.sync_action, o.mismatch_count), (SyncAction::Resync, 7));
        for bad in [
            "",
            "raid1 2 AA",
            "raid1 2 AX 1/1 idle 0 0 -",
            "raid1 3 AA 1/1 idle 0 0 -",
            "raid1 2 AA 1-1 idle 0 0 -",
            "raid1 2 AA 1/1 dancing 0 0 -",
            "raid5 2 AA 1/1 idle 0 0 -",
        ] {
            assert!(bad.parse::<RaidStatus>().is_err(), "{bad:?} parsed");
        }
    }
}
