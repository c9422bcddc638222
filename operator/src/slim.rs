//! What the caches keep of each object: only what a reconcile reads or compares. Everything
//! else is dropped as each object arrives from its watch, before it is stored, so the
//! operator's memory follows what it needs per session, not what the API server sends.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodStatus, PodTemplateSpec};
use kube::api::ObjectMeta;
use whatsapp_crds::WhatsAppSession;

/// A session: its spec, and of its status what the operator reads (its conditions, the
/// observed generation, the state it counts). The session pod's QR picture, account and
/// outbox figures are not the operator's business.
pub fn session(session: &mut WhatsAppSession) {
    if let Some(status) = session.status.as_mut() {
        status.qr = None;
        status.pairing_code = None;
        status.me = None;
        status.outbox = None;
        status.message = None;
        status.endpoint = None;
    }
}

/// A pod: its name, labels and deletion mark, its phase and conditions (see
/// [`crate::status::pod_ready`]). Its spec, which is most of it, is never read.
pub fn pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    pod.spec = None;
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions,
        ..PodStatus::default()
    });
}

/// A volume claim: its labels (its tenant) and requested size.
pub fn claim(claim: &mut PersistentVolumeClaim) {
    slim_meta(&mut claim.metadata);
    claim.status = None;
    if let Some(spec) = claim.spec.as_mut() {
        spec.volume_name = None;
        spec.data_source = None;
        spec.data_source_ref = None;
    }
}

/// Where the cache keeps a StatefulSet's pod template as JSON text: an annotation key that
/// exists only in the operator's cache, never in the cluster.
const PACKED_TEMPLATE: &str = "whatsapp.io/cached-pod-template";

/// A StatefulSet: everything the operator applies (compared field by field), and of its
/// status the revisions and counts a rollout reads, not its conditions. Its pod template is
/// packed as JSON text: typed, it is most of the object and mostly empty fields (k8s-openapi
/// holds every optional field inline: a `Volume` is 3.2 KiB, a `Container` 2.1 KiB, this
/// template about 14 KiB), as text about 3 KiB. Read it back with [`unpacked`].
pub fn statefulset(sts: &mut StatefulSet) {
    if let Some(status) = sts.status.as_mut() {
        status.conditions = None;
    }
    // A template that does not serialize (none does) stays typed: unpacking leaves it as it is.
    if let Some(spec) = sts.spec.as_mut()
        && let Ok(text) = serde_json::to_string(&spec.template)
    {
        spec.template = PodTemplateSpec::default();
        sts.metadata.annotations.get_or_insert_default().insert(PACKED_TEMPLATE.into(), text);
    }
}

/// A StatefulSet from the cache as the API server holds it: its pod template unpacked.
pub fn unpacked(packed: &StatefulSet) -> serde_json::Result<StatefulSet> {
    let mut sts = packed.clone();
    let text = sts.metadata.annotations.as_mut().and_then(|a| a.remove(PACKED_TEMPLATE));
    if sts.metadata.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        sts.metadata.annotations = None;
    }
    if let (Some(spec), Some(text)) = (sts.spec.as_mut(), text) {
        spec.template = serde_json::from_str(&text)?;
    }
    Ok(sts)
}

/// A kind kept whole: small objects the reconcile compares in full.
pub fn whole<K>(_: &mut K) {}

/// Metadata of an object the operator reads but never applies: no annotations or owners.
fn slim_meta(meta: &mut ObjectMeta) {
    meta.annotations = None;
    meta.owner_references = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_what_its_readiness_needs() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "s-0", "namespace": "n", "labels": {"a": "b"}, "annotations": {"x": "y"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        pod(&mut p);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "s-0", "namespace": "n", "labels": {"a": "b"},
                    "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })
        );
    }

    #[test]
    fn a_statefulset_keeps_its_template_as_text_and_gives_it_back_whole() {
        let live: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "n", "generation": 2},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s", "replicas": 1,
                "template": {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}},
                    "spec": {"containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"memory": "1Gi"}}}],
                        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}]}}},
            "status": {"replicas": 1, "currentRevision": "s-1", "updateRevision": "s-2",
                "conditions": [{"type": "X", "status": "True"}]}
        }))
        .unwrap();
        let mut cached = live.clone();
        statefulset(&mut cached);
        assert_eq!(cached.spec.as_ref().unwrap().template, PodTemplateSpec::default());
        let mut expected = live;
        expected.status.as_mut().unwrap().conditions = None;
        assert_eq!(unpacked(&cached).unwrap(), expected);
    }

    #[test]
    fn a_claim_keeps_its_tenant_and_size() {
        let mut c: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"t": "1"}, "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv-1"},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        claim(&mut c);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "p", "labels": {"t": "1"}},
                "spec": {"resources": {"requests": {"storage": "1Gi"}}}})
        );
    }
}
