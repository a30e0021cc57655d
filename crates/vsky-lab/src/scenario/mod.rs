//! One module per cluster scenario. Each builds its own cluster
//! (`fixture::Cluster`), proves one thing and returns its `LAB-DETAIL`
//! line; the list of scenarios and what each proves is `crate::scenarios`.

pub mod activation;
pub mod agent_restart;
pub mod attach;
pub mod backup;
pub mod backup_drain;
pub mod backup_rebuild;
pub mod backup_remote;
pub mod bench;
pub mod bench_impact;
pub mod bench_thin;
pub mod busy_detach;
pub mod demo;
pub mod disk_rebuild;
pub mod drain;
pub mod grow;
pub mod ha_rebuild;
pub mod kill_server;
pub mod migration;
pub mod nbd_backend_file;
pub mod partition;
pub mod rebuild;
pub mod return_in_time;
pub mod scrub;
pub mod thin;
pub mod thin_grow;
pub mod xapi;
