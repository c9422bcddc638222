//! Smoke tests on the real control plane: the CRD as users meet it through kubectl, and proof
//! that the controller-manager, scheduler and kwok turn a StatefulSet into a Running pod with
//! a Bound volume.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use whatsapp_crds::WhatsAppSession;
use whatsapp_tests::harness::{cluster, eventually};
use whatsapp_tests::{CRD_NAME, output, run};

fn session_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: whatsapp.leadmaster.dev/v1alpha1\nkind: WhatsAppSession\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn crd_installs_and_is_established_with_the_generated_schema() {
    let c = cluster();
    // Applying the committed manifest again, as a user would, is a no-op that succeeds.
    whatsapp_tests::install_crd(&c.bin, &c.kubeconfig).expect("kubectl apply of the CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client().await);
    let installed = crds.get(CRD_NAME).await.unwrap();
    let established = installed
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    assert!(established, "CRD not Established: {:?}", installed.status);
    // The server holds exactly the schema the Rust types generate.
    let generated = WhatsAppSession::crd();
    assert_eq!(
        serde_json::to_value(&installed.spec.versions[0].schema).unwrap(),
        serde_json::to_value(&generated.spec.versions[0].schema).unwrap()
    );
    assert_eq!(installed.spec.names.short_names, generated.spec.names.short_names);
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let ns = cluster().namespace("smoke-get").await;
    let applied = ns.apply(&session_yaml("acme", "  clienteId: 42\n"));
    assert!(applied.success, "{applied:?}");

    // Fill the status the way the session pod will, through the status subresource.
    let api: Api<WhatsAppSession> = ns.api();
    let status = json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "status": {
            "state": "READY",
            "me": {"phone": "5491122334455"},
            "outbox": {"queued": 7, "failed": 2},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Linked", "message": "linked",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }],
        }
    });
    api.patch_status("acme", &PatchParams::apply("smoke-test").force(), &Patch::Apply(&status))
        .await
        .unwrap();

    for resource in ["whatsappsessions", "was", "wasession", "whatsapp"] {
        let out = run(ns.kubectl().args(["get", resource])).unwrap();
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "CLIENTE", "STATE", "PHONE", "READY", "QUEUED", "AGE"],
            "kubectl get {resource}:\n{}",
            out.stdout
        );
        let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        // The category lists the kind-qualified name; FAILED shows with -o wide.
        assert!(row[0].ends_with("acme"), "{row:?}");
        assert_eq!(
            row[1..6],
            ["42", "READY", "5491122334455", "True", "7"],
            "kubectl get {resource}:\n{}",
            out.stdout
        );
    }
    let wide = run(ns.kubectl().args(["get", "was", "-o", "wide"])).unwrap();
    assert!(wide.stdout.lines().next().unwrap_or_default().contains("FAILED"), "{}", wide.stdout);
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    let c = cluster();
    let out = run(c.kubectl().args(["explain", "whatsappsession.spec.clienteId"])).unwrap();
    assert!(out.stdout.contains("The tenant this session belongs to"), "{}", out.stdout);
    let out = run(c.kubectl().args(["explain", "was.spec.storage.whenDeleted"])).unwrap();
    assert!(out.stdout.contains("What happens to the profile volume"), "{}", out.stdout);
    let out = run(c.kubectl().args(["explain", "was.status.qr.code"])).unwrap();
    assert!(out.stdout.contains("The raw string encoded in the QR"), "{}", out.stdout);
}

#[tokio::test]
async fn invalid_sessions_are_rejected_at_admission_with_the_cel_message() {
    let ns = cluster().namespace("smoke-invalid").await;
    let cases = [
        ("negative-id", "  clienteId: -5\n", "clienteId must be a positive integer"),
        (
            "phonecode-no-phone",
            "  clienteId: 1\n  pairing:\n    method: PhoneCode\n",
            "pairing.phoneNumber is required when pairing.method is PhoneCode",
        ),
        (
            "bad-phone",
            "  clienteId: 1\n  pairing:\n    method: PhoneCode\n    phoneNumber: \"+54 9 11\"\n",
            "pairing.phoneNumber must be 8 to 15 digits",
        ),
        (
            "bad-policy",
            "  clienteId: 1\n  storage:\n    whenDeleted: Keep\n",
            "storage.whenDeleted must be Retain or Delete",
        ),
        (
            "bad-size",
            "  clienteId: 1\n  storage:\n    size: lots\n",
            "storage.size must be a positive quantity",
        ),
        (
            "bad-args",
            "  clienteId: 1\n  browser:\n    extraArgs: [\"--user-data-dir=/tmp/x\"]\n",
            "browser.extraArgs must not set --user-data-dir",
        ),
    ];
    for (name, spec, message) in cases {
        let out = ns.apply(&session_yaml(name, spec));
        assert!(!out.success, "{name} was accepted: {out:?}");
        assert!(out.stderr.contains(message), "{name}: expected {message:?} in:\n{}", out.stderr);
    }
    let none = run(ns.kubectl().args(["get", "was", "-o", "name"])).unwrap();
    assert_eq!(none.stdout.trim(), "", "a rejected session was stored");

    // clienteId cannot change after creation.
    assert!(ns.apply(&session_yaml("fixed", "  clienteId: 7\n")).success);
    let out = ns.apply(&session_yaml("fixed", "  clienteId: 8\n"));
    assert!(!out.success && out.stderr.contains("clienteId is immutable"), "{out:?}");
    let kept =
        output(ns.kubectl().args(["get", "was", "fixed", "-o", "jsonpath={.spec.clienteId}"])).unwrap();
    assert_eq!(kept.stdout, "7");
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() {
    let ns = cluster().namespace("smoke-defaults").await;
    let api: Api<WhatsAppSession> = ns.api();
    let created: WhatsAppSession = serde_json::from_value(json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
        "metadata": {"name": "d"}, "spec": {"clienteId": 3}
    }))
    .unwrap();
    api.create(&PostParams::default(), &created).await.unwrap();
    let raw = run(ns.kubectl().args(["get", "was", "d", "-o", "json"])).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    assert_eq!(stored["spec"]["qr"]["maxAttempts"], 6);
    assert_eq!(stored["spec"]["send"]["ratePerMinute"], 20);
    assert_eq!(stored["spec"]["storage"]["size"], "1Gi");
    assert_eq!(stored["spec"]["storage"]["whenDeleted"], "Retain");
    assert_eq!(stored["spec"]["pairing"]["method"], "QR");
}

#[tokio::test]
async fn a_statefulset_gets_a_running_pod_and_a_bound_volume() {
    let ns = cluster().namespace("smoke-sts").await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "example.invalid/web:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }]}
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }]
        }
    }))
    .unwrap();
    ns.api::<StatefulSet>().create(&PostParams::default(), &sts).await.unwrap();

    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let volume = eventually("PVC data-web-0 to be Bound", Duration::from_secs(60), || async {
        let pvc = pvcs.get_opt("data-web-0").await.map_err(|e| e.to_string())?;
        Ok(pvc
            .and_then(|p| p.status.filter(|s| s.phase.as_deref() == Some("Bound")).and(p.spec))
            .and_then(|s| s.volume_name))
    })
    .await;
    assert!(!volume.is_empty());

    let pods: Api<Pod> = ns.api();
    let pod = eventually("pod web-0 to be Running", Duration::from_secs(60), || async {
        let pod = pods.get_opt("web-0").await.map_err(|e| e.to_string())?;
        Ok(pod.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
    })
    .await;
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some(whatsapp_tests::cluster::NODE_NAME));
}
