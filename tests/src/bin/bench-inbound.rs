//! Inbound benchmark (prints each figure beside its target), with real Chromium, the WhatsApp
//! Web simulator, the real control plane and a Standard Webhooks receiver on loopback:
//!
//! 1. incoming messages per second from the phone to the webhook endpoint (page -> pod store ->
//!    event log -> signed delivery), for a burst of `BURST` messages sent as fast as the
//!    phone can;
//! 2. delivery latency p50/p99 on a healthy endpoint: each message sent alone, from the phone's
//!    send to the endpoint's receipt;
//! 3. the session process's memory (RSS and PSS, without Chromium) and its outbox file with a
//!    backlog of `BACKLOG` undelivered events (the endpoint down meanwhile), then the time to
//!    drain it once the endpoint is back.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench-inbound [BACKLOG]`
//! (default 100,000; the backlog is made by the phone through the page, so it takes a while).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{SessionProcess, percentile, pss_kib, rss_kib};
use whatsapp_tests::simulator::{SimConfig, Simulator};
use whatsapp_tests::webhook::{Mode, WebhookReceiver};

const PHONE: &str = "5491130000001";
const SENDER: &str = "5491140000002";
const SECRET: &str = "whsec_c2VjcmV0LW9mLXRoZS1iZW5jaG1hcmstMzItYnl0ZXMh";
const BURST: usize = 1_000;
const SINGLES: usize = 100;
const ENDPOINT: &str = "crm";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backlog: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let sim = Simulator::start(SimConfig::default()).await?;
    let ns = cluster().namespace("bench-inbound").await;
    let receiver = WebhookReceiver::start(SECRET).await;
    let process = linked(&ns, &sim, &receiver).await;
    println!("inbound benchmark: whatsapp-session (Debian Chromium) + simulator + webhook receiver");

    // 1. A burst, as fast as the phone sends.
    let started = Instant::now();
    for i in 0..BURST {
        sim.send_from_phone(SENDER, PHONE, &format!("burst {i}")).map_err(anyhow::Error::msg)?;
    }
    let sent = started.elapsed();
    delivered(&receiver, BURST).await;
    let elapsed = started.elapsed();
    println!(
        "incoming -> webhook, burst of {BURST}: {:.0} messages/s end to end ({:.0}/s sent by the phone)   target: >= 50/s",
        BURST as f64 / elapsed.as_secs_f64(),
        BURST as f64 / sent.as_secs_f64()
    );

    // 2. Latency, one message at a time.
    let mut latencies = Vec::with_capacity(SINGLES);
    for i in 0..SINGLES {
        let before = receiver.unique(ENDPOINT).len();
        let at = Instant::now();
        sim.send_from_phone(SENDER, PHONE, &format!("single {i}")).map_err(anyhow::Error::msg)?;
        let got = delivered(&receiver, before + 1).await;
        latencies.push(got.duration_since(at));
    }
    println!(
        "incoming -> webhook latency, healthy endpoint: p50 {:?}, p99 {:?}   target: p99 < 2 s (the pod reads the page every 500 ms)",
        percentile(&latencies, 50),
        percentile(&latencies, 99)
    );

    // 3. A backlog while the endpoint is down, then the drain.
    receiver.set_mode(ENDPOINT, Mode::Fail);
    let base = receiver.unique(ENDPOINT).len();
    let (rss_before, pss_before) = (rss_kib(process.pid()), pss_kib(process.pid()));
    let filling = Instant::now();
    for i in 0..backlog {
        sim.send_from_phone(SENDER, PHONE, &format!("backlog {i}")).map_err(anyhow::Error::msg)?;
    }
    let queued = eventually("the backlog in the pod's webhook queue", Duration::from_secs(3600), || async {
        let queue =
            metric(&process, &format!("whatsapp_session_webhook_queue{{endpoint=\"{ENDPOINT}\"}}")).await;
        Ok((queue >= backlog as f64).then_some(queue))
    })
    .await;
    let fill = filling.elapsed();
    let (rss, pss) = (rss_kib(process.pid()), pss_kib(process.pid()));
    let file = std::fs::metadata(process.profile.join("whatsapp-outbox.redb"))?.len();
    println!(
        "backlog of {queued:.0} events (made in {fill:?}): session process RSS {} MiB (before {} MiB), PSS {} MiB (before {} MiB), outbox file {} MiB   target: RSS <= 128 MiB",
        rss / 1024,
        rss_before / 1024,
        pss / 1024,
        pss_before / 1024,
        file / (1024 * 1024)
    );
    receiver.set_mode(ENDPOINT, Mode::Accept);
    let draining = Instant::now();
    delivered(&receiver, base + backlog).await;
    let drain = draining.elapsed();
    println!(
        "backlog drained in {drain:?}: {:.0} deliveries/s, in order, to one endpoint",
        backlog as f64 / drain.as_secs_f64()
    );
    let rejected = receiver.rejected();
    anyhow::ensure!(rejected.is_empty(), "the receiver refused deliveries: {rejected:?}");
    Ok(())
}

/// A linked session whose incoming messages go to the receiver's endpoint.
async fn linked(ns: &TestNamespace, sim: &Simulator, receiver: &WebhookReceiver) -> SessionProcess {
    let secret = Secret {
        metadata: ObjectMeta { name: Some("signing".into()), ..ObjectMeta::default() },
        string_data: Some(BTreeMap::from([("secret".to_string(), SECRET.to_string())])),
        ..Secret::default()
    };
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("creating the signing Secret");
    let hook = json!({"name": ENDPOINT, "url": receiver.url(ENDPOINT), "allowInsecure": true,
                      "events": ["message"], "secretRef": {"name": "signing"}});
    ns.create_session("bench", json!({"clienteId": 1, "webhooks": [hook]})).await;
    let process = SessionProcess::start(ns, "bench", &ns.profile_dir("bench"), sim);
    ns.link(sim, "bench", PHONE).await;
    process
}

/// Waits until the endpoint has `count` distinct deliveries; when the last one arrived.
async fn delivered(receiver: &WebhookReceiver, count: usize) -> Instant {
    eventually(&format!("{count} deliveries"), Duration::from_secs(3600), || async {
        let unique = receiver.unique(ENDPOINT);
        let times: HashMap<_, _> = unique.iter().map(|d| (d.id.clone(), d.received)).collect();
        Ok((unique.len() >= count).then(|| times.values().max().copied()).flatten())
    })
    .await
}

async fn metric(process: &SessionProcess, sample: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", process.url())).await.ok();
    let text = match text {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    whatsapp_tests::processes::sample_value(&text, sample).unwrap_or(0.0)
}
