//! Offline tests: the committed manifest matches the types, and the CEL rules accept and
//! reject what they should (evaluated with kube's client-side CEL, no API server).

use super::*;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

#[test]
fn committed_crd_matches_the_rust_types() {
    assert!(
        CRD_YAML == crd_yaml(),
        "crds/whatsappsession.yaml is out of date: run `cargo run -p whatsapp-crds --bin crdgen`"
    );
}

#[test]
fn the_helm_chart_ships_the_same_crd() {
    let chart_copy = include_str!("../../charts/whatsapp-operator/crds/whatsappsession.yaml");
    assert!(
        chart_copy == CRD_YAML,
        "charts/whatsapp-operator/crds/whatsappsession.yaml differs from crds/whatsappsession.yaml: \
         run `cargo run -p whatsapp-crds --bin crdgen`"
    );
}

#[test]
fn crd_has_the_promised_shape() {
    let crd = WhatsAppSession::crd();
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["was".to_string(), "wasession".to_string()][..])
    );
    assert_eq!(crd.spec.names.categories.as_deref(), Some(&["whatsapp".to_string()][..]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let columns: Vec<_> =
        version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Cliente", "State", "Phone", "Ready", "Queued", "Failed", "Age"]);

    let schema = schema();
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    // No unsigned integers anywhere: every integer is int32 or int64.
    let text = serde_json::to_string(&schema).unwrap();
    assert!(!text.contains("uint"), "unsigned integer format in the schema");
}

#[test]
fn every_field_is_documented() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let here = format!("{path}.{name}");
                // metadata, apiVersion and kind are documented by Kubernetes itself.
                if path.is_empty() && matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                if child.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                    missing.push(here.clone());
                }
                // Types from k8s-openapi (resources, conditions) carry upstream docs.
                if !here.ends_with(".resources") && !here.ends_with(".conditions") {
                    walk(&here, child, missing);
                }
            }
        }
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    assert!(missing.is_empty(), "fields without a doc comment (kubectl explain shows nothing): {missing:?}");
}

fn schema() -> Value {
    let crd = WhatsAppSession::crd();
    let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
    serde_json::to_value(schema).unwrap()
}

fn session(spec: Value) -> Value {
    json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": spec,
    })
}

