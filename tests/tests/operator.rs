//! The operator against the real control plane: each test runs its own `whatsapp-operator`
//! process watching only the test's namespace, and drives it with kubectl like a user.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use whatsapp_crds::WhatsAppSession;
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{Operator, huge_pages_allowed};
use whatsapp_tests::{output, run};

const WAIT: Duration = Duration::from_secs(60);

fn session_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: whatsapp.leadmaster.dev/v1alpha1\nkind: WhatsAppSession\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn create(ns: &TestNamespace, name: &str, spec: &str) {
    let out = ns.apply(&session_yaml(name, spec));
    assert!(out.success, "kubectl apply: {out:?}");
}

/// Sessions `s1`..`sN` (clienteId 1..N), applied at once, each Reconciled with its pod Ready.
fn converged_sessions(ns: &TestNamespace, n: usize) {
    let yaml: Vec<String> =
        (1..=n).map(|i| session_yaml(&format!("s{i}"), &format!("  clienteId: {i}\n"))).collect();
    assert!(ns.apply(&yaml.join("---\n")).success);
    wait_all_converged(ns, "120s");
}

/// `kubectl wait` until every session of `ns` is Reconciled with its pod Ready.
fn wait_all_converged(ns: &TestNamespace, timeout: &str) {
    for condition in ["Reconciled", "PodReady"] {
        run(ns.kubectl().args([
            "wait",
            &format!("--for=condition={condition}"),
            &format!("--timeout={timeout}"),
            "was",
            "--all",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `kubectl wait` on one of the operator's conditions, as a user would script it.
fn wait_condition(ns: &TestNamespace, name: &str, condition: &str) {
    run(ns.kubectl().args([
        "wait",
        &format!("--for=condition={condition}"),
        "--timeout=60s",
        &format!("was/{name}"),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn condition(ns: &TestNamespace, name: &str, type_: &str) -> Option<(String, String)> {
    let session = ns.api::<WhatsAppSession>().get(name).await.ok()?;
    let c = session.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

async fn event_reasons(ns: &TestNamespace, name: &str) -> Vec<String> {
    let events: Api<Event> = ns.api();
    let list =
        events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await.unwrap();
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

async fn wait_event(ns: &TestNamespace, name: &str, reason: &str) {
    eventually(&format!("event {reason} on {name}"), WAIT, || async {
        Ok(event_reasons(ns, name).await.iter().any(|r| r == reason).then_some(()))
    })
    .await
}

async fn wait_pod_running(ns: &TestNamespace, pod: &str) -> Pod {
    let pods: Api<Pod> = ns.api();
    eventually(&format!("pod {pod} Running"), WAIT, || async {
        let p = pods.get_opt(pod).await.map_err(|e| e.to_string())?;
        Ok(p.filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be gone"), WAIT, || async {
        Ok(api.get_opt(name).await.map_err(|e| e.to_string())?.is_none().then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_session_gets_every_child_with_the_expected_spec() {
    let ns = cluster().namespace("op-create").await;
    let op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 42\n  storage:\n    size: 2Gi\n");
    wait_condition(&ns, "acme", "Reconciled");
    // One live object keeps a whole 2 MiB huge page resident: the operator turns transparent
    // huge pages off for itself as it starts (see its `memory` module).
    assert_eq!(huge_pages_allowed(op.pid()), Some(false), "THP_enabled in the operator's /proc status");
    wait_condition(&ns, "acme", "PodReady");

    let sts = ns.api::<StatefulSet>().get("acme").await.unwrap();
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("acme"));
    let claim = &spec.volume_claim_templates.unwrap()[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "2Gi"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("acme-session"));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("whatsapp-session:test"));
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));

    let svc = ns.api::<Service>().get("acme").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"), "headless");
    ns.api::<ServiceAccount>().get("acme-session").await.unwrap();
    let role = ns.api::<Role>().get("acme-session").await.unwrap();
    assert!(
        role.rules.unwrap().iter().all(|r| r.resource_names.as_deref() == Some(&["acme".to_string()][..]))
    );
    let binding = ns.api::<RoleBinding>().get("acme-session").await.unwrap();
    assert_eq!(binding.subjects.unwrap()[0].name, "acme-session");
    let secret = ns.api::<Secret>().get("acme-hub-token").await.unwrap();
    assert_eq!(secret.data.unwrap()["token"].0.len(), 64);

    let pvc = ns.api::<PersistentVolumeClaim>().get("profile-acme-0").await.unwrap();
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    let session = ns.api::<WhatsAppSession>().get("acme").await.unwrap();
    assert_eq!(session.status.unwrap().observed_generation, session.metadata.generation);
    assert!(event_reasons(&ns, "acme").await.contains(&"Created".to_string()));
}

#[tokio::test]
async fn suspend_scales_to_zero_and_resume_comes_back_on_the_same_volume() {
    let ns = cluster().namespace("op-suspend").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    wait_condition(&ns, "acme", "PodReady");
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let before = pvcs.get("profile-acme-0").await.unwrap();

    run(ns.kubectl().args(["patch", "was", "acme", "--type=merge", "-p", r#"{"spec":{"suspended":true}}"#]))
        .unwrap();
    wait_gone(&ns.api::<Pod>(), "acme-0").await;
    assert_eq!(ns.api::<StatefulSet>().get("acme").await.unwrap().spec.unwrap().replicas, Some(0));
    eventually("PodReady=False/Suspended", WAIT, || async {
        Ok((condition(&ns, "acme", "PodReady").await == Some(("False".into(), "Suspended".into())))
            .then_some(()))
    })
    .await;
    wait_event(&ns, "acme", "Suspended").await;
    let kept = pvcs.get("profile-acme-0").await.expect("the claim survives suspension");
    assert_eq!(kept.metadata.uid, before.metadata.uid);

    run(ns.kubectl().args(["patch", "was", "acme", "--type=merge", "-p", r#"{"spec":{"suspended":false}}"#]))
        .unwrap();
    let pod = wait_pod_running(&ns, "acme-0").await;
    let claim =
        pod.spec.unwrap().volumes.unwrap().into_iter().find_map(|v| v.persistent_volume_claim).unwrap();
    assert_eq!(claim.claim_name, "profile-acme-0");
    let after = pvcs.get("profile-acme-0").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid, "the same claim, so the same login");
    assert_eq!(after.spec.unwrap().volume_name, before.spec.unwrap().volume_name);
    wait_condition(&ns, "acme", "PodReady");
    wait_event(&ns, "acme", "Resumed").await;
    // Spec edits are not drift: nothing was "repaired".
    let reasons = event_reasons(&ns, "acme").await;
    assert!(!reasons.iter().any(|r| r == "Repaired"), "{reasons:?}");
}

#[tokio::test]
async fn lost_pods_and_tampered_children_are_repaired() {
    let ns = cluster().namespace("op-repair").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    wait_condition(&ns, "acme", "PodReady");
    let pods: Api<Pod> = ns.api();
    let first = pods.get("acme-0").await.unwrap();

    // The pod is deleted: a new one comes back on the same claim.
    pods.delete("acme-0", &DeleteParams::default()).await.unwrap();
    let pods_ref = &pods;
    let first_uid = first.metadata.uid.clone();
    eventually("a new pod acme-0", WAIT, || async {
        let p = pods_ref.get_opt("acme-0").await.map_err(|e| e.to_string())?;
        Ok(p.filter(|p| {
            p.metadata.uid != first_uid
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    })
    .await;
    // Nothing rolled that pod: it was lost.
    wait_event(&ns, "acme", "PodLost").await;

    // Someone deletes the Service: restored.
    let services: Api<Service> = ns.api();
    services.delete("acme", &DeleteParams::default()).await.unwrap();
    eventually("the Service to be restored", WAIT, || async {
        Ok(services
            .get_opt("acme")
            .await
            .map_err(|e| e.to_string())?
            .filter(|s| s.metadata.deletion_timestamp.is_none()))
    })
    .await;

    // Someone edits the StatefulSet: restored.
    run(ns.kubectl().args(["scale", "statefulset", "acme", "--replicas=3"])).unwrap();
    let statefulsets: Api<StatefulSet> = ns.api();
    eventually("the StatefulSet back at one replica", WAIT, || async {
        let sts = statefulsets.get("acme").await.map_err(|e| e.to_string())?;
        Ok((sts.spec.and_then(|s| s.replicas) == Some(1)).then_some(()))
    })
    .await;
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "session", "image": "evil:1"}]}}}});
    statefulsets.patch("acme", &PatchParams::default(), &Patch::Strategic(&patch)).await.unwrap();
    eventually("the session image restored", WAIT, || async {
        let sts = statefulsets.get("acme").await.map_err(|e| e.to_string())?;
        let image = sts.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
        Ok((image.as_deref() == Some("whatsapp-session:test")).then_some(()))
    })
    .await;
    wait_event(&ns, "acme", "Repaired").await;

    // Someone wipes the status: the operator's conditions are written again.
    let wipe = r#"{"status":{"conditions":null,"observedGeneration":null}}"#;
    run(ns.kubectl().args(["patch", "was", "acme", "--subresource=status", "--type=merge", "-p", wipe]))
        .unwrap();
    eventually("the conditions written again", WAIT, || async {
        Ok(condition(&ns, "acme", "Reconciled").await.filter(|(status, _)| status == "True"))
    })
    .await;
}

/// The operator's field-manager entries of an object: (operation, fields).
fn operator_fields(meta: &kube::api::ObjectMeta) -> Vec<(String, String)> {
    let entries = meta.managed_fields.iter().flatten();
    entries
        .filter(|e| e.manager.as_deref() == Some("whatsapp-operator"))
        .map(|e| (e.operation.clone().unwrap_or_default(), json!(e.fields_v1).to_string()))
        .collect()
}

#[tokio::test]
async fn what_the_spec_stops_asking_for_leaves_the_children_it_created() {
    let ns = cluster().namespace("op-owned").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    let resources = "  browser:\n    resources:\n      requests: {cpu: 200m, memory: 600Mi}\n      limits: {cpu: '2', memory: 1Gi}\n";
    create(&ns, "acme", &format!("  clienteId: 1\n{resources}"));
    wait_condition(&ns, "acme", "Reconciled");
    let statefulsets: Api<StatefulSet> = ns.api();
    let limits = |sts: &StatefulSet| {
        let template = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let resources = template.and_then(|t| t.containers[0].resources.as_ref());
        let limits = resources.and_then(|r| r.limits.clone()).unwrap_or_default();
        limits.into_iter().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>()
    };
    let created = statefulsets.get("acme").await.unwrap();
    assert_eq!(limits(&created), ["cpu=2", "memory=1Gi"]);
    // Created, not applied: the fields are the create's.
    let operations: Vec<String> = operator_fields(&created.metadata).into_iter().map(|(op, _)| op).collect();
    assert_eq!(operations, ["Update"], "{:?}", created.metadata.managed_fields);

    // The spec drops its resources: the defaults replace them, the CPU limit goes.
    create(&ns, "acme", "  clienteId: 1\n");
    let sts = eventually("the CPU limit gone", WAIT, || async {
        let sts = statefulsets.get("acme").await.map_err(|e| e.to_string())?;
        Ok((limits(&sts) == ["memory=1Gi"]).then_some(sts))
    })
    .await;
    let fields = operator_fields(&sts.metadata);
    assert_eq!(fields.len(), 1, "one entry of the operator's, applied: {fields:?}");
    assert_eq!(fields[0].0, "Apply");
    let owned: serde_json::Value = serde_json::from_str(&fields[0].1).unwrap();
    let limits_owned = owned.pointer("/f:spec/f:template/f:spec/f:containers");
    let limits_owned = limits_owned.and_then(|c| c.as_object()).and_then(|c| c.values().next());
    let limits_owned = limits_owned.and_then(|c| c.pointer("/f:resources/f:limits")).unwrap();
    assert_eq!(limits_owned.get("f:cpu"), None, "{limits_owned}");
    assert!(limits_owned.get("f:memory").is_some(), "{limits_owned}");
    wait_condition(&ns, "acme", "Reconciled");
}

#[tokio::test]
async fn deleting_a_session_collects_its_children_and_honours_when_deleted() {
    let ns = cluster().namespace("op-delete").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "keep", "  clienteId: 1\n  storage:\n    whenDeleted: Retain\n");
    create(&ns, "drop", "  clienteId: 2\n  storage:\n    whenDeleted: Delete\n");
    wait_condition(&ns, "keep", "PodReady");
    wait_condition(&ns, "drop", "PodReady");

    run(ns.kubectl().args(["delete", "was", "keep", "drop", "--wait=true"])).unwrap();
    for name in ["keep", "drop"] {
        wait_gone(&ns.api::<StatefulSet>(), name).await;
        wait_gone(&ns.api::<Service>(), name).await;
        wait_gone(&ns.api::<ServiceAccount>(), &format!("{name}-session")).await;
        wait_gone(&ns.api::<Role>(), &format!("{name}-session")).await;
        wait_gone(&ns.api::<RoleBinding>(), &format!("{name}-session")).await;
        wait_gone(&ns.api::<Secret>(), &format!("{name}-hub-token")).await;
        wait_gone(&ns.api::<Pod>(), &format!("{name}-0")).await;
    }
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    wait_gone(&pvcs, "profile-drop-0").await;
    let kept = pvcs.get_opt("profile-keep-0").await.unwrap();
    assert!(kept.is_some_and(|p| p.metadata.deletion_timestamp.is_none()), "Retain keeps the login volume");

    // Another tenant's session by the same name never mounts that login.
    create(&ns, "keep", "  clienteId: 9\n");
    eventually("Reconciled=False/VolumeOfAnotherTenant", WAIT, || async {
        let c = condition(&ns, "keep", "Reconciled").await;
        Ok((c == Some(("False".into(), "VolumeOfAnotherTenant".into()))).then_some(()))
    })
    .await;
    wait_event(&ns, "keep", "InvalidSpec").await;
    assert!(ns.api::<StatefulSet>().get_opt("keep").await.unwrap().is_none(), "no pod mounts it");
    // Handed over on purpose, as the condition's message says: the session starts on it.
    let session = ns.api::<WhatsAppSession>().get("keep").await.unwrap();
    let message =
        session.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Reconciled").unwrap().message;
    let command = message.split('`').nth(1).expect("the message names the command");
    assert_eq!(command, "kubectl label pvc profile-keep-0 whatsapp.leadmaster.dev/cliente-id=9 --overwrite");
    run(ns.kubectl().args(command.split(' ').skip(1))).unwrap();
    wait_condition(&ns, "keep", "Reconciled");
    wait_condition(&ns, "keep", "PodReady");
}

#[tokio::test]
async fn the_session_service_account_may_touch_only_its_own_session() {
    let ns = cluster().namespace("op-rbac").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    create(&ns, "other", "  clienteId: 2\n");
    wait_condition(&ns, "acme", "Reconciled");
    wait_condition(&ns, "other", "Reconciled");

    let who = format!("system:serviceaccount:{}:acme-session", ns.name);
    let can = |args: &[&str]| {
        let out = output(ns.kubectl().args(["auth", "can-i", "--as", &who]).args(args)).unwrap();
        out.stdout.trim() == "yes"
    };
    assert!(can(&["patch", "whatsappsessions.whatsapp.leadmaster.dev/acme", "--subresource=status"]));
    assert!(can(&["get", "whatsappsessions.whatsapp.leadmaster.dev/acme"]));
    assert!(can(&["watch", "whatsappsessions.whatsapp.leadmaster.dev/acme"]));
    assert!(!can(&["get", "whatsappsessions.whatsapp.leadmaster.dev/other"]), "another session");
    assert!(!can(&["patch", "whatsappsessions.whatsapp.leadmaster.dev/other", "--subresource=status"]));
    assert!(!can(&["patch", "whatsappsessions.whatsapp.leadmaster.dev/acme"]), "its own spec");
    assert!(!can(&["list", "whatsappsessions.whatsapp.leadmaster.dev"]), "the whole list");
    assert!(!can(&["get", "secrets"]));
    assert!(!can(&["get", "secrets/acme-hub-token"]));
    assert!(!can(&["list", "pods"]));
    assert!(!can(&["create", "events"]));
    assert!(!can(&["get", "configmaps"]));
    assert!(!can(&["list", "whatsappsessions.whatsapp.leadmaster.dev", "-A"]));
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let ns = cluster().namespace("op-leader").await;
    let mut a = Operator::start(&ns, "op-a", "shared", &[]);
    a.wait_leading().await;
    let mut b = Operator::start(&ns, "op-b", "shared", &[]);
    create(&ns, "first", "  clienteId: 1\n");
    wait_condition(&ns, "first", "Reconciled");
    // b is up and ready, but only standing by.
    eventually("the standby's metrics", WAIT, || async { Ok(b.metrics().await.ok()) }).await;
    assert_eq!(a.metric("whatsapp_operator_leader").await, 1.0);
    assert_eq!(b.metric("whatsapp_operator_leader").await, 0.0);
    assert!(a.metric("whatsapp_operator_reconciliations_total").await > 0.0);
    assert_eq!(b.metric("whatsapp_operator_reconciliations_total").await, 0.0, "the standby reconciled");

    // The leader dies without releasing the lease: the standby takes over when it expires.
    a.kill();
    b.wait_leading().await;
    create(&ns, "second", "  clienteId: 2\n");
    wait_condition(&ns, "second", "Reconciled");
    assert!(b.metric("whatsapp_operator_reconciliations_total").await > 0.0);
    assert!(b.running());
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_the_standby_leads() {
    use whatsapp_tests::tcpproxy::CuttableProxy;
    let ns = cluster().namespace("op-fence").await;
    let server = ns.cluster.server();
    let target: std::net::SocketAddr = server.trim_start_matches("https://").parse().unwrap();
    let proxy = CuttableProxy::start(target).await.unwrap();
    let kubeconfig = ns.cluster.dir.join(format!("{}-via-proxy.kubeconfig", ns.name));
    let text = std::fs::read_to_string(&ns.cluster.kubeconfig).unwrap();
    std::fs::write(&kubeconfig, text.replace(&server, &format!("https://{}", proxy.addr))).unwrap();
    let mut a = Operator::start_via(&ns, "op-a", "shared", &[], &kubeconfig);
    a.wait_leading().await;
    let mut b = Operator::start(&ns, "op-b", "shared", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    wait_condition(&ns, "acme", "Reconciled");

    // The leader's network to the API server fails: it stops leading on its own clock, while
    // its Lease is still valid, so the standby can only lead after it stopped.
    proxy.cut();
    eventually("the cut-off leader to step down", WAIT, || async {
        Ok((a.metric("whatsapp_operator_leader").await == 0.0).then_some(()))
    })
    .await;
    b.wait_leading().await;
    // No overlap, on the one clock both logs share.
    let stopped = logged_at(&a.log, "stepped down").expect("the old leader says it stepped down");
    let started = logged_at(&b.log, "leading: reconciling").expect("the new leader says it leads");
    assert!(stopped < started, "the standby led at {started} before the old leader stopped at {stopped}");
    let written = writes(&a).await;

    // The network comes back: the old leader finds the Lease taken and stays a standby; the
    // new one does the work.
    proxy.restore();
    run(ns.kubectl().args([
        "patch",
        "was",
        "acme",
        "--type=merge",
        "-p",
        r#"{"spec":{"send":{"ratePerMinute":7}}}"#,
    ]))
    .unwrap();
    eventually("the new leader to apply the edit", WAIT, || async {
        let session = ns.api::<WhatsAppSession>().get("acme").await.unwrap();
        let generation = session.metadata.generation;
        let observed =
            session.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Reconciled"));
        Ok(observed.is_some_and(|c| c.observed_generation == generation).then_some(()))
    })
    .await;
    assert_eq!(writes(&a).await, written, "the old leader wrote after it was cut off");
    assert_eq!(a.metric("whatsapp_operator_leader").await, 0.0);
    assert!(a.running() && b.running());
}

#[tokio::test]
async fn an_idle_operator_makes_no_writes_while_the_session_pod_patches_its_status() {
    let ns = cluster().namespace("op-idle").await;
    let op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    wait_condition(&ns, "acme", "Reconciled");
    wait_condition(&ns, "acme", "PodReady");
    // Let the last transitions settle: no new write over a 3 s observation window.
    eventually("operator writes to settle", WAIT, || async {
        let first = writes(&op).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok((writes(&op).await == first).then_some(()))
    })
    .await;
    let before = writes(&op).await;
    let audit_before = audit_writes(&ns);
    let reconciles_before = op.metric("whatsapp_operator_reconciliations_total").await;

    // A minute of the session pod reporting its state, as it does in production.
    let sessions: Api<WhatsAppSession> = ns.api();
    let started = Instant::now();
    let mut patches = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let state = ["CONNECTING", "QR_REQUIRED", "READY"][patches % 3];
        let status = json!({
            "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
            "status": {"state": state, "message": format!("patch {patches}")}
        });
        sessions
            .patch_status("acme", &PatchParams::apply("whatsapp-session").force(), &Patch::Apply(&status))
            .await
            .unwrap();
        patches += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let reconciles = op.metric("whatsapp_operator_reconciliations_total").await - reconciles_before;
    assert!(reconciles >= 10.0, "the status patches did reach the operator ({reconciles} reconciles)");
    assert_eq!(writes(&op).await, before, "the operator wrote while idle");
    assert_eq!(audit_writes(&ns), audit_before, "the audit log shows operator writes while idle");
}

#[tokio::test]
async fn a_failover_on_converged_sessions_writes_nothing_and_warns_nothing() {
    const SESSIONS: usize = 30;
    let ns = cluster().namespace("op-failover").await;
    let mut a = Operator::start(&ns, "op-a", "shared", &[]);
    a.wait_leading().await;
    converged_sessions(&ns, SESSIONS);
    eventually("operator writes to settle", WAIT, || async {
        let first = writes(&a).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok((writes(&a).await == first).then_some(()))
    })
    .await;
    let audit_before = audit_writes(&ns);
    let warnings_before = warnings(&ns).await;

    // The leader dies; a fresh replica, with empty caches, takes over every session.
    a.kill();
    let b = Operator::start(&ns, "op-b", "shared", &[]);
    b.wait_leading().await;
    eventually("the new leader to reconcile every session", WAIT, || async {
        let done = b.metric("whatsapp_operator_reconciliations_total").await;
        Ok((done >= SESSIONS as f64).then_some(()))
    })
    .await;
    assert_eq!(writes(&b).await, 0.0, "the new leader wrote to converged sessions");
    assert_eq!(audit_writes(&ns), audit_before, "the audit log shows writes after the failover");
    assert_eq!(warnings(&ns).await, warnings_before, "Warning events after the failover");
}

/// When a process first logged a line containing `needle` (its RFC 3339 timestamp).
fn logged_at(log: &std::path::Path, needle: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    // Without the colour codes: each `ESC[…m` ends at its `m`.
    let mut parts = line.split('\u{1b}');
    let mut plain = parts.next().unwrap_or_default().to_string();
    plain.extend(parts.map(|part| part.split_once('m').map_or(part, |(_, rest)| rest)));
    plain.split_whitespace().next()?.parse().ok()
}

/// Warning events in the namespace, as `reason: note`.
async fn warnings(ns: &TestNamespace) -> Vec<String> {
    let events: Api<Event> = ns.api();
    let list = events.list(&ListParams::default().fields("type=Warning")).await.unwrap();
    let mut out: Vec<String> = list
        .items
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The operator's own count of its API writes (Lease renewals are not counted there).
async fn writes(op: &Operator) -> f64 {
    let text = op.metrics().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("whatsapp_operator_kube_writes_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Writes the API server's audit log records from the operator in this namespace, Lease
/// renewals aside.
fn audit_writes(ns: &TestNamespace) -> usize {
    let log = std::fs::read_to_string(ns.cluster.dir.join("logs/audit.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["userAgent"].as_str().is_some_and(|ua| ua.starts_with("whatsapp-operator/")))
        .filter(|e| e["objectRef"]["namespace"] == ns.name.as_str() && e["objectRef"]["resource"] != "leases")
        .count()
}

#[tokio::test]
async fn a_missing_storage_class_is_reported_without_a_hot_loop_and_heals() {
    let ns = cluster().namespace("op-invalid").await;
    let op = Operator::start(&ns, "op", "op", &[]);
    let class = format!("class-{}", ns.name);
    create(&ns, "acme", &format!("  clienteId: 1\n  storage:\n    storageClassName: {class}\n"));
    eventually("Reconciled=False/StorageClassNotFound", WAIT, || async {
        let c = condition(&ns, "acme", "Reconciled").await;
        Ok((c == Some(("False".into(), "StorageClassNotFound".into()))).then_some(()))
    })
    .await;
    wait_event(&ns, "acme", "InvalidSpec").await;
    assert!(ns.api::<StatefulSet>().get_opt("acme").await.unwrap().is_none(), "nothing half-built");
    let session = ns.api::<WhatsAppSession>().get("acme").await.unwrap();
    let message =
        session.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Reconciled").unwrap().message;
    assert!(message.contains(&class), "{message}");

    // No hot loop: over a 10 s observation window, at most a retry or two.
    let before = op.metric("whatsapp_operator_reconciliations_total").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = op.metric("whatsapp_operator_reconciliations_total").await - before;
    assert!(during <= 3.0, "{during} reconciles in 10 s");
    assert!(op.metric("whatsapp_operator_leader").await == 1.0);

    // The class appears: the session heals by itself.
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class}, "provisioner": "kubernetes.io/host-path", "volumeBindingMode": "Immediate"
    }))
    .unwrap();
    let classes: Api<StorageClass> = Api::all(ns.client.clone());
    classes.create(&PostParams::default(), &sc).await.unwrap();
    wait_condition(&ns, "acme", "Reconciled");
    wait_condition(&ns, "acme", "PodReady");
    classes.delete(&class, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_frozen_statefulset_field_change_replaces_it_and_keeps_pod_and_volume() {
    let ns = cluster().namespace("op-frozen").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    create(&ns, "acme", "  clienteId: 1\n");
    wait_condition(&ns, "acme", "PodReady");
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let claim = pvcs.get("profile-acme-0").await.unwrap();
    let sts_uid = ns.api::<StatefulSet>().get("acme").await.unwrap().metadata.uid;

    // The claim template's size cannot change in place.
    create(&ns, "acme", "  clienteId: 1\n  storage:\n    size: 2Gi\n");
    let statefulsets: Api<StatefulSet> = ns.api();
    eventually("a new StatefulSet with the new template", WAIT, || async {
        let sts = statefulsets.get_opt("acme").await.map_err(|e| e.to_string())?;
        Ok(sts.filter(|s| {
            s.metadata.uid != sts_uid
                && s.spec.as_ref().and_then(|s| s.volume_claim_templates.as_ref()).is_some_and(|c| {
                    c[0].spec
                        .as_ref()
                        .and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .is_some_and(|r| r["storage"].0 == "2Gi")
                })
        }))
    })
    .await;
    wait_event(&ns, "acme", "StatefulSetReplaced").await;
    // The host-path class cannot expand volumes: said in an event, the session keeps running.
    wait_event(&ns, "acme", "StorageResizeFailed").await;
    wait_condition(&ns, "acme", "Reconciled");
    wait_condition(&ns, "acme", "PodReady");
    let kept = pvcs.get("profile-acme-0").await.unwrap();
    assert_eq!(kept.metadata.uid, claim.metadata.uid, "the login volume was kept");
    let retention = statefulsets
        .get("acme")
        .await
        .unwrap()
        .spec
        .unwrap()
        .persistent_volume_claim_retention_policy
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
}

/// Watches the namespace's StatefulSets and remembers the most sessions seen restarting at
/// once: a StatefulSet counts from the moment its template is the new one (`is_new`) until it
/// runs it on a ready pod. Also which sessions were ever seen restarting.
#[derive(Default)]
struct Rolls {
    most: usize,
    rolled: std::collections::BTreeSet<String>,
}

fn sts_settled(sts: &StatefulSet) -> bool {
    let Some(status) = sts.status.as_ref() else { return false };
    let wanted = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.observed_generation >= sts.metadata.generation
        && status.current_revision == status.update_revision
        && status.updated_replicas.unwrap_or_default() >= wanted
        && status.ready_replicas.unwrap_or_default() >= wanted
}

/// The bridge-script volume the restarted operator adds to every session pod.
fn has_bridge_volume(sts: &StatefulSet) -> bool {
    let volumes = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.volumes.as_ref());
    volumes.is_some_and(|v| v.iter().any(|v| v.name == "bridge"))
}

async fn watch_rolls(
    api: Api<StatefulSet>,
    rolls: std::sync::Arc<std::sync::Mutex<Rolls>>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store::<StatefulSet>();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut listed = Some(listed);
    while let Some(event) = stream.next().await {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            listed.take().map(|tx| tx.send(()));
        }
        let rolling: Vec<String> = store
            .state()
            .iter()
            .filter(|s| has_bridge_volume(s) && !sts_settled(s))
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        let mut rolls = rolls.lock().unwrap();
        rolls.most = rolls.most.max(rolling.len());
        rolls.rolled.extend(rolling);
    }
}

/// Sessions ever seen with `Reconciled=False/RollPending`.
async fn watch_pending(api: Api<WhatsAppSession>, seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(session)) = stream.next().await {
        let conditions = session.status.map(|s| s.conditions).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Reconciled" && c.reason == "RollPending") {
            seen.lock().unwrap().push(session.metadata.name.unwrap_or_default());
        }
    }
}

#[tokio::test]
async fn a_fleet_wide_template_change_restarts_at_most_the_budget_of_pods_at_a_time() {
    const SESSIONS: usize = 20;
    const BUDGET: usize = 3;
    let ns = cluster().namespace("op-stagger").await;
    let mut before = Operator::start(&ns, "op-a", "op-a", &["--max-rolling-sessions", "3"]);
    before.wait_leading().await;
    converged_sessions(&ns, SESSIONS);
    let rolls = std::sync::Arc::new(std::sync::Mutex::new(Rolls::default()));
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let observer = tokio::spawn(watch_rolls(ns.api(), rolls.clone(), listed_tx));
    let pending = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pending_observer = tokio::spawn(watch_pending(ns.api(), pending.clone()));
    listed_rx.await.expect("the StatefulSet watch listed");

    // An operator upgrade that changes every session's pod template (here: a bridge-script
    // ConfigMap mounted into every pod), as a new session image or hub-token key would.
    before.kill();
    let started = Instant::now();
    let after = Operator::start(
        &ns,
        "op-b",
        "op-b",
        &["--max-rolling-sessions", "3", "--bridge-script-configmap", "wa-bridge"],
    );
    let statefulsets: Api<StatefulSet> = ns.api();
    eventually("every session restarted on the new template", Duration::from_secs(240), || async {
        let list = statefulsets.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let done = list.items.iter().filter(|s| has_bridge_volume(s) && sts_settled(s)).count();
        Ok((done == SESSIONS).then_some(()))
    })
    .await;
    let took = started.elapsed();
    wait_all_converged(&ns, "60s");
    observer.abort();
    pending_observer.abort();
    let waiting = after.metric("whatsapp_operator_pod_restarts{phase=\"waiting\"}").await;
    let rolls = std::mem::take(&mut *rolls.lock().unwrap());
    let mut waited = pending.lock().unwrap().clone();
    waited.sort();
    waited.dedup();
    println!(
        "{SESSIONS} sessions, budget {BUDGET}: at most {} restarting at once; {} waited (RollPending); \
         all on the new template in {:.1} s",
        rolls.most,
        waited.len(),
        took.as_secs_f64()
    );
    assert_eq!(rolls.rolled.len(), SESSIONS, "every session was seen restarting: {:?}", rolls.rolled);
    assert!(rolls.most <= BUDGET, "{} sessions restarted at once, with a budget of {BUDGET}", rolls.most);
    assert!(waited.len() >= SESSIONS / 2, "sessions told RollPending: {waited:?}");
    assert_eq!(waiting, 0.0, "no session waits any more");
    // Planned restarts are told as such (Normal `Restarting`), never as lost pods.
    let lost: Vec<String> = warnings(&ns).await.into_iter().filter(|w| w.starts_with("PodLost")).collect();
    assert!(lost.is_empty(), "PodLost warnings for planned restarts: {lost:?}");
    println!("{} Restarting events", normal_events(&ns, "Restarting").await);
}

/// How many Normal events with `reason` the namespace holds.
async fn normal_events(ns: &TestNamespace, reason: &str) -> usize {
    let events: Api<Event> = ns.api();
    let fields = format!("type=Normal,reason={reason}");
    events.list(&ListParams::default().fields(&fields)).await.unwrap().items.len()
}
