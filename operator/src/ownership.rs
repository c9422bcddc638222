//! Which fields of a child the operator owns. A child missing from the cache is created (a
//! POST costs the API server two thirds of a server-side apply of a new object: see README,
//! Benchmarks); the API server records the fields of a create under an `Update` entry of the
//! operator's field manager. A later server-side apply by the same manager gets an `Apply`
//! entry of its own, and a field it leaves out stays, still owned by the create
//! (kubernetes/kubernetes#99003). So before the first apply to an object the operator created,
//! the create's fields become the apply's, as client-go's `csaupgrade` does for `kubectl
//! apply --server-side`: the next apply then removes what it no longer sets (and the API
//! server defaults again what it had defaulted).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Hands the fields `manager` created `name` with to its server-side apply; whether there
/// were any. The write is conditional on the resourceVersion read (a 409 if the object
/// changed meanwhile: the reconcile is retried).
pub async fn adopt_created<K>(api: &Api<K>, name: &str, manager: &str) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(current) = api.get_metadata_opt(name).await? else {
        return Ok(false);
    };
    let entries = current.metadata.managed_fields.as_deref().unwrap_or_default();
    let Some(upgraded) = upgraded(entries, manager) else {
        return Ok(false);
    };
    let patch = json!({"metadata": {
        "resourceVersion": current.metadata.resource_version,
        "managedFields": upgraded,
    }});
    api.patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(true)
}

/// `entries` with `manager`'s `Update` entries on the object itself (not a subresource)
/// merged into its `Apply` entry; `None` when it has no such `Update` entry.
pub fn upgraded(entries: &[ManagedFieldsEntry], manager: &str) -> Option<Vec<ManagedFieldsEntry>> {
    let ours = |e: &ManagedFieldsEntry, operation: &str| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some(operation)
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    };
    if !entries.iter().any(|e| ours(e, "Update")) {
        return None;
    }
    let mut fields = json!({});
    let mut merged: Option<ManagedFieldsEntry> = None;
    for entry in entries.iter().filter(|e| ours(e, "Update") || ours(e, "Apply")) {
        if let Some(FieldsV1(set)) = &entry.fields_v1 {
            union(&mut fields, set);
        }
        // The apply's own entry (its apiVersion and time) when there is one.
        if merged.is_none() || ours(entry, "Apply") {
            merged = Some(entry.clone());
        }
    }
    let merged = ManagedFieldsEntry {
        operation: Some("Apply".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        ..merged?
    };
    let others = entries.iter().filter(|e| !ours(e, "Update") && !ours(e, "Apply")).cloned();
    Some(others.chain(std::iter::once(merged)).collect())
}

/// Adds field set `from` to `into` (both `FieldsV1` trees: objects whose leaves are `{}`).
fn union(into: &mut Value, from: &Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (key, value) in from {
            union(into.entry(key.clone()).or_insert_with(|| json!({})), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn a_create_becomes_the_apply() {
        let created = entry("op", "Update", json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}}));
        let upgraded = upgraded(std::slice::from_ref(&created), "op").expect("an upgrade");
        assert_eq!(upgraded, vec![ManagedFieldsEntry { operation: Some("Apply".into()), ..created }]);
    }

    #[test]
    fn the_create_and_an_apply_merge_and_others_stay() {
        let kubectl = entry("kubectl-edit", "Update", json!({"f:data": {"f:c": {}}}));
        let status = ManagedFieldsEntry {
            subresource: Some("status".into()),
            ..entry("op", "Update", json!({"f:status": {}}))
        };
        let entries = [
            kubectl.clone(),
            entry("op", "Update", json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}})),
            status.clone(),
            entry("op", "Apply", json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {}}})),
        ];
        let upgraded = upgraded(&entries, "op").expect("an upgrade");
        let merged = entry(
            "op",
            "Apply",
            json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {}}}),
        );
        assert_eq!(upgraded, vec![kubectl, status, merged]);
    }

    #[test]
    fn nothing_to_do_without_a_create_of_ours() {
        let entries =
            [entry("op", "Apply", json!({"f:data": {}})), entry("someone", "Update", json!({"f:data": {}}))];
        assert_eq!(upgraded(&entries, "op"), None);
    }
}
