//! The objects a `WhatsAppSession` owns, built as pure functions of the session and the
//! operator's settings. Nothing here talks to the API server, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::Resource;
use kube::api::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};
use whatsapp_crds::{GROUP, VolumePolicy, WhatsAppSession, hub_token};

use crate::error::{Error, Result};

/// Port of the session pod's HTTP API (hub-only routes, probes, metrics).
pub const SESSION_PORT: i32 = 8080;
/// Where the profile volume is mounted in the session pod.
pub const PROFILE_MOUNT: &str = "/data";
/// Name of the volume claim template; the claim of pod `<name>-0` is `profile-<name>-0`.
pub const PROFILE_VOLUME: &str = "profile";
/// Label naming the session on every child, pods included.
pub const SESSION_LABEL: &str = "whatsapp.leadmaster.dev/session";
/// The tenant of every child, and of the profile volume (which keeps it after its session is
/// gone: a retained volume holds that tenant's WhatsApp login).
pub const CLIENTE_LABEL: &str = "whatsapp.leadmaster.dev/cliente-id";
/// Label set on every child, to watch only ours.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "whatsapp-operator");
/// Pod-template annotation holding a digest of the hub token, so a new token rolls the pod.
pub const TOKEN_DIGEST_ANNOTATION: &str = "whatsapp.leadmaster.dev/hub-token-digest";
/// A digest of `spec.browser` on the pod template: the session pod reads the browser settings
/// only when it launches Chromium, so a change rolls the pod (the login stays on its volume).
pub const BROWSER_DIGEST_ANNOTATION: &str = "whatsapp.leadmaster.dev/browser-digest";
/// Key of the hub token in the session's Secret.
pub const TOKEN_KEY: &str = "token";
/// Chromium needs time to flush the profile (the WhatsApp login) to disk on shutdown.
pub const TERMINATION_GRACE_SECONDS: i64 = 45;

/// Operator-wide settings that shape every session's children.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Session-pod image when the session does not name one.
    pub session_image: String,
    /// `imagePullPolicy` of the session container, when set.
    pub image_pull_policy: Option<String>,
    /// Key from which each session's hub token is derived (HMAC-SHA256 of `namespace/name`).
    /// The hub holds the same key, so it needs no access to Secrets.
    pub hub_token_key: Vec<u8>,
    /// ConfigMap (in each session's namespace, optional) whose `wa-bridge.js` replaces the
    /// session pod's built-in bridge script, to follow a WhatsApp Web change without a rebuild.
    pub bridge_script_configmap: Option<String>,
}

/// Where the bridge-script ConfigMap is mounted in the session pod.
pub const BRIDGE_MOUNT: &str = "/etc/whatsapp-session/bridge";

/// Names of a session's children.
pub struct Names {
    pub statefulset: String,
    pub service: String,
    pub service_account: String,
    pub role: String,
    pub secret: String,
    pub pod: String,
    pub claim: String,
}

impl Names {
    pub fn of(session: &str) -> Names {
        Names {
            statefulset: session.to_string(),
            service: session.to_string(),
            service_account: format!("{session}-session"),
            role: format!("{session}-session"),
            secret: format!("{session}-hub-token"),
            pod: format!("{session}-0"),
            claim: format!("{PROFILE_VOLUME}-{session}-0"),
        }
    }
}

/// Every child of one session, as it should be.
pub struct Children {
    pub secret: Secret,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub service: Service,
    pub statefulset: StatefulSet,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Labels shared by every child and the pod.
pub fn labels(session: &WhatsAppSession) -> BTreeMap<String, String> {
    let name = session.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "whatsapp-session".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        ("app.kubernetes.io/component".to_string(), "session".to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SESSION_LABEL.to_string(), name),
        (CLIENTE_LABEL.to_string(), session.spec.cliente_id.to_string()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "whatsapp-session".to_string()),
        (SESSION_LABEL.to_string(), name.to_string()),
    ])
}

fn meta(session: &WhatsAppSession, name: &str) -> Result<ObjectMeta> {
    let owner = session.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: session.metadata.namespace.clone(),
        labels: Some(labels(session)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("child objects are well-formed")
}

/// Builds every child of `session`.
pub fn desired(session: &WhatsAppSession, settings: &Settings) -> Result<Children> {
    let name = session.metadata.name.as_deref().ok_or(Error::MissingField("metadata.name"))?;
    let namespace = session.metadata.namespace.as_deref().ok_or(Error::MissingField("metadata.namespace"))?;
    let names = Names::of(name);
    let token = hub_token(&settings.hub_token_key, namespace, name);

    let secret = Secret {
        metadata: meta(session, &names.secret)?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(token.clone().into_bytes()))])),
        ..Secret::default()
    };

    let service_account = ServiceAccount {
        metadata: meta(session, &names.service_account)?,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };

    let role = role(session, name, &names)?;

    let mut role_binding: RoleBinding = from_json(json!({
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": namespace}],
    }));
    role_binding.metadata = meta(session, &names.role)?;

    let mut service: Service = from_json(json!({
        "spec": {
            "clusterIP": "None",
            "selector": selector(name),
            "ports": [{"name": "http", "port": SESSION_PORT, "targetPort": "http", "protocol": "TCP"}],
        }
    }));
    service.metadata = meta(session, &names.service)?;

    let statefulset = statefulset(session, settings, &names, &token)?;
    Ok(Children { secret, service_account, role, role_binding, service, statefulset })
}

