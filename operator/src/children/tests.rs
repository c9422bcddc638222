use super::*;
use serde_json::{Value, json};

fn settings() -> Settings {
    Settings {
        session_image: "registry.example/whatsapp-session:1".into(),
        image_pull_policy: None,
        hub_token_key: b"0123456789abcdef0123456789abcdef".to_vec(),
        bridge_script_configmap: None,
    }
}

fn session(spec: Value) -> WhatsAppSession {
    serde_json::from_value(json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "metadata": {"name": "acme", "namespace": "tenants", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

fn sts_json(children: &Children) -> Value {
    serde_json::to_value(&children.statefulset).unwrap()
}

#[test]
fn every_child_is_named_labelled_and_owned() {
    let c = desired(&session(json!({"clienteId": 42})), &settings()).unwrap();
    let metas = [
        (&c.secret.metadata, "acme-hub-token"),
        (&c.service_account.metadata, "acme-session"),
        (&c.role.metadata, "acme-session"),
        (&c.role_binding.metadata, "acme-session"),
        (&c.service.metadata, "acme"),
        (&c.statefulset.metadata, "acme"),
    ];
    for (meta, name) in metas {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("tenants"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("WhatsAppSession", "u-1", Some(true))
        );
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(labels[SESSION_LABEL], "acme");
        assert_eq!(labels["whatsapp.leadmaster.dev/cliente-id"], "42");
    }
}

#[test]
fn the_statefulset_runs_one_restricted_pod_on_the_profile_volume() {
    let sts = sts_json(
        &desired(&session(json!({"clienteId": 1, "storage": {"size": "2Gi"}})), &settings()).unwrap(),
    );
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["serviceName"], "acme");
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    let claim = &spec["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], PROFILE_VOLUME);
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert!(
        claim["spec"].get("storageClassName").is_none(),
        "the cluster default class is left to the server"
    );

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "acme-session");
    assert_eq!(pod["terminationGracePeriodSeconds"], TERMINATION_GRACE_SECONDS);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/whatsapp-session:1");
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, [PROFILE_MOUNT, "/dev/shm", "/tmp"]);
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.iter().all(|v| v["emptyDir"]["medium"] == "Memory"), "/dev/shm and /tmp are in memory");
    let env: Vec<&str> =
        container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    for name in ["POD_NAME", "POD_NAMESPACE", "POD_IP", "WAO_SESSION_NAME", "WAO_HUB_TOKEN"] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }
}

#[test]
fn suspending_scales_to_zero_and_keeps_the_claim() {
    let sts = sts_json(&desired(&session(json!({"clienteId": 1, "suspended": true})), &settings()).unwrap());
    assert_eq!(sts["spec"]["replicas"], 0);
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Retain");
}

#[test]
fn when_deleted_sets_the_claim_retention() {
    let spec = json!({"clienteId": 1, "storage": {"whenDeleted": "Delete", "storageClassName": "fast"}});
    let sts = sts_json(&desired(&session(spec), &settings()).unwrap());
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Delete");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast");
}

#[test]
fn the_session_image_and_resources_come_from_the_spec_when_set() {
    let spec =
        json!({"clienteId": 1, "browser": {"image": "mine:2", "resources": {"limits": {"memory": "2Gi"}}}});
    let sts = sts_json(&desired(&session(spec), &settings()).unwrap());
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "mine:2");
    assert_eq!(container["resources"], json!({"limits": {"memory": "2Gi"}}));
}

#[test]
fn the_role_grants_only_its_own_session() {
    let role =
        serde_json::to_value(desired(&session(json!({"clienteId": 1})), &settings()).unwrap().role).unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    for rule in rules {
        assert_eq!(rule["apiGroups"], json!([GROUP]));
        assert_eq!(rule["resourceNames"], json!(["acme"]));
        let verbs = rule["verbs"].as_array().unwrap();
        assert!(verbs.iter().all(|v| ["get", "list", "watch", "patch"].contains(&v.as_str().unwrap())));
    }
    assert_eq!(rules[1]["resources"], json!(["whatsappsessions/status"]));
}

#[test]
fn the_role_lets_the_pod_get_exactly_the_secrets_that_sign_its_webhooks() {
    let hook = |name: &str, secret: &str| json!({"name": name, "url": format!("https://{name}.example/"), "secretRef": {"name": secret}});
    let spec = json!({"clienteId": 1, "webhooks": [hook("crm", "signing"), hook("erp", "erp-key"), hook("bi", "signing")]});
    let role = serde_json::to_value(desired(&session(spec), &settings()).unwrap().role).unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[2],
        json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["erp-key", "signing"], "verbs": ["get"]})
    );
    // Without webhooks, no Secret at all (an empty resourceNames would mean every Secret).
    let plain =
        serde_json::to_value(desired(&session(json!({"clienteId": 1})), &settings()).unwrap().role).unwrap();
    assert!(plain["rules"].as_array().unwrap().iter().all(|r| r["resources"] != json!(["secrets"])));
}

