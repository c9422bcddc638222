//! Outbox benchmark (prints each figure beside its target), with real Chromium, the WhatsApp
//! Web simulator (throttling like WhatsApp: 180 a minute, 4 a second, 30 s of punishment),
//! the real control plane, the operator, the pod runner and the hub:
//!
//! 1. messages accepted per second through the hub for one 10,000-message batch (hub -> pod ->
//!    fsync'd), median of 3 batches; p50/p99 of single-message accepts;
//! 2. the session process's RSS and PSS (without Chromium) with 100,000 messages queued (a
//!    sending window closed now: nothing sends);
//! 3. accepted -> sent latency on an idle queue at ratePerMinute 180 (`createdAt` -> `sentAt`);
//! 4. the outbox file's size per stored message;
//! 5. the full-length drill: a 1,000-message campaign to 50 recipients while the session is
//!    killed 20 times at random moments (its process, its Chromium, its pod); exits non-zero
//!    if a message is lost or sent twice.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench-outbox`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use rand::Rng;
use rand::seq::SliceRandom;
use reqwest::Method;
use serde_json::{Value, json};
use whatsapp_crds::{SessionState, WhatsAppSession};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::hub::{Hub, HubOptions, tenant_token};
use whatsapp_tests::processes::{Operator, chromium_pid, median, percentile, pss_kib, rss_kib};
use whatsapp_tests::simulator::{SimConfig, Simulator, Throttle, max_in_window};

const RATE: usize = 180;
const BATCH: usize = 10_000;
const FILL_BATCHES: usize = 10;
const SINGLES: usize = 200;
const LATENCY_SENDS: usize = 20;
const CAMPAIGN: usize = 1_000;
const RECIPIENTS: usize = 50;
const KILLS: usize = 20;
const WAIT: Duration = Duration::from_secs(120);