/// The session pod may read its own WhatsAppSession, write its status, and get the Secrets
/// that sign its webhooks (when it has any): nothing else.
fn role(session: &WhatsAppSession, name: &str, names: &Names) -> Result<Role> {
    let rule = |group: &str, resource: &str, resource_names: Vec<String>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: Some(resource_names),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    let mut rules = vec![
        rule(GROUP, "whatsappsessions", vec![name.to_string()], &["get", "list", "watch"]),
        rule(GROUP, "whatsappsessions/status", vec![name.to_string()], &["get", "patch"]),
    ];
    let secrets: BTreeSet<String> = session.spec.webhooks.iter().map(|w| w.secret_ref.name.clone()).collect();
    if !secrets.is_empty() {
        rules.push(rule("", "secrets", secrets.into_iter().collect(), &["get"]));
    }
    Ok(Role { metadata: meta(session, &names.role)?, rules: Some(rules) })
}

fn statefulset(
    session: &WhatsAppSession,
    settings: &Settings,
    names: &Names,
    token: &str,
) -> Result<StatefulSet> {
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let spec = &session.spec;
    let image = spec.browser.image.clone().unwrap_or_else(|| settings.session_image.clone());
    let when_deleted = match spec.storage.when_deleted {
        VolumePolicy::Retain => "Retain",
        VolumePolicy::Delete => "Delete",
    };
    let resources = match &spec.browser.resources {
        Some(r) => serde_json::to_value(r).expect("resources serialize"),
        // Chromium with WhatsApp Web settles around 400-500 MiB.
        None => json!({"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}),
    };
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size.0}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    let token_digest = hex(&Sha256::digest(token.as_bytes())[..8]);
    let browser = serde_json::to_vec(&spec.browser)?;
    let browser_digest = hex(&Sha256::digest(browser)[..8]);
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut container = json!({
        "name": "session",
        "image": image,
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "POD_IP", "valueFrom": field("status.podIP")},
            {"name": "WAO_SESSION_NAME", "value": name},
            {"name": "WAO_PROFILE_DIR", "value": format!("{PROFILE_MOUNT}/profile")},
            {"name": "WAO_LISTEN", "value": format!("0.0.0.0:{SESSION_PORT}")},
            {"name": "WAO_HUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": names.secret, "key": TOKEN_KEY}}},
            // Chromium's crash reporter writes under $HOME: keep it on the writable /tmp.
            {"name": "HOME", "value": "/tmp"},
        ],
        "ports": [{"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"}],
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": PROFILE_VOLUME, "mountPath": PROFILE_MOUNT},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if let Some(policy) = &settings.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut volumes = vec![
        json!({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "128Mi"}}),
    ];
    if let Some(configmap) = &settings.bridge_script_configmap {
        volumes.push(json!({"name": "bridge", "configMap": {"name": configmap, "optional": true}}));
        container["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"name": "bridge", "mountPath": BRIDGE_MOUNT, "readOnly": true}));
        container["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "WAO_BRIDGE_SCRIPT", "value": format!("{BRIDGE_MOUNT}/wa-bridge.js")}));
    }

    let mut sts: StatefulSet = from_json(json!({
        "spec": {
            "replicas": if spec.suspended { 0 } else { 1 },
            "serviceName": names.service,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(name)},
            // Suspending scales to zero: the claim (the WhatsApp login) must survive that.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "template": {
                "metadata": {
                    "labels": labels(session),
                    "annotations": {
                        TOKEN_DIGEST_ANNOTATION: token_digest,
                        BROWSER_DIGEST_ANNOTATION: browser_digest,
                    },
                },
                "spec": {
                    "serviceAccountName": names.service_account,
                    // Only the session pod's own token, for its own status.
                    "automountServiceAccountToken": true,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                }
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": PROFILE_VOLUME, "labels": labels(session)},
                "spec": claim_spec,
            }],
        }
    }));
    sts.metadata = meta(session, &names.statefulset)?;
    Ok(sts)
}

/// The parts of a StatefulSet the API server refuses to change.
#[derive(Debug, PartialEq)]
struct FrozenShape {
    service_name: Option<String>,
    selector: Option<BTreeMap<String, String>>,
    pod_management_policy: Option<String>,
    claims: Vec<(Option<String>, Option<String>, Option<f64>)>,
}

impl FrozenShape {
    /// `explicit_class`: compare storage classes only when the desired one is explicit, since
    /// the server fills in the default class.
    fn of(sts: &StatefulSet, explicit_class: bool) -> FrozenShape {
        let spec = sts.spec.as_ref();
        let claims = spec
            .and_then(|s| s.volume_claim_templates.as_ref())
            .into_iter()
            .flatten()
            .map(|claim| {
                let spec = claim.spec.as_ref();
                let class = spec.and_then(|s| s.storage_class_name.clone()).filter(|_| explicit_class);
                let size = spec
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage"))
                    .and_then(|q| crate::compare::quantity_value(&q.0));
                (claim.metadata.name.clone(), class, size)
            })
            .collect();
        FrozenShape {
            service_name: spec.and_then(|s| s.service_name.clone()),
            selector: spec.and_then(|s| s.selector.match_labels.clone()),
            pod_management_policy: spec.and_then(|s| s.pod_management_policy.clone()),
            claims,
        }
    }
}

/// Whether `existing` differs from `desired` in a field the API server refuses to change:
/// then the StatefulSet is replaced (its pod and claim kept) instead of patched.
pub fn frozen_fields_differ(existing: &StatefulSet, desired: &StatefulSet) -> bool {
    let explicit_class =
        desired.spec.as_ref().and_then(|s| s.volume_claim_templates.as_ref()).is_some_and(|c| {
            c.iter().any(|c| c.spec.as_ref().is_some_and(|s| s.storage_class_name.is_some()))
        });
    FrozenShape::of(existing, explicit_class) != FrozenShape::of(desired, explicit_class)
}

#[cfg(test)]
mod tests;
