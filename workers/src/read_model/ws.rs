//! WebSocket clients: subscribe (all products, some ids, some categories), receive a snapshot,
//! then the changes.
//!
//! Each client follows the view's change log with its own cursor and keeps a [`Pending`] queue
//! of product ids: a product that changes again while waiting is sent once, in its latest state
//! (conflation), so a slow client never has more than `queueCapacity` products queued and never a
//! backlog of messages. When its queue is full the client stops taking from the change log; once
//! the log (bounded, shared by all clients) no longer reaches back to its cursor, or one frame
//! is not taken within `sendTimeout`, the client is closed. Close codes (docs/read-model.md):
//!
//! | code | when |
//! | --- | --- |
//! | 1001 going away | the replica is shutting down (after it left the Service) |
//! | 1003 unsupported data | a client message that is not a subscribe request |
//! | 4000 ping timeout | no pong (or any message) for two ping intervals |
//! | 4008 too slow | a frame not taken within `sendTimeout`, or so far behind that the change log no longer covers it |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tracing::debug;

use super::conflate::{Pending, Push, Subscription};
use super::http::{Api, problem};
use super::id::ProductId;
use super::render;
use super::shared::Shared;
use crate::process::Shutdown;

pub const GOING_AWAY: u16 = 1001;
pub const UNSUPPORTED: u16 = 1003;
pub const PING_TIMEOUT: u16 = 4000;
pub const TOO_SLOW: u16 = 4008;

/// Products per snapshot or update frame: one frame per product would cost a syscall per product
/// per client; one per batch keeps 1,000 clients affordable.
const FRAME_PRODUCTS: usize = 256;

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub path: String,
    /// For the refusal message; the limit itself is `Api::connections`.
    pub max_connections: usize,
    pub queue_capacity: usize,
    pub ping_interval: Duration,
    pub send_timeout: Duration,
    /// Requested when clients must be closed with 1001 (shutdown, after the replica left the
    /// Service).
    pub closing: Shutdown,
}

/// A subscribe request: `{"subscribe": {"products": [..], "categories": [..]}}`; both empty
/// (or the object empty) means everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    subscribe: SubscribeRequest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SubscribeRequest {
    products: Vec<String>,
    categories: Vec<String>,
}

/// `GET <path>?products=a,b&categories=x`: upgrades within the connection limit.
pub async fn upgrade(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(cfg) = api.ws.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "WebSocket disabled",
            "websocket.enabled is false",
        );
    };
    let Ok(permit) = api.connections.clone().try_acquire_owned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            "WebSocket connection limit reached",
            format!(
                "this replica serves at most {} WebSocket clients (websocket.maxConnections); retry or scale out",
                cfg.max_connections
            ),
        );
    };
    let list = |k: &str| params.get(k).cloned().into_iter().collect::<Vec<_>>();
    let sub = Subscription::from_lists(&list("products"), &list("categories"));
    let shared = api.shared.clone();
    // Clients only send subscribe requests: a small frame limit and read buffer bound what one
    // can make the replica hold. Frames out are large (up to 256 products), so they go to the
    // socket at once instead of through a 128 KiB write buffer per client.
    ws.max_message_size(64 * 1024)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            shared.metrics.ws_clients.inc();
            let reason = Client::new(shared.clone(), cfg, sub).serve(socket).await;
            shared.metrics.ws_clients.dec();
            debug!(?reason, "WebSocket client done");
        })
}

/// Why a client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    Closed(u16),
}

struct Client {
    shared: Arc<Shared>,
    cfg: Arc<WsConfig>,
    sub: Subscription,
    pending: Pending,
    cursor: u64,
}

impl Client {
    fn new(shared: Arc<Shared>, cfg: Arc<WsConfig>, sub: Subscription) -> Self {
        let pending = Pending::new(cfg.queue_capacity);
        Self {
            shared,
            cfg,
            sub,
            pending,
            cursor: 0,
        }
    }