/// The CEL messages an object gets, on create (`old` = None) or update.
fn cel_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn valid_sessions_pass() {
    let full = json!({
        "clienteId": 42,
        "suspended": true,
        "pairing": {"method": "PhoneCode", "phoneNumber": "5491122334455"},
        "qr": {"maxAttempts": 10},
        "send": {"ratePerMinute": 30, "dailyCap": 500, "window": {"start": "22:00", "end": "06:00", "timeZone": "America/Sao_Paulo"}},
        "storage": {"size": "2Gi", "storageClassName": "fast-ssd", "whenDeleted": "Delete"},
        "inbound": {"retentionDays": 30},
        "webhooks": [
            {"name": "crm", "url": "https://crm.example/hooks/whatsapp", "events": ["message", "message.ack"], "secretRef": {"name": "crm-webhook", "key": "secret"}},
            {"name": "audit", "url": "http://audit.tools.svc:8080/in", "allowInsecure": true, "secretRef": {"name": "audit-webhook"}},
        ],
        "browser": {"image": "registry.example/whatsapp-session:1.0", "extraArgs": ["--lang=es"], "webVersion": "2.3000.1029560484", "engine": "Chromium"},
    });
    for spec in [json!({"clienteId": 1}), full] {
        let object = session(spec);
        assert_eq!(cel_errors(&object, None), Vec::<String>::new(), "{object}");
        // And it round-trips through the Rust types with the defaults filled in.
        let typed: WhatsAppSession = serde_json::from_value(object).unwrap();
        assert!(typed.spec.qr.max_attempts >= 1);
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let typed: WhatsAppSession = serde_json::from_value(session(json!({"clienteId": 7}))).unwrap();
    assert_eq!(typed.spec.pairing.method, PairingMethod::QR);
    assert_eq!(typed.spec.qr.max_attempts, 6);
    assert_eq!(typed.spec.send.rate_per_minute, 20);
    assert_eq!(typed.spec.storage.size.0, "1Gi");
    assert_eq!(typed.spec.storage.when_deleted, VolumePolicy::Retain);
    assert!(!typed.spec.suspended);
    assert_eq!(typed.spec.inbound.retention_days, 7);
    assert!(typed.spec.webhooks.is_empty());
    assert_eq!(typed.spec.browser.engine, BrowserEngine::HeadlessShell);
    // The default engine is left out of the serialized spec (the operator's digest of it).
    assert_eq!(serde_json::to_value(&typed.spec.browser).unwrap(), json!({}));
    let hooked: WhatsAppSession = serde_json::from_value(session(
        json!({"clienteId": 7, "webhooks": [{"name": "crm", "url": "https://crm.example/", "secretRef": {"name": "s"}}]}),
    ))
    .unwrap();
    assert_eq!(hooked.spec.webhooks[0].events, ["message", "message.ack", "state"]);
    assert_eq!(hooked.spec.webhooks[0].secret_ref.key, "secret");
}

#[test]
fn invalid_sessions_are_rejected_with_clear_messages() {
    let cases = [
        (json!({"clienteId": -3}), "clienteId must be a positive integer"),
        (json!({"clienteId": 0}), "clienteId must be a positive integer"),
        (
            json!({"clienteId": 1, "pairing": {"method": "PhoneCode"}}),
            "pairing.phoneNumber is required when pairing.method is PhoneCode",
        ),
        (
            json!({"clienteId": 1, "pairing": {"phoneNumber": "+54 911"}}),
            "pairing.phoneNumber must be 8 to 15 digits",
        ),
        (
            json!({"clienteId": 1, "pairing": {"phoneNumber": "1234567"}}),
            "pairing.phoneNumber must be 8 to 15 digits",
        ),
        (
            json!({"clienteId": 1, "pairing": {"phoneNumber": "1234567890123456"}}),
            "pairing.phoneNumber must be 8 to 15 digits",
        ),
        (json!({"clienteId": 1, "qr": {"maxAttempts": 0}}), "qr.maxAttempts must be between 1 and 60"),
        (
            json!({"clienteId": 1, "send": {"ratePerMinute": 1000}}),
            "send.ratePerMinute must be between 1 and 180",
        ),
        (json!({"clienteId": 1, "send": {"dailyCap": 0}}), "send.dailyCap must be between 1 and 100000"),
        (
            json!({"clienteId": 1, "send": {"window": {"start": "8:00", "end": "20:00"}}}),
            "send.window.start must be HH:MM",
        ),
        (
            json!({"clienteId": 1, "send": {"window": {"start": "08:00", "end": "24:00"}}}),
            "send.window.end must be HH:MM",
        ),
        (
            json!({"clienteId": 1, "send": {"window": {"start": "08:00", "end": "08:00"}}}),
            "send.window.start and send.window.end must differ",
        ),
        (
            json!({"clienteId": 1, "send": {"window": {"start": "08:00", "end": "20:00", "timeZone": "GMT -3"}}}),
            "send.window.timeZone must be an IANA time zone name",
        ),
        (
            json!({"clienteId": 1, "storage": {"whenDeleted": "Keep"}}),
            "storage.whenDeleted must be Retain or Delete",
        ),
        (json!({"clienteId": 1, "storage": {"size": "lots"}}), "storage.size must be a positive quantity"),
        (json!({"clienteId": 1, "storage": {"size": "0"}}), "storage.size must be a positive quantity"),
        (
            json!({"clienteId": 1, "storage": {"storageClassName": "Not_A_Name"}}),
            "storage.storageClassName must be a DNS subdomain name",
        ),
        (
            json!({"clienteId": 1, "browser": {"extraArgs": ["lang=es"]}}),
            "browser.extraArgs entries must start with --",
        ),
        (
            json!({"clienteId": 1, "browser": {"extraArgs": ["--user-data-dir=/x"]}}),
            "browser.extraArgs must not set --user-data-dir",
        ),
        (json!({"clienteId": 1, "browser": {"webVersion": "latest"}}), "browser.webVersion must look like"),
        (
            json!({"clienteId": 1, "browser": {"engine": "Firefox"}}),
            "browser.engine must be HeadlessShell or Chromium",
        ),
        (
            json!({"clienteId": 1, "inbound": {"retentionDays": 0}}),
            "inbound.retentionDays must be between 1 and 90",
        ),
        (
            json!({"clienteId": 1, "webhooks": [{"name": "crm", "url": "http://crm.example/", "secretRef": {"name": "s"}}]}),
            "webhooks[].url must be https:// unless allowInsecure is true",
        ),
        (
            json!({"clienteId": 1, "webhooks": [{"name": "crm", "url": "ftp://crm.example/", "allowInsecure": true, "secretRef": {"name": "s"}}]}),
            "webhooks[].url must be an http(s) URL",
        ),
        (
            json!({"clienteId": 1, "webhooks": [{"name": "CRM", "url": "https://crm.example/", "secretRef": {"name": "s"}}]}),
            "webhooks[].name must be lowercase",
        ),
        (
            json!({"clienteId": 1, "webhooks": [{"name": "crm", "url": "https://crm.example/", "events": ["sms"], "secretRef": {"name": "s"}}]}),
            "webhooks[].events must be some of message, message.ack, state",
        ),
        (
            json!({"clienteId": 1, "webhooks": [
                {"name": "crm", "url": "https://a.example/", "secretRef": {"name": "s"}},
                {"name": "crm", "url": "https://b.example/", "secretRef": {"name": "s"}},
            ]}),
            "webhook names must be unique",
        ),
    ];
    for (spec, expected) in cases {
        let errors = cel_errors(&session(spec.clone()), None);
        assert!(
            errors.iter().any(|m| m.starts_with(expected)),
            "spec {spec} should be rejected with {expected:?}, got {errors:?}"
        );
    }
}

#[test]
fn names_must_fit_the_children() {
    let named = |name: &str| {
        let mut object = session(json!({"clienteId": 1}));
        object["metadata"]["name"] = json!(name);
        cel_errors(&object, None)
    };
    assert_eq!(named("acme-42"), Vec::<String>::new());
    for bad in ["1acme", "acme.example", &"a".repeat(41)] {
        let errors = named(bad);
        assert!(
            errors.iter().any(|m| m.starts_with("metadata.name must start with a letter")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn cliente_id_is_immutable() {
    let old = session(json!({"clienteId": 1}));
    assert_eq!(
        cel_errors(&session(json!({"clienteId": 1, "suspended": true})), Some(&old)),
        Vec::<String>::new()
    );
    let errors = cel_errors(&session(json!({"clienteId": 2})), Some(&old));
    assert!(errors.iter().any(|m| m.starts_with("clienteId is immutable")), "{errors:?}");
}

#[test]
fn states_serialize_as_the_api_names() {
    for state in SessionState::ALL {
        assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
    }
}
