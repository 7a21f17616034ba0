//! kartflow's operator: custom resource types, the pure builders of their children, the
//! replication-slot guard, and the controllers that tie them to the cluster.

#![forbid(unsafe_code)]

pub mod children;
pub mod controller;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod slot_guard;
pub mod units;
