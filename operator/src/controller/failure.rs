//! A failed reconcile in status: `Reconciled=False` with the error's reason, the phase `Failed`
//! (permanent) or `Degraded` (transient), and a Warning Event when the spec is at fault.

use kube::Resource;

use super::status::{self, Cond, RECONCILED};
use super::{Context, Error, apply};
use crate::crd::common::CommonStatus;
use crate::crd::{CdcSourceStatus, InventoryPipelineStatus, ReadModelStatus};

/// Status types that carry the common phase/generation/conditions block.
pub(crate) trait HasCommonStatus: serde::Serialize + Clone + Default {
    fn common_mut(&mut self) -> &mut CommonStatus;
}

macro_rules! has_common_status {
    ($($t:ty),*) => {$(
        impl HasCommonStatus for $t {
            fn common_mut(&mut self) -> &mut CommonStatus {
                &mut self.common
            }
        }
    )*};
}
has_common_status!(InventoryPipelineStatus, CdcSourceStatus, ReadModelStatus);

/// Records a failed reconcile in status (and as a Warning Event when the spec is at fault) and
/// returns the error for the retry policy. Fields other than phase and conditions keep what the
/// last good reconcile wrote.
pub(crate) async fn report_failure<K, S>(obj: &K, ctx: &Context, mut status: S, err: Error) -> Error
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    S: HasCommonStatus,
{
    if err.is_permanent() {
        ctx.event(obj, true, err.reason(), "Reconcile", err.to_string())
            .await;
    }
    let generation = obj.meta().generation;
    let common = status.common_mut();
    let conditions = status::merge_conditions(
        &common.conditions,
        &[Cond::new(RECONCILED, false, err.reason(), err.to_string())],
        generation,
        &status::now(),
    );
    common.phase = Some(
        if err.is_permanent() {
            "Failed"
        } else {
            "Degraded"
        }
        .into(),
    );
    common.observed_generation = generation;
    common.conditions = conditions;
    if let Err(e) = apply::apply_status(&ctx.client, obj, &status).await {
        tracing::warn!(error = %e, "cannot write status");
    }
    err
}
