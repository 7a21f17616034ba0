//! The `CdcSource`'s status as stored, read fresh and written field by field where facts must
//! not be lost (slot ownership, the last drop).

use kube::{Api, ResourceExt};

use crate::children;
use crate::controller::{Context, Error};
use crate::crd::{CdcSource, CdcSourceStatus};

/// The status as stored now. The watch cache can lag behind our own last status write, and
/// this status carries facts that must not be lost (slot ownership, the last drop).
pub(super) async fn current_status(
    cdc: &CdcSource,
    ctx: &Context,
) -> Result<CdcSourceStatus, Error> {
    let api: Api<CdcSource> =
        Api::namespaced(ctx.client.clone(), &cdc.namespace().unwrap_or_default());
    Ok(api
        .get_status(&cdc.name_any())
        .await?
        .status
        .unwrap_or_default())
}

/// Writes what kartflow created in the database into status at once: a later step of the same
/// reconcile may fail, and a forgotten ownership would leave the slot unguarded and undropped.
pub(super) async fn record(
    cdc: &CdcSource,
    ctx: &Context,
    fields: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<CdcSource> =
        Api::namespaced(ctx.client.clone(), &cdc.namespace().unwrap_or_default());
    let params = kube::api::PatchParams {
        field_manager: Some(children::FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(
        &cdc.name_any(),
        &params,
        &kube::api::Patch::Merge(serde_json::json!({ "status": fields })),
    )
    .await?;
    Ok(())
}
