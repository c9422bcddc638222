//! The objects a `WhatsAppSession` owns, built as pure functions of the session and the
//! operator's settings. Nothing here talks to the API server, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};
use whatsapp_crds::{GROUP, SESSION_PORT, VolumePolicy, WhatsAppSession};
use whatsapp_runtime::hub_token;

use crate::error::{Error, Result};

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
    let role_binding = role_binding(session, namespace, &names)?;
    let service = service(session, name, &names)?;
    let statefulset = statefulset(session, settings, &names, &token)?;
    Ok(Children { secret, service_account, role, role_binding, service, statefulset })
}

/// Binds the session's Role to the session pod's ServiceAccount.
fn role_binding(session: &WhatsAppSession, namespace: &str, names: &Names) -> Result<RoleBinding> {
    Ok(RoleBinding {
        metadata: meta(session, &names.role)?,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: names.role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names.service_account.clone(),
            namespace: Some(namespace.to_string()),
            ..Subject::default()
        }]),
    })
}

/// The headless Service that gives the session pod its stable DNS name.
fn service(session: &WhatsAppSession, name: &str, names: &Names) -> Result<Service> {
    Ok(Service {
        metadata: meta(session, &names.service)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SESSION_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
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
    let when_deleted = match spec.storage.when_deleted {
        VolumePolicy::Retain => "Retain",
        VolumePolicy::Delete => "Delete",
    };
    Ok(StatefulSet {
        metadata: meta(session, &names.statefulset)?,
        spec: Some(StatefulSetSpec {
            replicas: Some(if spec.suspended { 0 } else { 1 }),
            service_name: Some(names.service.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector(name)), ..LabelSelector::default() },
            // Suspending scales to zero: the claim (the WhatsApp login) must survive that.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(when_deleted.into()),
                when_scaled: Some("Retain".into()),
            }),
            template: pod_template(session, settings, names, token)?,
            volume_claim_templates: Some(vec![claim_template(session)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// The session pod: one restricted container, the profile volume, in-memory scratch space.
fn pod_template(
    session: &WhatsAppSession,
    settings: &Settings,
    names: &Names,
    token: &str,
) -> Result<PodTemplateSpec> {
    let token_digest = hex(&Sha256::digest(token.as_bytes())[..8]);
    let browser = serde_json::to_vec(&session.spec.browser)?;
    let browser_digest = hex(&Sha256::digest(browser)[..8]);
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(session)),
            annotations: Some(BTreeMap::from([
                (TOKEN_DIGEST_ANNOTATION.to_string(), token_digest),
                (BROWSER_DIGEST_ANNOTATION.to_string(), browser_digest),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names.service_account.clone()),
            // Only the session pod's own token, for its own status.
            automount_service_account_token: Some(true),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(pod_security_context()),
            containers: vec![container(session, settings, names)],
            volumes: Some(volumes(settings)),
            ..PodSpec::default()
        }),
    })
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(10001),
        run_as_group: Some(10001),
        fs_group: Some(10001),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

/// The session container.
fn container(session: &WhatsAppSession, settings: &Settings, names: &Names) -> Container {
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let image = session.spec.browser.image.clone().unwrap_or_else(|| settings.session_image.clone());
    Container {
        name: "session".into(),
        image: Some(image),
        image_pull_policy: settings.image_pull_policy.clone(),
        env: Some(env(name, names, settings)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SESSION_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        startup_probe: Some(probe("/healthz", 2, 60)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: Some(resources(session)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts(settings)),
        ..Container::default()
    }
}

/// An HTTP probe on the container's `http` port.
fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// The spec's resources, or room for a session: it holds 210-245 MiB PSS over an hour of
/// sends and incoming messages (`bench-session`), beside its caches and shared memory in the
/// in-memory `/tmp`, charged to the pod too.
fn resources(session: &WhatsAppSession) -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect::<BTreeMap<_, _>>()
    };
    session.spec.browser.resources.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "512Mi")])),
        limits: Some(quantities(&[("memory", "1Gi")])),
        ..ResourceRequirements::default()
    })
}

/// The session pod's environment.
fn env(name: &str, names: &Names, settings: &Settings) -> Vec<EnvVar> {
    let value = |key: &str, value: String| EnvVar { name: key.into(), value: Some(value), value_from: None };
    let from =
        |key: &str, source: EnvVarSource| EnvVar { name: key.into(), value: None, value_from: Some(source) };
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
        ..EnvVarSource::default()
    };
    let token = EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: names.secret.clone(),
            key: TOKEN_KEY.into(),
            ..SecretKeySelector::default()
        }),
        ..EnvVarSource::default()
    };
    let mut env = vec![
        from("POD_NAME", field("metadata.name")),
        from("POD_NAMESPACE", field("metadata.namespace")),
        from("POD_IP", field("status.podIP")),
        value("WAO_SESSION_NAME", name.to_string()),
        value("WAO_PROFILE_DIR", format!("{PROFILE_MOUNT}/profile")),
        value("WAO_LISTEN", format!("0.0.0.0:{SESSION_PORT}")),
        from("WAO_HUB_TOKEN", token),
        // Chromium's crash reporter writes under $HOME: keep it on the writable /tmp.
        value("HOME", "/tmp".into()),
    ];
    if settings.bridge_script_configmap.is_some() {
        env.push(value("WAO_BRIDGE_SCRIPT", format!("{BRIDGE_MOUNT}/wa-bridge.js")));
    }
    env
}

fn volume_mounts(settings: &Settings) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    };
    let mut mounts =
        vec![mount(PROFILE_VOLUME, PROFILE_MOUNT), mount("shm", "/dev/shm"), mount("tmp", "/tmp")];
    if settings.bridge_script_configmap.is_some() {
        mounts.push(VolumeMount { read_only: Some(true), ..mount("bridge", BRIDGE_MOUNT) });
    }
    mounts
}

/// The pod's volumes (the profile volume comes from the claim template): /dev/shm and /tmp
/// in memory, and the optional bridge-script ConfigMap.
fn volumes(settings: &Settings) -> Vec<Volume> {
    let memory = |name: &str, size: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(size.into())),
        }),
        ..Volume::default()
    };
    let mut volumes = vec![memory("shm", "256Mi"), memory("tmp", "128Mi")];
    if let Some(configmap) = &settings.bridge_script_configmap {
        volumes.push(Volume {
            name: "bridge".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: configmap.clone(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// The profile volume: the claim of pod `<name>-0`, which holds the WhatsApp login.
fn claim_template(session: &WhatsAppSession) -> PersistentVolumeClaim {
    let storage = &session.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(PROFILE_VOLUME.into()),
            labels: Some(labels(session)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), storage.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
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
