//! The session pod's outbox against real Chromium, the simulator (which punishes bursts like
//! WhatsApp) and the real control plane: a campaign through kills of the process and of
//! Chromium arrives exactly once and paced; a caller that gives up does not cause a second
//! send; receipts, cancellation, the sending window and the daily cap; a full volume.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::{Value, json};
use whatsapp_crds::SessionState;
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{SessionProcess, TEST_HUB_TOKEN, chromium_pid};
use whatsapp_tests::simulator::{SimConfig, Simulator, Throttle, max_in_window};

const PHONE: &str = "5491122334455";

fn simulator(throttle: Option<Throttle>) -> SimConfig {
    SimConfig {
        first_ref: Duration::from_secs(4),
        next_ref: Duration::from_secs(2),
        throttle,
        ..SimConfig::default()
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(TEST_HUB_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

async fn post(process: &SessionProcess, path: &str, body: Value) -> (u16, Value) {
    call(reqwest::Method::POST, format!("{}{path}", process.url()), Some(body)).await
}

async fn get(process: &SessionProcess, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, format!("{}{path}", process.url()), None).await
}

/// Starts a session process for `name` and links it.
async fn linked(ns: &TestNamespace, sim: &Simulator, name: &str, spec: Value) -> SessionProcess {
    ns.create_session(name, spec).await;
    let process = SessionProcess::start(ns, name, &ns.profile_dir(name), sim);
    ns.link(sim, name, PHONE).await;
    process
}

/// Waits until the simulator holds at least `n` messages.
async fn delivered_at_least(sim: &Simulator, n: usize, limit: Duration) {
    eventually(&format!("{n} messages at WhatsApp"), limit, || async {
        Ok((sim.messages().len() >= n).then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_campaign_survives_kills_exactly_once_and_never_faster_than_the_rate() {
    const MESSAGES: usize = 120;
    const RECIPIENTS: usize = 40;
    const RATE: i32 = 180;
    let ns = cluster().namespace("outbox-drill").await;
    // WhatsApp's side punishes more than RATE a minute or 4 in a second.
    let throttle = Throttle { max_per_minute: RATE as usize, max_burst: 4, penalty: Duration::from_secs(30) };
    let sim = Simulator::start(simulator(Some(throttle))).await.unwrap();
    let name = "drill";
    let profile = ns.profile_dir(name);
    let mut process =
        Some(linked(&ns, &sim, name, json!({"clienteId": 1, "send": {"ratePerMinute": RATE}})).await);

    let messages: Vec<Value> = (0..MESSAGES)
        .map(|i| {
            json!({"to": format!("54911000{:05}", i % RECIPIENTS), "message": format!("campaign #{i}"), "idempotencyKey": format!("c-{i}")})
        })
        .collect();
    let (code, accepted) =
        post(process.as_ref().unwrap(), "/v1/outbox", json!({"messages": messages, "batch": "campaign"}))
            .await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["messages"].as_array().unwrap().len(), MESSAGES);

    // Kills at random points of the campaign: the session process (a new one starts on the
    // same profile, as the kubelet would) or its Chromium (the driver restarts it).
    let mut rng = rand::rng();
    let mut points: Vec<usize> = (0..6).map(|_| rng.random_range(5..MESSAGES - 10)).collect();
    points.sort();
    let mut kills: HashMap<&str, usize> = HashMap::new();
    for (i, point) in points.iter().enumerate() {
        delivered_at_least(&sim, *point, Duration::from_secs(120)).await;
        if i % 2 == 0 {
            let mut p = process.take().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let _ = p.exited(Duration::from_secs(10)).await;
            if let Some(pid) = chromium_pid(&profile) {
                // Its Chromium dies with the pod's other processes, as in a container.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            drop(p);
            forget_endpoint(&ns, name).await;
            process = Some(SessionProcess::start(&ns, name, &profile, &sim));
            *kills.entry("session process SIGKILL").or_default() += 1;
        } else {
            // The driver may still be restarting a browser killed before.
            let pid = eventually("Chromium to run on the profile", Duration::from_secs(60), || async {
                Ok(chromium_pid(&profile))
            })
            .await;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                .unwrap();
            *kills.entry("Chromium SIGKILL").or_default() += 1;
        }
        ns.wait_status(name, "READY after the kill", |s| {
            s.state == Some(SessionState::Ready) && s.endpoint.is_some()
        })
        .await;
    }

    // Everything arrives, and the outbox agrees.
    delivered_at_least(&sim, MESSAGES, Duration::from_secs(180)).await;
    let process = process.unwrap();
    let (_, progress) = eventually("the outbox to record every send", Duration::from_secs(60), || async {
        let (_, b) = get(&process, "/v1/outbox/batches/campaign").await;
        let pending =
            b["byStatus"]["queued"].as_u64().unwrap_or(1) + b["byStatus"]["sending"].as_u64().unwrap_or(1);
        Ok((pending == 0).then_some(((), b)))
    })
    .await;
    let received = sim.messages();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for m in &received {
        *copies.entry(m.body.as_str()).or_default() += 1;
    }
    let duplicates = copies.values().filter(|n| **n > 1).count();
    let lost = (0..MESSAGES).filter(|i| !copies.contains_key(format!("campaign #{i}").as_str())).count();
    let worst_minute = max_in_window(&sim.sent_times(PHONE), 60_000);
    println!("outbox drill: {MESSAGES} messages to {RECIPIENTS} recipients at {RATE}/min");
    for (kind, n) in &kills {
        println!("  {kind:<26} {n} kills, {n} recovered to READY");
    }
    println!(
        "  delivered {}, duplicates {duplicates}, lost {lost}, throttled by WhatsApp {}, worst 60 s window {worst_minute} (limit {RATE})",
        received.len(),
        sim.throttled()
    );
    assert_eq!((received.len(), duplicates, lost), (MESSAGES, 0, 0), "{progress}");
    assert_eq!(sim.throttled(), 0, "WhatsApp never had to throttle");
    assert!(worst_minute <= RATE as usize, "{worst_minute} in one minute");
    assert_eq!(progress["total"], json!(MESSAGES));
    assert_eq!(progress["byStatus"]["failed"], json!(0));
}

#[tokio::test]
async fn a_caller_that_gives_up_and_retries_with_its_key_causes_one_message() {
    let ns = cluster().namespace("outbox-retry").await;
    let sim = Simulator::start(simulator(None)).await.unwrap();
    let process = linked(&ns, &sim, "acme", json!({"clienteId": 1})).await;
    let body = json!({"to": "5491155550000", "message": "only once", "idempotencyKey": "order-7"});
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(1)).build().unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/messages", process.url()))
        .bearer_auth(TEST_HUB_TOKEN)
        .json(&body)
        .send()
        .await;
    assert!(gave_up.is_err(), "a 1 ms client gives up");
    let (code, answer) = post(&process, "/v1/messages", body).await;
    assert_eq!((code, answer["status"].as_str()), (200, Some("sent")), "{answer}");
    let copies = sim.messages().iter().filter(|m| m.body == "only once").count();
    assert_eq!(copies, 1);
}

/// Changes `spec.send` of a session (a merge patch, as `kubectl patch --type merge` does).
async fn set_send(ns: &TestNamespace, name: &str, send: Value) {
    use kube::api::{Patch, PatchParams};
    ns.api::<whatsapp_crds::WhatsAppSession>()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"send": send}})))
        .await
        .expect("patching spec.send");
}

