//! kartflow's operator: custom resource types, the pure builders of their children, the
//! replication-slot guard and the controllers that tie them to the cluster.

#![forbid(unsafe_code)]

pub mod crd;
pub mod units;
