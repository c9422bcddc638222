//! What the caches keep of each object: only what a reconcile reads or compares, and compactly.
//! Everything else is dropped as each object arrives from its watch, before it is stored, so
//! the operator's memory follows what it needs per session, not what the API server sends.
//!
//! Children are kept [`Packed`]: k8s-openapi holds every optional field inline, so a typed
//! object is mostly empty fields (a `StatefulSet` is 2.6 KiB before any of its content, its
//! pod template about 14 KiB, a `Pod` 2.4 KiB, a `Service` 0.8 KiB). Packed, an object is its
//! metadata (which the controller reads to map owners and labels) and the rest as JSON text.

use std::marker::PhantomData;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodStatus};
use kube::api::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use whatsapp_crds::WhatsAppSession;

use crate::rollout::StsView;

/// An object as a cache keeps it: its metadata typed, everything else as the JSON text it
/// serializes to, given back whole by [`Packed::unpack`]; and `summary`, what is read across
/// the whole cache at once (see [`StsView`]), typed so that needs no unpacking.
#[derive(Debug)]
pub struct Packed<K, S = ()> {
    metadata: ObjectMeta,
    /// The object without its metadata, apiVersion and kind. Empty if it did not serialize
    /// (no k8s-openapi object fails to): unpacking it then fails, as a reconcile error.
    rest: Box<str>,
    pub summary: S,
    kind: PhantomData<fn() -> K>,
}

impl<K, S: Clone> Clone for Packed<K, S> {
    fn clone(&self) -> Self {
        Packed {
            metadata: self.metadata.clone(),
            rest: self.rest.clone(),
            summary: self.summary.clone(),
            kind: PhantomData,
        }
    }
}

/// What a cache can keep packed: a k8s-openapi object, which serializes.
pub trait Packable:
    k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + 'static
{
}

impl<K> Packable for K where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + 'static
{
}

impl<K: Packable, S> Packed<K, S> {
    pub fn new(mut object: K, summary: S) -> Self {
        let metadata = std::mem::take(object.metadata_mut());
        let rest = match serde_json::to_value(&object) {
            Ok(Value::Object(mut fields)) => {
                for packed_apart in ["metadata", "apiVersion", "kind"] {
                    fields.remove(packed_apart);
                }
                Value::Object(fields).to_string()
            }
            _ => String::new(),
        };
        Packed { metadata, rest: rest.into(), summary, kind: PhantomData }
    }

    /// The object as the API server sent it, less what [`crate::slim`] dropped.
    pub fn unpack(&self) -> serde_json::Result<K> {
        serde_json::from_value(self.to_value()?)
    }

    /// The same, as JSON.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        let mut object: serde_json::Map<String, Value> = serde_json::from_str(&self.rest)?;
        object.insert("apiVersion".into(), K::API_VERSION.into());
        object.insert("kind".into(), K::KIND.into());
        object.insert("metadata".into(), serde_json::to_value(&self.metadata)?);
        Ok(Value::Object(object))
    }
}

impl<K: k8s_openapi::Resource, S> k8s_openapi::Resource for Packed<K, S> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Resource, S> k8s_openapi::Metadata for Packed<K, S> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Read straight from JSON, unslimmed. Only a type bound of kube's `watches_stream`, which
/// never deserializes with it: the caches are filled through `slim`'s functions.
impl<'de, K: Packable> serde::Deserialize<'de> for Packed<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(deserializer).map(|object| Packed::new(object, ()))
    }
}

/// A session: its spec, and of its status what the operator reads (its conditions, the
/// observed generation, the state it counts). The session pod's QR picture, account and
/// outbox figures are not the operator's business. Kept typed: it is what a reconcile is of.
pub fn session(mut session: WhatsAppSession) -> WhatsAppSession {
    if let Some(status) = session.status.as_mut() {
        status.qr = None;
        status.pairing_code = None;
        status.me = None;
        status.outbox = None;
        status.message = None;
        status.endpoint = None;
    }
    session
}

/// A pod: its name, labels and deletion mark, its phase and conditions (see
/// [`crate::status::pod_ready`]). Its spec, which is most of it, is never read.
pub fn pod(mut pod: Pod) -> Packed<Pod> {
    slim_meta(&mut pod.metadata);
    pod.spec = None;
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions,
        ..PodStatus::default()
    });
    Packed::new(pod, ())
}

/// A volume claim: its labels (its tenant) and requested size.
pub fn claim(mut claim: PersistentVolumeClaim) -> Packed<PersistentVolumeClaim> {
    slim_meta(&mut claim.metadata);
    claim.status = None;
    if let Some(spec) = claim.spec.as_mut() {
        spec.volume_name = None;
        spec.data_source = None;
        spec.data_source_ref = None;
    }
    Packed::new(claim, ())
}

/// A StatefulSet: everything the operator applies (compared field by field), and of its
/// status the revisions and counts a rollout reads, not its conditions; its [`StsView`] kept
/// typed for the rollout budget, which reads every StatefulSet at once.
pub fn statefulset(mut sts: StatefulSet) -> Packed<StatefulSet, StsView> {
    if let Some(status) = sts.status.as_mut() {
        status.conditions = None;
    }
    let view = StsView::of(&sts);
    Packed::new(sts, view)
}

/// A child kept whole: a small object the reconcile compares in full.
pub fn whole<K: Packable>(object: K) -> Packed<K> {
    Packed::new(object, ())
}

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
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "s-0", "namespace": "n", "labels": {"a": "b"}, "annotations": {"x": "y"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(pod(p).unpack().unwrap()).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "s-0", "namespace": "n", "labels": {"a": "b"},
                    "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })
        );
    }

    #[test]
    fn a_statefulset_comes_back_whole_less_its_conditions_and_keeps_its_view_typed() {
        let live: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "n", "generation": 2, "labels": {"a": "b"},
                "ownerReferences": [{"apiVersion": "whatsapp.io/v1alpha1", "kind": "WhatsAppSession",
                    "name": "s", "uid": "u", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s", "replicas": 1,
                "template": {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}},
                    "spec": {"containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"memory": "1Gi"}}}],
                        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}]}}},
            "status": {"replicas": 1, "currentRevision": "s-1", "updateRevision": "s-2",
                "conditions": [{"type": "X", "status": "True"}]}
        }))
        .unwrap();
        let packed = statefulset(live.clone());
        let mut expected = live;
        expected.status.as_mut().unwrap().conditions = None;
        assert_eq!(packed.unpack().unwrap(), expected);
        assert_eq!(packed.summary, StsView::of(&expected));
        assert!(packed.summary.revisions_differ);
        assert_eq!(k8s_openapi::Metadata::metadata(&packed), &expected.metadata);
    }

    #[test]
    fn every_child_kind_comes_back_whole() {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "t", "namespace": "n", "labels": {"a": "b"}},
            "type": "Opaque", "data": {"token": "dG9rZW4="}
        }))
        .unwrap();
        assert_eq!(whole(secret.clone()).unpack().unwrap(), secret);
        let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "n"},
            "rules": [{"apiGroups": ["whatsapp.io"], "resources": ["whatsappsessions/status"],
                "resourceNames": ["s"], "verbs": ["get", "patch"]}]
        }))
        .unwrap();
        assert_eq!(whole(role.clone()).unpack().unwrap(), role);
    }

    #[test]
    fn a_claim_keeps_its_tenant_and_size() {
        let c: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"t": "1"}, "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv-1"},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(claim(c).unpack().unwrap()).unwrap(),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "p", "labels": {"t": "1"}},
                "spec": {"resources": {"requests": {"storage": "1Gi"}}}})
        );
    }
}