#[tokio::test]
async fn receipts_reach_read_cancel_holds_and_the_window_and_cap_hold_messages_back() {
    let ns = cluster().namespace("outbox-life").await;
    let sim = Simulator::start(simulator(None)).await.unwrap();
    // A window that is closed now (it opened an hour ago and closes... an hour ago, UTC).
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hh_mm = |t: jiff::Zoned| format!("{:02}:{:02}", t.hour(), t.minute());
    let closed = json!({"start": hh_mm(now.checked_add(jiff::Span::new().hours(2)).unwrap()), "end": hh_mm(now.checked_add(jiff::Span::new().hours(3)).unwrap()), "timeZone": "UTC"});
    let process =
        linked(&ns, &sim, "acme", json!({"clienteId": 1, "send": {"ratePerMinute": 120, "dailyCap": 2}}))
            .await;

    // Receipts: sent, then delivered by the phone, read when the recipient reads it.
    let (code, a) =
        post(&process, "/v1/outbox", json!({"messages": [{"to": "5491155550001", "message": "first"}]}))
            .await;
    assert_eq!(code, 202, "{a}");
    let id = a["messages"][0]["id"].as_str().unwrap().to_string();
    eventually("delivered", Duration::from_secs(60), || async {
        let (_, m) = get(&process, &format!("/v1/outbox/{id}")).await;
        Ok((m["status"] == "delivered").then_some(()))
    })
    .await;
    sim.read(&id).unwrap();
    let (_, read) = eventually("read", Duration::from_secs(60), || async {
        let (_, m) = get(&process, &format!("/v1/outbox/{id}")).await;
        Ok((m["status"] == "read").then_some(((), m)))
    })
    .await;
    assert!(
        read["sentAt"].is_string() && read["deliveredAt"].is_string() && read["readAt"].is_string(),
        "{read}"
    );

    // Cancel while queued (notBefore an hour ahead); then it is never sent, and a second
    // cancel is refused.
    let later = (jiff::Timestamp::now() + Duration::from_secs(3600)).to_string();
    let (_, a) = post(
        &process,
        "/v1/outbox",
        json!({"messages": [{"to": "5491155550002", "message": "never", "notBefore": later}]}),
    )
    .await;
    let never = a["messages"][0]["id"].as_str().unwrap().to_string();
    let (code, m) = call(reqwest::Method::DELETE, format!("{}/v1/outbox/{never}", process.url()), None).await;
    assert_eq!((code, m["status"].as_str(), m["reason"].as_str()), (200, Some("failed"), Some("CANCELLED")));
    let (code, m) = call(reqwest::Method::DELETE, format!("{}/v1/outbox/{never}", process.url()), None).await;
    assert_eq!((code, m["error"].as_str()), (409, Some("NOT_CANCELLABLE")));
    // The status says it, and so does `kubectl get` (columns Queued, and Failed with -o wide).
    let summary = ns
        .wait_status("acme", "the outbox summary", |s| s.outbox.as_ref().is_some_and(|o| o.failed == 1))
        .await;
    assert_eq!(summary.outbox.map(|o| o.queued), Some(0));
    let table = whatsapp_tests::run(ns.kubectl().args(["get", "was", "acme", "-o", "wide"])).unwrap().stdout;
    assert!(table.contains("QUEUED") && table.contains("FAILED"), "{table}");

    // The daily cap (2): the second goes, the third waits for tomorrow.
    let (_, a) = post(
        &process,
        "/v1/outbox",
        json!({"messages": [{"to": "5491155550003", "message": "second"}, {"to": "5491155550004", "message": "third"}]}),
    )
    .await;
    let third = a["messages"][1]["id"].as_str().unwrap().to_string();
    delivered_at_least(&sim, 2, Duration::from_secs(60)).await;
    let (_, m) = get(&process, &format!("/v1/outbox/{third}")).await;
    assert_eq!(m["status"], "queued", "held by the daily cap: {m}");

    // A window closed now holds messages too; opening it lets them go (the cap lifted).
    set_send(&ns, "acme", json!({"dailyCap": null, "window": closed})).await;
    let (_, a) = post(
        &process,
        "/v1/outbox",
        json!({"messages": [{"to": "5491155550005", "message": "in the window"}]}),
    )
    .await;
    let windowed = a["messages"][0]["id"].as_str().unwrap().to_string();
    let (_, listed) = eventually("the window to hold both", Duration::from_secs(30), || async {
        let (_, l) = get(&process, "/v1/outbox?status=queued").await;
        Ok((l["messages"].as_array().is_some_and(|m| m.len() == 2)).then_some(((), l)))
    })
    .await;
    assert!(listed["messages"].as_array().unwrap().iter().any(|m| m["id"] == windowed));
    assert_eq!(sim.messages().len(), 2, "nothing goes while the window is closed");
    set_send(&ns, "acme", json!({"window": null})).await;
    delivered_at_least(&sim, 4, Duration::from_secs(60)).await;
    let bodies: Vec<String> = sim.messages().into_iter().map(|m| m.body).collect();
    assert!(!bodies.contains(&"never".to_string()));
}