    async fn serve(mut self, mut socket: WebSocket) -> End {
        let end = self
            .run(&mut socket)
            .await
            .err()
            .unwrap_or(End::ClientClosed);
        if let End::Closed(code) = end {
            let reason = match code {
                GOING_AWAY => "going_away",
                TOO_SLOW => "too_slow",
                PING_TIMEOUT => "ping_timeout",
                _ => "unsupported",
            };
            self.shared
                .metrics
                .ws_closed
                .with_label_values(&[reason])
                .inc();
            if code == TOO_SLOW {
                self.shared
                    .metrics
                    .ws_dropped
                    .inc_by(self.pending.len() as u64);
            }
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            // A client too slow to take data may not take the close frame either: bounded.
            let _ = tokio::time::timeout(
                self.cfg.send_timeout,
                socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
        end
    }

    async fn run(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let mut changed = self.shared.subscribe();
        self.snapshot(socket).await?;
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_seen = Instant::now();
        let closing = self.cfg.closing.clone();
        loop {
            if closing.is_requested() {
                return Err(End::Closed(GOING_AWAY));
            }
            changed.borrow_and_update();
            self.drain_changes()?;
            if !self.pending.is_empty() {
                let frame = self.update_frame();
                self.send(socket, frame).await?;
                continue;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = closing.requested() => return Err(End::Closed(GOING_AWAY)),
                _ = ping.tick() => {
                    if last_seen.elapsed() > self.cfg.ping_interval * 2 {
                        return Err(End::Closed(PING_TIMEOUT));
                    }
                    self.send_raw(socket, Message::Ping(Default::default())).await?;
                }
                msg = socket.recv() => {
                    last_seen = Instant::now();
                    match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(End::ClientClosed),
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<ClientMessage>(text.as_str()) {
                                Ok(m) => {
                                    self.sub = Subscription::from_lists(
                                        &m.subscribe.products,
                                        &m.subscribe.categories,
                                    );
                                    self.pending = Pending::new(self.cfg.queue_capacity);
                                    self.snapshot(socket).await?;
                                }
                                Err(_) => return Err(End::Closed(UNSUPPORTED)),
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// Moves the changes since the cursor into the pending queue, as far as it has room: the
    /// rest stays in the view's change log (shared by all clients) until the client takes some
    /// products. A client whose cursor falls out of that log cannot be told what it missed.
    fn drain_changes(&mut self) -> Result<(), End> {
        let view = self.shared.read();
        let Ok(changes) = view.changes_since(self.cursor) else {
            return Err(End::Closed(TOO_SLOW));
        };
        let mut conflated = 0u64;
        let mut cursor = self.cursor;
        for (seq, id) in changes {
            let doc = view.entries().get(id).and_then(|e| e.doc.as_ref());
            if self.sub.matches(id, doc) {
                match self.pending.push(id) {
                    Push::Queued => {}
                    Push::Conflated => conflated += 1,
                    Push::Overflow => break,
                }
            }
            cursor = seq;
        }
        drop(view);
        self.cursor = cursor;
        self.shared.metrics.ws_conflated.inc_by(conflated);
        Ok(())
    }

    /// Up to [`FRAME_PRODUCTS`] waiting products in their current state.
    fn update_frame(&mut self) -> String {
        let view = self.shared.read();
        let mut products = String::new();
        let mut deleted = String::new();
        let mut n = 0u64;
        for _ in 0..FRAME_PRODUCTS {
            let Some(id) = self.pending.pop() else { break };
            match view.get(&id) {
                Some((_, e)) => {
                    if let Some(d) = &e.doc {
                        if !products.is_empty() {
                            products.push(',');
                        }
                        render::write_product(&mut products, d.raw(), e.last_update);
                        n += 1;
                    }
                }
                None => {
                    if !deleted.is_empty() {
                        deleted.push(',');
                    }
                    deleted.push_str(&serde_json::to_string(&*id).unwrap_or_default());
                }
            }
        }
        drop(view);
        self.shared.metrics.ws_products_sent.inc_by(n);
        format!("{{\"type\":\"update\",\"products\":[{products}],\"deleted\":[{deleted}]}}")
    }

    /// The products the subscription covers, in frames; changes during it are replayed after.
    async fn snapshot(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        self.cursor = self.shared.read().seq();
        let mut after: Option<ProductId> = None;
        loop {
            let (frame, last, n) = {
                let view = self.shared.read();
                let lower = match &after {
                    Some(id) => std::ops::Bound::Excluded(&**id),
                    None => std::ops::Bound::Unbounded,
                };
                let mut body = String::new();
                let mut last = None;
                let mut n = 0usize;
                for (id, e) in view
                    .entries()
                    .range::<str, _>((lower, std::ops::Bound::Unbounded))
                {
                    last = Some(id.clone());
                    let Some(d) = &e.doc else { continue };
                    if !self.sub.matches(id, Some(d)) {
                        continue;
                    }
                    if n > 0 {
                        body.push(',');
                    }
                    render::write_product(&mut body, d.raw(), e.last_update);
                    n += 1;
                    if n == FRAME_PRODUCTS {
                        break;
                    }
                }
                let done = n < FRAME_PRODUCTS;
                (
                    format!("{{\"type\":\"snapshot\",\"products\":[{body}],\"done\":{done}}}"),
                    last,
                    n,
                )
            };
            self.shared.metrics.ws_products_sent.inc_by(n as u64);
            self.send(socket, frame).await?;
            if n < FRAME_PRODUCTS {
                return Ok(());
            }
            after = last;
        }
    }

    async fn send(&self, socket: &mut WebSocket, text: String) -> Result<(), End> {
        self.send_raw(socket, Message::Text(Utf8Bytes::from(text)))
            .await?;
        self.shared.metrics.ws_sent.inc();
        Ok(())
    }

    async fn send_raw(&self, socket: &mut WebSocket, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(self.cfg.send_timeout, socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientClosed),
            Err(_) => Err(End::Closed(TOO_SLOW)),
        }
    }
}
