//! Operator benchmark (prints numbers; asserts nothing):
//!
//! 1. N WhatsAppSessions created at once: time until every one is `Reconciled` (all children
//!    exist) and until every pod is Ready;
//! 2. the same child objects created directly through the API, in the same run, for scale;
//! 3. the operator's RSS with N sessions, and its writes over an idle minute.
//!
//! Run: `cargo build --release -p whatsapp-operator && cargo run --release -p whatsapp-tests
//! --bin bench-operator -- 1000`.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;
use whatsapp_crds::WhatsAppSession;
use whatsapp_tests::harness::{cluster, eventually};
use whatsapp_tests::processes::Operator;

const CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let c = cluster();
    println!(
        "operator benchmark: {n} sessions, {CONCURRENCY} concurrent creates, Kubernetes control plane on this machine"
    );

    // 1. Through the operator.
    let ns = c.namespace("bench-op").await;
    let op = Operator::start(&ns, "bench", "bench", &[]);
    op.wait_leading().await;
    let sessions: Api<WhatsAppSession> = ns.api();
    let t0 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let sessions = sessions.clone();
            async move {
                let s: WhatsAppSession = serde_json::from_value(json!({
                    "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
                    "metadata": {"name": format!("s{i}")}, "spec": {"clienteId": i + 1}
                }))?;
                sessions.create(&PostParams::default(), &s).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let created = t0.elapsed();
    let limit = Duration::from_secs(1800);
    let count = |cond: &'static str| {
        let sessions = sessions.clone();
        async move {
            let list = sessions.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            Ok::<usize, String>(
                list.items
                    .iter()
                    .filter(|s| {
                        s.status.as_ref().is_some_and(|st| {
                            st.conditions.iter().any(|c| c.type_ == cond && c.status == "True")
                        })
                    })
                    .count(),
            )
        }
    };
    eventually("every session Reconciled", limit, || async {
        Ok((count("Reconciled").await? == n).then_some(()))
    })
    .await;
    let reconciled = t0.elapsed();
    let statefulsets = ns.api::<StatefulSet>().list_metadata(&ListParams::default()).await?.items.len();
    eventually("every session PodReady", limit, || async {
        Ok((count("PodReady").await? == n).then_some(()))
    })
    .await;
    let pods_ready = t0.elapsed();
    let rss = op.rss_kib();
    println!(
        "through the operator: creates sent in {:.1}s; all {n} Reconciled after {:.1}s ({statefulsets} StatefulSets); all pods Ready after {:.1}s",
        created.as_secs_f64(),
        reconciled.as_secs_f64(),
        pods_ready.as_secs_f64()
    );
    println!("operator RSS with {n} sessions: {:.1} MiB", rss as f64 / 1024.0);

    // 3. An idle minute.
    let writes = |text: String| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("whatsapp_operator_kube_writes_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = writes(op.metrics().await.unwrap_or_default());
    let reconciles_before = op.metric("whatsapp_operator_reconciliations_total").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_writes = writes(op.metrics().await.unwrap_or_default()) - before;
    let idle_reconciles = op.metric("whatsapp_operator_reconciliations_total").await - reconciles_before;
    println!(
        "idle minute: {idle_writes} operator writes ({idle_reconciles} reconciles); Lease renewals not counted"
    );

    // 2. The same objects straight through the API, for scale.
    let direct = c.namespace("bench-direct").await;
    let objects = copy_children(&ns.client, &ns.name).await?;
    let t1 = Instant::now();
    let total = objects.len();
    let client = direct.client.clone();
    let target = direct.name.clone();
    stream::iter(objects)
        .map(|obj| {
            let client = client.clone();
            let target = target.clone();
            async move { create_raw(&client, &target, obj).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    println!(
        "directly through the API: the same {total} child objects ({} per session) created in {:.1}s",
        total / n.max(1),
        t1.elapsed().as_secs_f64()
    );
    drop(op);
    Ok(())
}

/// The operator-made children of every session in `ns`, stripped to what a user would create.
async fn copy_children(client: &Client, ns: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    macro_rules! take {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), ns);
            let lp = ListParams::default().labels("app.kubernetes.io/managed-by=whatsapp-operator");
            for item in api.list(&lp).await?.items {
                let mut v = serde_json::to_value(&item)?;
                v["apiVersion"] = json!(<$kind>::api_version(&()));
                v["kind"] = json!(<$kind>::kind(&()));
                let meta = &mut v["metadata"];
                meta["namespace"] = json!(null);
                for key in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "managedFields",
                    "ownerReferences",
                    "generation",
                ] {
                    meta.as_object_mut().unwrap().remove(key);
                }
                v.as_object_mut().unwrap().remove("status");
                out.push(v);
            }
        }};
    }
    take!(Secret);
    take!(ServiceAccount);
    take!(Role);
    take!(RoleBinding);
    take!(Service);
    take!(StatefulSet);
    Ok(out)
}

async fn create_raw(client: &Client, ns: &str, mut obj: serde_json::Value) -> anyhow::Result<()> {
    obj["metadata"]["namespace"] = json!(ns);
    // Cluster IPs of the original Service cannot be reused.
    if obj["kind"] == "Service" {
        obj["spec"].as_object_mut().map(|s| s.remove("clusterIPs"));
    }
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    macro_rules! post {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), ns);
            api.create(&PostParams::default(), &serde_json::from_value(obj)?).await?;
        }};
    }
    match kind.as_str() {
        "Secret" => post!(Secret),
        "ServiceAccount" => post!(ServiceAccount),
        "Role" => post!(Role),
        "RoleBinding" => post!(RoleBinding),
        "Service" => post!(Service),
        "StatefulSet" => post!(StatefulSet),
        other => anyhow::bail!("unexpected kind {other}"),
    }
    Ok(())
}
