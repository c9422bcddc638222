//! Hub benchmark (prints numbers; asserts nothing):
//!
//! 1. status reads (JWT verified, served from the watch cache) per second and p50/p99 latency
//!    at 64 connections, beside a bare axum handler (a separate process, same machine, same
//!    run, same load generator);
//! 2. SSE delivery latency: a session's status written to the API server -> the event at a
//!    subscribed client;
//! 3. the hub's RSS with N sessions cached (half of them showing a QR code).
//!
//! Run: `cargo run -p whatsapp-tests --bin bench-hub -- 1000` (add `--release` to both this and
//! `cargo build -p whatsapp-hub` for production numbers).

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use whatsapp_crds::WhatsAppSession;
use whatsapp_tests::cluster::free_port;
use whatsapp_tests::harness::{cluster, eventually};
use whatsapp_tests::hub::{Hub, HubOptions, tenant_token};
use whatsapp_tests::processes::rss_kib;

const CONNECTIONS: usize = 64;
const LOAD_SECONDS: u64 = 10;
const CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--bare-server") {
        return bare_server(std::env::args().nth(2).unwrap_or_default().parse()?).await;
    }
    let n: i64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let ns = cluster().namespace("bench-hub").await;
    println!("hub benchmark: {n} sessions, {CONNECTIONS} connections for {LOAD_SECONDS} s per target");

    // N sessions, half of them waiting for a QR scan (their QR images are cached too).
    let sessions: Api<WhatsAppSession> = ns.api();
    stream::iter(1..=n)
        .map(|id| {
            let sessions = sessions.clone();
            async move {
                let s: WhatsAppSession = serde_json::from_value(json!({
                    "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
                    "metadata": {"name": format!("cliente-{id}")}, "spec": {"clienteId": id}
                }))?;
                sessions.create(&PostParams::default(), &s).await?;
                let status = if id % 2 == 0 {
                    json!({"state": "QR_REQUIRED", "qr": {"code": format!("2@{id:0>40},key{id}a,key{id}b,key{id}c"),
                          "attempts": 1, "updatedAt": "2026-11-23T10:00:00Z"}})
                } else {
                    json!({"state": "READY", "me": {"phone": format!("549110000{id:04}")}})
                };
                write_status(&sessions, &format!("cliente-{id}"), status).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;

    let started = Instant::now();
    let hub = Hub::ready(&ns, HubOptions::default()).await;
    let synced = started.elapsed();
    eventually("every session in the hub's cache", Duration::from_secs(120), || async {
        Ok(hub.metrics().await.contains(&format!("whatsapp_hub_cache_sessions {n}")).then_some(()))
    })
    .await;
    println!("hub start -> serving {n} cached sessions: {:.2} s", synced.as_secs_f64());
    let rss_idle = rss_kib(hub.pid());

    // 1. Throughput and latency, hub then bare axum.
    let tokens: Vec<(i64, String)> = (1..=n).map(|id| (id, tenant_token(id))).collect();
    let hub_url = hub.url();
    let hub_load = load(move |i| {
        let (id, token) = &tokens[i % tokens.len()];
        (format!("{hub_url}/api/whatsapp/{id}/status"), Some(token.clone()))
    })
    .await;
    report("hub GET /api/whatsapp/{id}/status (JWT + cache)", &hub_load);
    let rss_loaded = rss_kib(hub.pid());

    let port = free_port()?;
    let mut bare = std::process::Command::new(std::env::current_exe()?)
        .args(["--bare-server", &port.to_string()])
        .spawn()?;
    let bare_url = format!("http://127.0.0.1:{port}/status");
    eventually("the bare server", Duration::from_secs(10), || async {
        Ok(reqwest::get(&bare_url).await.ok().map(|_| ()))
    })
    .await;
    let bare_load = load(move |_| (bare_url.clone(), None)).await;
    report("bare axum handler (fixed JSON)", &bare_load);
    let _ = bare.kill();
    let _ = bare.wait();

    // 2. SSE delivery latency.
    let mut events = hub.events(1, &tenant_token(1)).await;
    events.until("the first event", Duration::from_secs(10), |_, _| true).await;
    let mut delivery = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        write_status(&sessions, "cliente-1", json!({"state": "READY", "message": format!("change {i}")}))
            .await?;
        let wanted = format!("change {i}");
        events.until("the change", Duration::from_secs(10), |_, d| d["message"] == wanted.as_str()).await;
        delivery.push(t.elapsed());
    }
    delivery.sort();
    println!(
        "SSE delivery (status patch sent -> event received), 30 changes: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(delivery[delivery.len() / 2]),
        ms(delivery[delivery.len() * 95 / 100]),
        ms(delivery[delivery.len() - 1])
    );

    println!(
        "hub RSS with {n} sessions cached: {:.1} MiB after sync, {:.1} MiB after the load",
        rss_idle as f64 / 1024.0,
        rss_loaded as f64 / 1024.0
    );
    Ok(())
}

async fn write_status(api: &Api<WhatsAppSession>, name: &str, status: serde_json::Value) -> kube::Result<()> {
    let body = json!({"apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession", "status": status});
    api.patch_status(name, &PatchParams::apply("bench-session-pod").force(), &Patch::Apply(body)).await?;
    Ok(())
}

struct Load {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// CONNECTIONS clients, each on its own keep-alive connection, for LOAD_SECONDS.
async fn load(target: impl Fn(usize) -> (String, Option<String>) + Send + Sync + 'static) -> Load {
    let target = std::sync::Arc::new(target);
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let target = target.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0, w);
                while Instant::now() < deadline {
                    let (url, token) = target(i);
                    i += CONNECTIONS;
                    let mut request = client.get(url);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    let t = Instant::now();
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Load { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for worker in workers {
        let (latencies, errors) = worker.await.unwrap();
        all.requests += latencies.len();
        all.errors += errors;
        all.latencies.extend(latencies);
    }
    all.elapsed = started.elapsed();
    all.latencies.sort();
    all
}

fn report(what: &str, load: &Load) {
    let pct = |p: usize| load.latencies.get(load.latencies.len() * p / 100).copied().unwrap_or_default();
    println!(
        "{what}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} requests, {} errors)",
        load.requests as f64 / load.elapsed.as_secs_f64(),
        ms(pct(50)),
        ms(pct(99)),
        load.requests,
        load.errors
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The baseline: axum answering a fixed JSON body, nothing else.
async fn bare_server(port: u16) -> anyhow::Result<()> {
    let body = r#"{"connected":true,"state":"READY","session":"cliente-1","clienteId":1,"namespace":"bench","suspended":false}"#;
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || async move {
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
