//! kartflow's operator: custom resource types and (next) their controllers.

#![forbid(unsafe_code)]

pub mod crd;
