//! The read-model role (`kartflow-worker read-model`): a broadcast read replica that holds the
//! whole product view in memory and serves it over REST and WebSocket.
//!
//! Pure core, unit- and property-tested without Kafka: [`record`] (decoding), [`view`] (the
//! view), [`query`] (filters, sorting, paging), [`render`] (JSON documents), [`conflate`] (a
//! WebSocket client's queue), [`offsets`] (positions and the read-your-writes header).
//! Thin I/O around it: [`consume`] (one broadcast reader per topic), [`http`] (REST),
//! [`ws`] (WebSocket), [`page`] (the inventory page at `/`), [`runtime`] (the process), with [`shared`] state and [`metrics`].
//! See `docs/read-model.md` for the design and the operations guide.

pub mod conflate;
pub mod consume;
pub mod http;
pub mod id;
pub mod metrics;
pub mod offsets;
pub mod page;
pub mod query;
pub mod record;
pub mod render;
pub mod runtime;
pub mod shared;
pub mod view;
pub mod ws;

#[cfg(test)]
mod properties;