const STORE: (&str, i64, &str) = ("store", 1, "5491120000001");
const LATENCY: (&str, i64, &str) = ("latency", 2, "5491120000002");
const DRILL: (&str, i64, &str) = ("drill", 3, "5491120000003");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let throttle = Throttle { max_per_minute: RATE, max_burst: 4, penalty: Duration::from_secs(30) };
    let sim = Simulator::start(SimConfig { throttle: Some(throttle), ..SimConfig::default() }).await?;
    let ns = cluster().namespace("bench-outbox").await;
    let _operator = Operator::start(&ns, "op", "op", &[]);
    let runner = ns.pod_runner(&sim);
    let hub = Hub::ready(&ns, HubOptions::default()).await;
    println!(
        "outbox benchmark: operator + pod runner (real whatsapp-session, Debian Chromium) + hub, \
         simulator throttling at {RATE}/min and 4/s"
    );

    // A session whose sending window is closed now (it opens in two hours): nothing sends.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hh_mm = |t: jiff::Zoned| format!("{:02}:{:02}", t.hour(), t.minute());
    let closed = json!({
        "start": hh_mm(now.checked_add(jiff::Span::new().hours(2))?),
        "end": hh_mm(now.checked_add(jiff::Span::new().hours(3))?),
        "timeZone": "UTC",
    });
    ns.create_session(STORE.0, json!({"clienteId": STORE.1, "send": {"window": closed}})).await;
    ns.create_session(LATENCY.0, json!({"clienteId": LATENCY.1, "send": {"ratePerMinute": RATE}})).await;
    ns.link(&sim, STORE.0, STORE.2).await;
    ns.link(&sim, LATENCY.0, LATENCY.2).await;

    // 1. Single accepts (then cancelled, so the queue holds exactly the batches below).
    let store = Tenant { hub: &hub, id: STORE.1, token: tenant_token(STORE.1) };
    store.wait_reachable().await;
    let (process, profile) = session_process(&ns.name, &format!("{}-0", STORE.0))
        .ok_or_else(|| anyhow::anyhow!("the store session's process is not running"))?;
    let (rss_empty, pss_empty) = (rss_kib(process), pss_kib(process));
    let mut singles = Vec::new();
    let mut single_ids = Vec::new();
    for i in 0..SINGLES {
        let body = json!({"to": format!("54911550{:05}", i), "message": format!("single {i}")});
        let t = Instant::now();
        let (code, accepted) = store.call(Method::POST, "/messages", Some(body)).await;
        singles.push(t.elapsed());
        anyhow::ensure!(code == 202, "single accept: {code} {accepted}");
        single_ids.push(accepted["messages"][0]["id"].as_str().unwrap_or_default().to_owned());
    }
    for id in &single_ids {
        let (code, cancelled) = store.call(Method::DELETE, &format!("/messages/{id}"), None).await;
        anyhow::ensure!(code == 200, "cancelling {id}: {code} {cancelled}");
    }
    let outbox_file = profile.join("whatsapp-outbox.redb");
    let file_before = std::fs::metadata(&outbox_file)?.len();

    // 1 and 2. Ten batches of 10,000 through the hub: the first three give the throughput.
    let mut batches = Vec::new();
    for b in 0..FILL_BATCHES {
        let messages: Vec<Value> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                json!({"to": format!("5491155{:06}", n), "message": format!("Oferta {n}: 20% de descuento en toda la tienda hasta el domingo")})
            })
            .collect();
        let body = serde_json::to_vec(&json!({"batch": format!("fill-{b}"), "messages": messages}))?;
        let t = Instant::now();
        let response = hub
            .request(Method::POST, &format!("/api/whatsapp/{}/messages", STORE.1))
            .bearer_auth(&store.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let code = response.status().as_u16();
        let answer: Value = response.json().await?;
        let elapsed = t.elapsed();
        let accepted = answer["messages"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(code == 202 && accepted == BATCH, "batch {b}: {code}, {accepted} accepted");
        batches.push(elapsed);
    }
    let rate = |d: &Duration| BATCH as f64 / d.as_secs_f64();
    let first_three: Vec<f64> = batches[..3].iter().map(rate).collect();
    let all: Vec<f64> = batches.iter().map(rate).collect();
    println!("1. accept throughput, one {BATCH}-message batch through the hub (hub -> pod -> fsync'd):");
    println!(
        "   {:.0} messages/s, median of 3 batches ({})   [target: report; none fixed]",
        median(&first_three),
        batches[..3].iter().map(|d| format!("{:.2} s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
    );
    println!(
        "   all {FILL_BATCHES} batches while the queue grew to {}: median {:.0}/s, slowest {:.0}/s, fastest {:.0}/s",
        BATCH * FILL_BATCHES,
        median(&all),
        all.iter().copied().fold(f64::INFINITY, f64::min),
        all.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "   single-message accept through the hub ({SINGLES} requests, one at a time): p50 {:.2} ms, p99 {:.2} ms   [target: report]",
        ms(percentile(&singles, 50)),
        ms(percentile(&singles, 99))
    );

    // 2. Memory with everything queued.
    let (code, queued) = store.call(Method::GET, "/messages?status=queued&limit=1", None).await;
    anyhow::ensure!(code == 200 && queued["messages"].as_array().is_some_and(|m| m.len() == 1), "{queued}");
    let (rss_full, pss_full) = (rss_kib(process), pss_kib(process));
    println!(
        "2. whatsapp-session process alone (no Chromium) with {} messages queued: RSS {:.1} MiB, PSS {:.1} MiB   [target: report]",
        BATCH * FILL_BATCHES,
        mib(rss_full),
        mib(pss_full)
    );
    println!(
        "   same process with an empty queue, before: RSS {:.1} MiB, PSS {:.1} MiB",
        mib(rss_empty),
        mib(pss_empty)
    );

    // 4. Disk.
    let file_after = std::fs::metadata(&outbox_file)?.len();
    let stored = BATCH * FILL_BATCHES + SINGLES;
    println!(
        "4. outbox disk use: {:.1} MiB for {stored} stored messages = {:.0} bytes/message   [target: report]",
        file_after as f64 / 1048576.0,
        file_after as f64 / stored as f64
    );
    println!(
        "   ({:.1} MiB with the {SINGLES} cancelled singles; the {} batched messages added {:.0} bytes each; body ~60 chars, 13-digit number)",
        file_before as f64 / 1048576.0,
        BATCH * FILL_BATCHES,
        (file_after - file_before) as f64 / (BATCH * FILL_BATCHES) as f64
    );
    // The full session is no longer needed: its pod (and Chromium) go.
    ns.api::<WhatsAppSession>().delete(STORE.0, &DeleteParams::default()).await?;

    // 3. Accepted -> sent, one message at a time on an idle queue.
    let latency = Tenant { hub: &hub, id: LATENCY.1, token: tenant_token(LATENCY.1) };
    latency.wait_reachable().await;
    let mut to_sent = Vec::new();
    for i in 0..LATENCY_SENDS {
        let body = json!({"to": format!("54911660{:05}", i), "message": format!("latency {i}")});
        let (code, accepted) = latency.call(Method::POST, "/messages", Some(body)).await;
        anyhow::ensure!(code == 202, "{code} {accepted}");
        let id = accepted["messages"][0]["id"].as_str().unwrap_or_default().to_owned();
        let sent = eventually("the message sent", WAIT, || async {
            let (code, m) = latency.call(Method::GET, &format!("/messages/{id}"), None).await;
            Ok((code == 200 && m["sentAt"].is_string()).then_some(m))
        })
        .await;
        let at = |field: &str| sent[field].as_str().unwrap_or_default().parse::<jiff::Timestamp>();
        let span = at("sentAt")?.duration_since(at("createdAt")?);
        to_sent.push(Duration::try_from(span)?);
    }
    println!(
        "3. accepted -> sent (createdAt -> sentAt), {LATENCY_SENDS} messages one at a time, idle queue, ratePerMinute {RATE}: \
         p50 {:.0} ms, p99 {:.0} ms (min {:.0} ms)   [target: report; pacing adds >= 0.35 s after a send]",
        ms(percentile(&to_sent, 50)),
        ms(percentile(&to_sent, 99)),
        ms(percentile(&to_sent, 0))
    );
    ns.api::<WhatsAppSession>().delete(LATENCY.0, &DeleteParams::default()).await?;

    // 5. The drill.
    let passed = drill(&ns, &sim, &hub, &runner).await?;
    drop(runner);
    anyhow::ensure!(passed, "the drill lost, duplicated or did not recover");
    Ok(())
}

/// One tenant's message routes on the hub.
struct Tenant<'a> {
    hub: &'a Hub,
    id: i64,
    token: String,
}

impl Tenant<'_> {
    /// Waits until the hub reaches the session's outbox (its pod is up and in the hub's cache).
    async fn wait_reachable(&self) {
        eventually("the hub to reach the session's outbox", WAIT, || async {
            let (code, _) = self.call(Method::GET, "/messages?limit=1", None).await;
            Ok((code == 200).then_some(()))
        })
        .await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.hub.call(method, &format!("/api/whatsapp/{}{path}", self.id), Some(&self.token), body).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kill {
    Process,
    Chromium,
    Pod,
}

impl Kill {
    fn label(self) -> &'static str {
        match self {
            Kill::Process => "SIGKILL session process",
            Kill::Chromium => "SIGKILL Chromium",
            Kill::Pod => "pod deleted",
        }
    }
}

/// The campaign through 20 kills; whether nothing was lost or duplicated and every kill
/// recovered.
async fn drill(
    ns: &TestNamespace,
    sim: &Simulator,
    hub: &Hub,
    runner: &whatsapp_tests::podrunner::PodRunner,
) -> anyhow::Result<bool> {
    let (name, id, phone) = DRILL;
    let pod = format!("{name}-0");
    ns.create_session(name, json!({"clienteId": id, "send": {"ratePerMinute": RATE}})).await;
    ns.link(sim, name, phone).await;
    let states = watch_ready(ns, name);
    let tenant = Tenant { hub, id, token: tenant_token(id) };
    tenant.wait_reachable().await;
    let throttled_before = sim.throttled();
    let campaign_sent = || sim.messages().iter().filter(|m| m.from == phone).count();

    let messages: Vec<Value> = (0..CAMPAIGN)
        .map(|i| {
            json!({"to": format!("54911770{:05}", i % RECIPIENTS), "message": format!("campaign #{i}"), "idempotencyKey": format!("c-{i}")})
        })
        .collect();
    let started = Instant::now();
    let (code, accepted) = tenant
        .call(Method::POST, "/messages", Some(json!({"batch": "campaign", "messages": messages})))
        .await;
    anyhow::ensure!(code == 202, "campaign: {code} {accepted}");
    println!(
        "5. drill: {CAMPAIGN} messages to {RECIPIENTS} recipients at ratePerMinute {RATE}, {KILLS} kills at random moments"
    );

    // Random moments (counted in messages WhatsApp has received) and a shuffled mix of kinds.
    let mut rng = rand::rng();
    let mut points: Vec<usize> = (0..KILLS).map(|_| rng.random_range(10..CAMPAIGN - 10)).collect();
    points.sort_unstable();
    let mut kinds: Vec<Kill> =
        (0..KILLS).map(|i| [Kill::Process, Kill::Chromium, Kill::Pod][i % 3]).collect();
    kinds.shuffle(&mut rng);

    let mut recoveries: HashMap<Kill, Vec<Option<Duration>>> = HashMap::new();
    for (n, (point, kind)) in points.iter().zip(&kinds).enumerate() {
        let reached =
            within(Duration::from_secs(300), || async { (campaign_sent() >= *point).then_some(()) }).await;
        if reached.is_none() {
            println!("   kill {:>2}: WhatsApp never reached {point} messages: stopping the kills", n + 1);
            break;
        }
        let at = Instant::now();
        let done = match kind {
            Kill::Process => runner.kill_process(&ns.name, &pod),
            Kill::Chromium => session_process(&ns.name, &pod)
                .and_then(|(_, profile)| chromium_pid(&profile))
                .is_some_and(|pid| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                        .is_ok()
                }),
            Kill::Pod => ns.api::<Pod>().delete(&pod, &DeleteParams::default()).await.is_ok(),
        };
        anyhow::ensure!(done, "kill {}: could not {}", n + 1, kind.label());
        let recovered = within(Duration::from_secs(240), || async {
            let seen = states.0.lock().unwrap();
            let down = seen.iter().position(|(t, ready)| *t >= at && !ready)?;
            seen[down..].iter().find(|(_, ready)| *ready).map(|(t, _)| *t - at)
        })
        .await;
        println!(
            "   kill {:>2} at {point:>3} sent ({:>5.1} s in): {:<24} -> {}",
            n + 1,
            started.elapsed().as_secs_f64(),
            kind.label(),
            recovered
                .map_or("not READY within 240 s".into(), |d| format!("READY after {:.1} s", d.as_secs_f64()))
        );
        recoveries.entry(*kind).or_default().push(recovered);
    }
    states.1.abort();

    // Everything sent, and the outbox has nothing left to send.
    within(Duration::from_secs(600), || async { (campaign_sent() >= CAMPAIGN).then_some(()) }).await;
    let drained = within(Duration::from_secs(120), || async {
        for status in ["queued", "sending"] {
            let (code, page) = tenant
                .call(Method::GET, &format!("/messages?status={status}&batch=campaign&limit=1"), None)
                .await;
            if code != 200 || page["messages"].as_array().is_none_or(|m| !m.is_empty()) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let elapsed = started.elapsed();
    let (_, failed) =
        tenant.call(Method::GET, "/messages?status=failed&batch=campaign&limit=1000", None).await;
    let failed = failed["messages"].as_array().map_or(0, Vec::len);

    let received: Vec<_> = sim.messages().into_iter().filter(|m| m.from == phone).collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for m in &received {
        *copies.entry(m.body.as_str()).or_default() += 1;
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let lost = (0..CAMPAIGN).filter(|i| !copies.contains_key(format!("campaign #{i}").as_str())).count();
    let throttled = sim.throttled() - throttled_before;
    let worst_minute = max_in_window(&sim.sent_times(phone), 60_000);

    println!("   {:<26} {:>5} {:>10} {:>22}", "kill", "kills", "recovered", "worst kill -> READY");
    let mut all_recovered = true;
    for kind in [Kill::Process, Kill::Chromium, Kill::Pod] {
        let runs = recoveries.get(&kind).cloned().unwrap_or_default();
        let ok: Vec<Duration> = runs.iter().flatten().copied().collect();
        all_recovered &= ok.len() == runs.len();
        let worst = ok.iter().max().map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!("   {:<26} {:>5} {:>10} {:>22}", kind.label(), runs.len(), ok.len(), worst);
    }
    let kills: usize = recoveries.values().map(Vec::len).sum();
    println!(
        "   delivered {} of {CAMPAIGN} (target {CAMPAIGN}), duplicates {duplicates} (target 0), lost {lost} (target 0), \
         failed in the outbox {failed}, throttled by WhatsApp {throttled} (target 0), \
         worst 60 s window {worst_minute} (target <= {RATE}); {kills} kills; {:.0} s from accept to {}",
        received.len(),
        elapsed.as_secs_f64(),
        if drained.is_some() { "an empty queue" } else { "giving up (queue not drained)" }
    );
    Ok(lost == 0 && duplicates == 0 && all_recovered && kills == KILLS && drained.is_some())
}

/// Every change of a session seen by a watch: when, and whether it was READY.
type States = (Arc<Mutex<Vec<(Instant, bool)>>>, tokio::task::JoinHandle<()>);

fn watch_ready(ns: &TestNamespace, name: &str) -> States {
    let api: Api<WhatsAppSession> = ns.api();
    let seen: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let log = seen.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
        while let Some(next) = stream.next().await {
            if let Ok(session) = next {
                let ready = session.status.is_some_and(|s| s.state == Some(SessionState::Ready));
                log.lock().unwrap().push((Instant::now(), ready));
            }
        }
    });
    (seen, task)
}

/// Polls `check` every 100 ms until it returns `Some`, or gives up after `limit` (`None`).
async fn within<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `whatsapp-session` process the pod runner runs for `namespace/pod`, and its profile
/// directory (where the outbox file lives and Chromium's `--user-data-dir`).
fn session_process(namespace: &str, pod: &str) -> Option<(u32, PathBuf)> {
    let wanted = [format!("POD_NAMESPACE={namespace}"), format!("POD_NAME={pod}")];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
        if exe.file_name()? != "whatsapp-session" {
            return None;
        }
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let vars: Vec<String> =
            environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if !wanted.iter().all(|w| vars.contains(w)) {
            return None;
        }
        let profile = vars.iter().find_map(|v| v.strip_prefix("WAO_PROFILE_DIR="))?;
        Some((pid, PathBuf::from(profile)))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
