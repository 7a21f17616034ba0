//! Test support shared by kartflow's integration and end-to-end tests.
//!
//! Tests that need the real Kafka or PostgreSQL get their connection from here. When a component
//! is not reachable the helpers fail the test with a message that says what to run; they never
//! let a test pass without the component it claims to exercise.

#[cfg(feature = "browser")]
pub mod browser;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod http;
pub mod stack;

pub use stack::{Settings, kafka_bootstrap, postgres, settings, unique_name};
