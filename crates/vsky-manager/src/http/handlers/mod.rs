//! One module per resource. Handlers only translate: parse the request,
//! call one model operation through the service, convert the answer.

pub mod agent;
pub mod cluster;
pub mod disks;
pub mod events;
pub mod groups;
pub mod pool;
pub mod rebuilds;
pub mod servers;
pub mod volumes;