#[test]
fn hub_tokens_are_per_session_and_follow_the_key() {
    let key = b"0123456789abcdef0123456789abcdef";
    let a = hub_token(key, "tenants", "acme");
    assert_eq!(a, hub_token(key, "tenants", "acme"));
    assert_eq!(a.len(), 64);
    assert_ne!(a, hub_token(key, "tenants", "other"));
    assert_ne!(a, hub_token(key, "elsewhere", "acme"));
    assert_ne!(a, hub_token(b"another key, also thirty-two byte", "tenants", "acme"));

    // A new key rolls the pod, through the digest annotation (never the token itself).
    let digest = |key: &[u8]| {
        let s = Settings { hub_token_key: key.to_vec(), ..settings() };
        let sts = sts_json(&desired(&session(json!({"clienteId": 1})), &s).unwrap());
        sts["spec"]["template"]["metadata"]["annotations"][TOKEN_DIGEST_ANNOTATION]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(digest(key), digest(b"another key, also thirty-two byte"));
    assert!(!digest(key).contains(&a));
}

#[test]
fn a_browser_change_rolls_the_pod_and_nothing_else_does() {
    let digest = |spec: Value| {
        let sts = sts_json(&desired(&session(spec), &settings()).unwrap());
        sts["spec"]["template"]["metadata"]["annotations"][BROWSER_DIGEST_ANNOTATION]
            .as_str()
            .unwrap()
            .to_string()
    };
    let plain = digest(json!({"clienteId": 1}));
    assert_eq!(plain, digest(json!({"clienteId": 1, "send": {"ratePerMinute": 5}})));
    assert_ne!(plain, digest(json!({"clienteId": 1, "browser": {"extraArgs": ["--lang=es"]}})));
    assert_ne!(plain, digest(json!({"clienteId": 1, "browser": {"webVersion": "2.3000.1029560484"}})));
}

#[test]
fn frozen_fields_are_detected() {
    let base = desired(&session(json!({"clienteId": 1})), &settings()).unwrap().statefulset;
    let suspended =
        desired(&session(json!({"clienteId": 1, "suspended": true})), &settings()).unwrap().statefulset;
    assert!(!frozen_fields_differ(&base, &suspended), "replicas can be patched");
    let bigger = desired(&session(json!({"clienteId": 1, "storage": {"size": "5Gi"}})), &settings())
        .unwrap()
        .statefulset;
    assert!(frozen_fields_differ(&base, &bigger), "claim size is frozen");
    let same_size = desired(&session(json!({"clienteId": 1, "storage": {"size": "1024Mi"}})), &settings())
        .unwrap()
        .statefulset;
    assert!(!frozen_fields_differ(&base, &same_size), "1024Mi is 1Gi");

    // The server fills in the default class: not a difference when the spec names none.
    let mut served = base.clone();
    served.spec.as_mut().unwrap().volume_claim_templates.as_mut().unwrap()[0]
        .spec
        .as_mut()
        .unwrap()
        .storage_class_name = Some("standard".into());
    assert!(!frozen_fields_differ(&served, &base));
    let explicit =
        desired(&session(json!({"clienteId": 1, "storage": {"storageClassName": "fast"}})), &settings())
            .unwrap()
            .statefulset;
    assert!(frozen_fields_differ(&served, &explicit));
}

#[test]
fn a_session_without_uid_is_an_error_not_a_panic() {
    let mut s = session(json!({"clienteId": 1}));
    s.metadata.uid = None;
    assert!(matches!(desired(&s, &settings()), Err(Error::MissingField(_))));
}

#[test]
fn a_bridge_script_configmap_is_mounted_optionally() {
    let s = Settings { bridge_script_configmap: Some("wa-bridge".into()), ..settings() };
    let sts = sts_json(&desired(&session(json!({"clienteId": 1})), &s).unwrap());
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "bridge").unwrap();
    assert_eq!(volume["configMap"], json!({"name": "wa-bridge", "optional": true}));
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "WAO_BRIDGE_SCRIPT" && e["value"] == format!("{BRIDGE_MOUNT}/wa-bridge.js")));
    // Without the setting, nothing is mounted.
    let plain = sts_json(&desired(&session(json!({"clienteId": 1})), &settings()).unwrap());
    assert!(
        !plain["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "bridge")
    );
}

/// A session with every optional spec field set, and settings with every option set.
fn everything() -> (WhatsAppSession, Settings) {
    let spec = json!({
        "clienteId": 7,
        "suspended": true,
        "webhooks": [{"name": "crm", "url": "https://crm.example/", "secretRef": {"name": "signing"}}],
        "storage": {"size": "3Gi", "storageClassName": "fast", "whenDeleted": "Delete"},
        "browser": {
            "image": "mine:3",
            "resources": {"requests": {"cpu": "250m", "memory": "700Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
            "extraArgs": ["--lang=es"],
            "webVersion": "2.3000.1029560484",
        },
    });
    let settings = Settings {
        image_pull_policy: Some("IfNotPresent".into()),
        bridge_script_configmap: Some("wa-bridge".into()),
        ..settings()
    };
    (session(spec), settings)
}

fn all_children_json(c: &Children) -> Value {
    json!({
        "secret": serde_json::to_value(&c.secret).unwrap(),
        "serviceAccount": serde_json::to_value(&c.service_account).unwrap(),
        "role": serde_json::to_value(&c.role).unwrap(),
        "roleBinding": serde_json::to_value(&c.role_binding).unwrap(),
        "service": serde_json::to_value(&c.service).unwrap(),
        "statefulset": serde_json::to_value(&c.statefulset).unwrap(),
    })
}

/// The children as the json!-literal version of this module built them (captured before the
/// move to typed structs): the typed version must emit exactly the same objects, since omitted,
/// null and empty fields all mean different things to server-side apply.
#[test]
fn the_children_are_exactly_what_the_json_version_emitted() {
    let fixtures = [
        (everything(), include_str!("fixture_everything.json")),
        ((session(json!({"clienteId": 1})), settings()), include_str!("fixture_defaults.json")),
    ];
    for ((session, settings), expected) in fixtures {
        let actual = all_children_json(&desired(&session, &settings).unwrap());
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(actual, expected, "{}", serde_json::to_string_pretty(&actual).unwrap());
    }
}
