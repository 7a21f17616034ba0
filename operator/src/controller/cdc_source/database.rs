//! The database side of a `CdcSource`: connecting with the Secret's credentials, and creating
//! the publication and slot it asks for, recording at once what kartflow created.

use std::sync::Arc;

use crate::controller::{Context, Error};
use crate::crd::{CdcSource, CdcSourceStatus};
use crate::slot_guard::postgres::{self, Db};
use crate::slot_guard::report;

use super::{secret, stored};

/// The source's connection: the open one when its settings (and the Secret's values) are
/// unchanged and it is still alive, else a new one, kept for the next check.
pub(super) async fn connect(cdc: &CdcSource, ctx: &Context) -> Result<Arc<Db>, Error> {
    let pg = &cdc.spec.postgres;
    let credentials = secret::credentials(cdc, ctx).await?;
    let ca = match &pg.ca_cert {
        Some(r) => Some(secret::ca_certificate(cdc, ctx, r).await?),
        None => None,
    };
    let key = super::guard::key(cdc);
    // One name per source, so pg_stat_activity tells whose connection it is.
    let application_name = format!("kartflow-slot-guard {key}");
    let target = postgres::Target {
        host: &pg.host,
        port: u16::try_from(pg.port).unwrap_or(5432),
        database: &pg.database,
        user: &credentials.username,
        password: &credentials.password,
        ssl_mode: pg.ssl_mode,
        ca_pem: ca.as_deref(),
        application_name: &application_name,
    };
    let fingerprint = fingerprint(&target);
    let mut open = ctx.connections.lock().await;
    if let Some((f, db)) = open.get(&key)
        && *f == fingerprint
        && !db.is_closed()
    {
        return Ok(db.clone());
    }
    let db = Arc::new(postgres::connect(&target).await?);
    open.insert(key, (fingerprint, db.clone()));
    Ok(db)
}

/// Forgets the source's connection (deleted, or its connection failed).
pub(super) async fn disconnect(cdc: &CdcSource, ctx: &Context) {
    ctx.connections.lock().await.remove(&super::guard::key(cdc));
}

/// Everything a connection was opened with; a change opens a new one.
fn fingerprint(t: &postgres::Target<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (t.host, t.port, t.database, t.user, t.password, t.ca_pem).hash(&mut h);
    format!("{:?}", t.ssl_mode).hash(&mut h);
    h.finish()
}

/// What kartflow created in the database, and so may drop.
pub(super) struct Ownership {
    pub slot_owned: bool,
    pub publication_created: bool,
}

/// Creates the publication and the slot the spec asks for, unless they exist. After a guard
/// drop the slot stays gone until the user acknowledges the gap (`dropped_awaiting_ack`).
pub(super) async fn ensure_objects(
    cdc: &CdcSource,
    ctx: &Context,
    db: &Db,
    previous: &CdcSourceStatus,
    dropped_awaiting_ack: bool,
) -> Result<Ownership, Error> {
    let spec = &cdc.spec;
    let mut publication_created = previous.publication_created.unwrap_or(false);
    if spec.publication.create
        && postgres::ensure_publication(db, &spec.publication.name, &spec.publication.tables)
            .await?
    {
        publication_created = true;
        stored::record(cdc, ctx, serde_json::json!({"publicationCreated": true})).await?;
        ctx.notice(cdc, report::publication_created(&spec.publication.name))
            .await;
    }

    let mut slot_owned = previous.slot_owned.unwrap_or(false);
    // Silently recreating a dropped slot would hide the changes lost since the drop.
    if spec.slot.create
        && !dropped_awaiting_ack
        && postgres::ensure_slot(db, &spec.slot.name).await?
    {
        slot_owned = true;
        stored::record(cdc, ctx, serde_json::json!({"slotOwned": true})).await?;
        ctx.notice(cdc, report::slot_created(&spec.slot.name)).await;
    }
    Ok(Ownership {
        slot_owned,
        publication_created,
    })
}
