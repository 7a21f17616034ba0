//! Deletion of a `CdcSource`: stop the reader, drop the slot kartflow created and the
//! publication it created.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::children;
use crate::controller::{Context, Error, apply};
use crate::crd::CdcSource;
use crate::slot_guard::{postgres, report};

use super::{database, guard, stored};

/// A database that cannot be reached keeps the object Terminating and is retried;
/// `spec.slot.dropOnDelete: false` lets it go without touching the database.
pub(super) async fn cleanup(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let slot = &cdc.spec.slot.name;
    let status = stored::current_status(&cdc, &ctx).await?;
    guard::forget(&cdc, &ctx);
    database::disconnect(&cdc, &ctx).await;
    if !cdc.spec.slot.drop_on_delete {
        tracing::info!(slot = %slot, "dropOnDelete is false: slot left in place");
        return Ok(Action::await_change());
    }
    // Only what kartflow created: guardUnowned lets the guard drop a runaway slot, never makes
    // deleting a CdcSource take someone else's slot with it.
    let owned = status.slot_owned.unwrap_or(false);
    let publication = status.publication_created.unwrap_or(false);
    if !owned {
        ctx.notice(cdc.as_ref(), report::slot_kept(slot)).await;
    }
    if !owned && !publication {
        // Nothing of ours in the database: no connection needed, so a CdcSource whose database
        // or Secret never existed can still be deleted.
        return Ok(Action::await_change());
    }
    // The reader would reconnect to the slot while we drop it; stop it first.
    if let Some(reader) = children::cdc_source(&cdc, false)
        .ok()
        .and_then(|c| c.deployment.metadata.name)
    {
        apply::delete_if_present::<Deployment>(&ctx.client, &ns, &reader).await?;
    }
    let db = database::connect(&cdc, &ctx)
        .await
        .map_err(|e| Error::CleanupUnreachable {
            slot: slot.clone(),
            source: Box::new(e),
        })?;
    if owned {
        if let Some(lease) = &ctx.leadership {
            lease.confirm().await.map_err(Error::NotLeading)?;
        }
        let outcome = postgres::drop_slot(&db, slot, None).await?;
        ctx.notice(
            cdc.as_ref(),
            report::dropped_on_delete(slot, outcome.retained_bytes),
        )
        .await;
    }
    if publication {
        postgres::drop_publication(&db, &cdc.spec.publication.name).await?;
    }
    database::disconnect(&cdc, &ctx).await;
    Ok(Action::await_change())
}