/// A small filesystem of its own at `dir` (the tests run as root), unmounted when dropped.
struct SmallVolume(std::path::PathBuf);

impl SmallVolume {
    fn mount(dir: std::path::PathBuf) -> SmallVolume {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(mounted.success(), "mounting a small volume (the tests run as root)");
        SmallVolume(dir)
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits until the session's `StorageFull` condition, read through the API as a user
/// would, has `status` and `reason`; returns its message.
async fn storage_full_is(ns: &TestNamespace, name: &str, status: &str, reason: &str) -> String {
    let what = format!("StorageFull={status} ({reason})");
    let s = ns
        .wait_status(name, &what, |s| {
            s.conditions.iter().any(|c| c.type_ == "StorageFull" && c.status == status && c.reason == reason)
        })
        .await;
    s.conditions.into_iter().find(|c| c.type_ == "StorageFull").map(|c| c.message).unwrap_or_default()
}

/// Stops the session process with `signal` (SIGTERM: as Kubernetes does, Chromium closes and
/// flushes; SIGKILL: a crash, its Chromium killed too).
async fn stop(mut p: SessionProcess, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), signal).unwrap();
    let _ = p.exited(Duration::from_secs(60)).await;
    if let Some(pid) = chromium_pid(&p.profile) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// [`stop`], then a new process on the same profile. The old process's endpoint is cleared
/// from the status first (a restarted process has the same address), so that what
/// [`ready_without_a_qr`] sees is the new process's report, not a status a killed one left.
async fn restart(ns: &TestNamespace, sim: &Simulator, p: SessionProcess, signal: Signal) -> SessionProcess {
    let profile = p.profile.clone();
    stop(p, signal).await;
    forget_endpoint(ns, "acme").await;
    SessionProcess::start(ns, "acme", &profile, sim)
}

/// Clears the endpoint a stopped process left in the status, so that what the status says
/// next comes from the new process (a restarted pod keeps its address).
async fn forget_endpoint(ns: &TestNamespace, name: &str) {
    let sessions: kube::Api<whatsapp_crds::WhatsAppSession> = ns.api();
    let forget = json!({"status": {"endpoint": null}});
    sessions
        .patch_status(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&forget))
        .await
        .expect("clearing the old process's endpoint");
}

