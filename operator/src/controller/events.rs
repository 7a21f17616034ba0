//! Events on our objects. Publishing is best effort: a failure is logged, never fatal, so an
//! apiserver refusing Events cannot stall a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::Context;
use crate::slot_guard::report::Notice;

/// The apiserver refuses notes longer than 1 KiB.
const MAX_NOTE_BYTES: usize = 1024;

impl Context {
    /// Publishes an Event on `obj`; a failure to do so is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reference: ObjectReference = obj.object_ref(&());
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note, MAX_NOTE_BYTES)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "cannot publish Event");
        }
    }

    /// Publishes an Event the slot guard worded.
    pub async fn notice<K: Resource<DynamicType = ()>>(&self, obj: &K, n: Notice) {
        self.event(obj, n.warning, n.reason, n.action, n.note).await;
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(s, 1023);
        assert!(t.len() <= 1023);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