/// Waits until `process` (a new one) reports READY: nobody scans, so READY means the login
/// survived on the profile.
async fn ready_without_a_qr(ns: &TestNamespace, process: &SessionProcess) {
    let url = process.url();
    let back = ns
        .wait_status("acme", "READY from the new process, without a QR scanned", |s| {
            s.endpoint.as_deref() == Some(url.as_str())
                && matches!(s.state, Some(SessionState::Ready | SessionState::QrRequired))
        })
        .await;
    assert_eq!(
        back.state,
        Some(SessionState::Ready),
        "the login was lost: {:?} {:?}",
        back.reason,
        back.message
    );
    assert!(back.qr.is_none(), "no QR after the restart: {:?}", back.qr);
    assert_eq!(back.me.map(|m| m.phone), Some(PHONE.to_string()), "the same login");
}

#[tokio::test]
async fn a_full_volume_refuses_new_messages_clearly_and_loses_none() {
    let ns = cluster().namespace("outbox-full").await;
    let sim = Simulator::start(simulator(None)).await.unwrap();
    let volume = ns.profile_dir("volume");
    let _unmount = SmallVolume::mount(volume.clone());
    let profile = volume.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    ns.create_session("acme", json!({"clienteId": 1, "send": {"ratePerMinute": 1}})).await;
    let process = SessionProcess::start(&ns, "acme", &profile, &sim);
    ns.link(&sim, "acme", PHONE).await;
    storage_full_is(&ns, "acme", "False", "SpaceAvailable").await;

    // Accepted before the disk fills: kept. (ratePerMinute 1: they stay queued meanwhile.)
    let first: Vec<Value> =
        (0..3).map(|i| json!({"to": "5491155550000", "message": format!("kept {i}")})).collect();
    let (code, kept) = post(&process, "/v1/outbox", json!({"messages": first})).await;
    assert_eq!(code, 202);
    // Fill the volume.
    let filler = volume.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=200"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({"to": "5491155550000", "message": format!("{i}: {}", "x".repeat(200))}))
        .collect();
    let (code, refused) = post(&process, "/v1/outbox", json!({"messages": batch.clone()})).await;
    assert_eq!((code, refused["error"].as_str()), (507, Some("STORAGE_FULL")), "{refused}");
    // The status says so, with the space and what is refused.
    let full = storage_full_is(&ns, "acme", "True", "VolumeFull").await;
    assert!(full.contains("507 STORAGE_FULL") && full.contains("of 96.0 MiB available"), "{full}");
    // Chromium writes to the full profile meanwhile (incoming messages go to IndexedDB), and
    // the pod is stopped before space returns (Chromium closes on the full volume).
    for i in 0..3 {
        sim.send_from_phone("5491166660000", PHONE, &format!("while full {i}")).unwrap();
    }
    stop(process, Signal::SIGTERM).await;

    // Space returns: the pod comes back linked, the condition clears, the same batch is taken,
    // the first three are there.
    std::fs::remove_file(&filler).unwrap();
    let process = SessionProcess::start(&ns, "acme", &profile, &sim);
    ready_without_a_qr(&ns, &process).await;
    storage_full_is(&ns, "acme", "False", "SpaceAvailable").await;
    let (code, taken) = post(&process, "/v1/outbox", json!({"messages": batch})).await;
    assert_eq!(code, 202, "{taken}");
    let mut ids: Vec<String> =
        kept["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    ids.push(taken["messages"][9_999]["id"].as_str().unwrap().to_string());
    assert_kept(&process, &ids).await;

    // The login survived the full volume: a crash and a later restart on the same profile come
    // back READY without a QR (Chromium's databases are not lost to a write the full volume
    // cut short), and every accepted message is still there.
    let process = restart(&ns, &sim, process, Signal::SIGKILL).await;
    ready_without_a_qr(&ns, &process).await;
    let process = restart(&ns, &sim, process, Signal::SIGTERM).await;
    ready_without_a_qr(&ns, &process).await;
    assert_kept(&process, &ids).await;
}

/// Every message in `ids` is in the outbox, not failed.
async fn assert_kept(process: &SessionProcess, ids: &[String]) {
    for id in ids {
        let (code, m) = get(process, &format!("/v1/outbox/{id}")).await;
        assert_eq!(code, 200, "{id} lost: {m}");
        assert_ne!(m["status"], "failed", "{m}");
    }
}
