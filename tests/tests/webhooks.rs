//! Webhooks against real Chromium, the simulator and the real control plane, with a customer's
//! endpoints played by the test receiver (which checks every signature on its own): receipts
//! of sent messages, the session's state and incoming messages arrive signed and in order, and
//! are listed and redelivered through the API; a stalled endpoint holds back neither sends nor
//! the other endpoint; an endpoint down for a while gets everything once back; and through
//! kills of the pod while an endpoint is down no event is lost and the receiver, deduplicating
//! by `webhook-id`, sees each exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{Operator, SessionProcess, TEST_HUB_TOKEN, chromium_pid, sample_value};
use whatsapp_tests::simulator::{SimConfig, Simulator};
use whatsapp_tests::webhook::{Delivery, Mode, WebhookReceiver};

/// The session's account.
const PHONE: &str = "5491122334455";
/// A WhatsApp user who writes to it.
const FRIEND: &str = "5491166667777";
/// The endpoints' signing secret, in Standard Webhooks' form, as the customer stores it.
const SECRET: &str = "whsec_aW50ZWdyYXRpb24gdGVzdHMgc2lnbmluZyBrZXkgMzI=";

fn simulator() -> SimConfig {
    SimConfig { first_ref: Duration::from_secs(4), next_ref: Duration::from_secs(2), ..SimConfig::default() }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(TEST_HUB_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
        Err(e) => (0, json!(e.to_string())),
    }
}

async fn get(process: &SessionProcess, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, format!("{}{path}", process.url()), None).await
}

async fn post(process: &SessionProcess, path: &str, body: Value) -> (u16, Value) {
    call(reqwest::Method::POST, format!("{}{path}", process.url()), Some(body)).await
}

/// The Secret `signing` (key `secret`, the default) every endpoint's secretRef names.
async fn signing_secret(ns: &TestNamespace) {
    let secret = Secret {
        metadata: ObjectMeta { name: Some("signing".into()), ..ObjectMeta::default() },
        string_data: Some(BTreeMap::from([("secret".to_string(), SECRET.to_string())])),
        ..Secret::default()
    };
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("creating the signing Secret");
}

/// `spec.webhooks[]` for an endpoint of the receiver.
fn hook(receiver: &WebhookReceiver, name: &str, events: &[&str]) -> Value {
    json!({"name": name, "url": receiver.url(name), "allowInsecure": true, "events": events, "secretRef": {"name": "signing"}})
}

/// A linked session with `spec` (its signing Secret made first).
async fn linked(ns: &TestNamespace, sim: &Simulator, name: &str, spec: Value) -> SessionProcess {
    signing_secret(ns).await;
    ns.create_session(name, spec).await;
    let process = SessionProcess::start(ns, name, &ns.profile_dir(name), sim);
    ns.link(sim, name, PHONE).await;
    process
}

/// Hands `n` messages to the outbox; their ids.
async fn send(process: &SessionProcess, n: usize, tag: &str) -> Vec<String> {
    let messages: Vec<Value> =
        (0..n).map(|i| json!({"to": format!("54911555{i:05}"), "message": format!("{tag} #{i}")})).collect();
    let (code, accepted) = post(process, "/v1/outbox", json!({"messages": messages})).await;
    assert_eq!(code, 202, "{accepted}");
    accepted["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

/// Every delivery the pod lists for `endpoint`, oldest first (all pages).
async fn deliveries(process: &SessionProcess, endpoint: &str) -> Result<Vec<Value>, String> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let (code, page) =
            get(process, &format!("/v1/webhooks/deliveries?endpoint={endpoint}&limit=1000{cursor}")).await;
        if code != 200 {
            return Err(format!("{code}: {page}"));
        }
        all.extend(page["deliveries"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_u64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    all.reverse();
    Ok(all)
}

/// Waits until every delivery the pod lists for `endpoint` is delivered and the endpoint
/// holds as many distinct events; returns both, oldest first.
async fn settled(
    process: &SessionProcess,
    receiver: &WebhookReceiver,
    endpoint: &str,
    limit: Duration,
) -> (Vec<Value>, Vec<Delivery>) {
    eventually(&format!("every delivery to {endpoint} delivered"), limit, || async {
        let listed = deliveries(process, endpoint).await?;
        let got = receiver.unique(endpoint);
        let done = !listed.is_empty()
            && listed.iter().all(|d| d["status"] == "delivered")
            && got.len() == listed.len();
        Ok(done.then_some((listed, got)))
    })
    .await
}

/// What the endpoint got, deduplicated, is what the pod queued for it, in the same order.
fn assert_in_queue_order(got: &[Delivery], listed: &[Value]) {
    let got: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    let queued: Vec<&str> = listed.iter().map(|d| d["eventId"].as_str().unwrap()).collect();
    assert_eq!(got, queued, "the endpoint got its events in the order they were queued");
}

/// The statuses the receipts of message `id` told, in arrival order.
fn receipts(got: &[Delivery], id: &str) -> Vec<String> {
    got.iter()
        .filter(|d| d.kind == "message.ack" && d.data["id"] == id)
        .map(|d| d.data["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Receipts only move forward.
fn assert_forward(statuses: &[String]) {
    let rank = |s: &str| ["sent", "delivered", "read", "played"].iter().position(|x| *x == s);
    let ranks: Vec<_> = statuses.iter().map(|s| rank(s).unwrap_or_else(|| panic!("status {s}"))).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{statuses:?}");
}

/// A sample of the process's metrics (0 when absent or while it does not answer).
async fn metric(process: &SessionProcess, sample: &str) -> f64 {
    let text = match reqwest::get(format!("{}/metrics", process.url())).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    sample_value(&text, sample).unwrap_or(0.0)
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Kills the session process and its Chromium, as when the pod's container dies.
async fn kill_pod(mut process: SessionProcess) {
    kill(process.pid() as i32);
    let _ = process.exited(Duration::from_secs(10)).await;
    if let Some(pid) = chromium_pid(&process.profile) {
        kill(pid);
    }
}

/// Receipts move forward, the session was READY after showing its QR, the friend's message
/// is told with its sender, and every event has an id and a time.
fn assert_events_say_what_happened(got: &[Delivery], ids: &[String]) {
    for id in ids {
        assert_forward(&receipts(got, id));
    }
    let states: Vec<&str> =
        got.iter().filter(|d| d.kind == "state").filter_map(|d| d.data["state"].as_str()).collect();
    let at = |state: &str| {
        states.iter().position(|s| *s == state).unwrap_or_else(|| panic!("{state}: {states:?}"))
    };
    assert!(at("QR_REQUIRED") < at("READY"), "{states:?}");
    let message = got.iter().find(|d| d.kind == "message").unwrap();
    assert_eq!((&message.data["from"], &message.data["body"]), (&json!(FRIEND), &json!("hello, webhooks")));
    assert!(
        got.iter().all(|d| d.at.parse::<jiff::Timestamp>().is_ok() && d.id.starts_with("evt_")),
        "{got:?}"
    );
}

/// The listing has the contract's fields, pages and filters, and refuses bad queries.
async fn assert_listings(process: &SessionProcess, listed: &[Value]) {
    let first = &listed[0];
    let mut fields: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    let contract = [
        "attempts",
        "createdAt",
        "deliveredAt",
        "endpoint",
        "eventId",
        "id",
        "lastError",
        "lastStatus",
        "nextAttemptAt",
        "status",
        "type",
    ];
    assert_eq!(fields, contract, "{first}");
    assert!(first["id"].is_string() && first["deliveredAt"].is_string() && first["nextAttemptAt"].is_null());
    assert_eq!(
        (&first["attempts"], &first["lastStatus"], &first["lastError"]),
        (&json!(1), &json!(200), &Value::Null)
    );
    let (_, page) = get(process, "/v1/webhooks/deliveries?limit=2").await;
    let next = page["nextCursor"].as_u64().expect("a next page");
    let (_, rest) = get(process, &format!("/v1/webhooks/deliveries?limit=2&cursor={next}")).await;
    let newest: Vec<&Value> = listed.iter().rev().map(|d| &d["id"]).collect();
    let paged: Vec<&Value> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["deliveries"].as_array().unwrap())
        .map(|d| &d["id"])
        .collect();
    assert_eq!(paged, newest[..4]);
    for (query, n) in [
        ("status=pending", 0),
        ("status=dead", 0),
        ("endpoint=other", 0),
        ("status=delivered&endpoint=crm", listed.len()),
    ] {
        let (code, page) = get(process, &format!("/v1/webhooks/deliveries?{query}&limit=1000")).await;
        assert_eq!((code, page["deliveries"].as_array().map(Vec::len)), (200, Some(n)), "{query}");
    }
    for bad in ["status=lost", "limit=0", "limit=1001", "limit=ten", "cursor=abc", "colour=red"] {
        let (code, refused) = get(process, &format!("/v1/webhooks/deliveries?{bad}")).await;
        assert_eq!((code, refused["error"].as_str()), (400, Some("INVALID_QUERY")), "{bad}: {refused}");
    }
}

/// Kills the pod and starts it again on its profile; the new process once READY.
async fn restarted(
    ns: &TestNamespace,
    name: &str,
    sim: &Simulator,
    process: SessionProcess,
) -> SessionProcess {
    let profile = process.profile.clone();
    kill_pod(process).await;
    let process = SessionProcess::start(ns, name, &profile, sim);
    eventually("READY after the kill", Duration::from_secs(90), || async {
        Ok((metric(&process, r#"whatsapp_session_state{state="READY"}"#).await == 1.0).then_some(()))
    })
    .await;
    process
}

#[tokio::test]
async fn events_arrive_signed_and_in_order_and_are_listed_and_redelivered() {
    let ns = cluster().namespace("webhooks-order").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let receiver = WebhookReceiver::start(SECRET).await;
    let spec = json!({"clienteId": 1, "send": {"ratePerMinute": 120},
        "webhooks": [hook(&receiver, "crm", &["message", "message.ack", "state"])]});
    let process = linked(&ns, &sim, "acme", spec).await;

    // Three sends, delivered to the phones; one is read; a friend writes.
    let ids = send(&process, 3, "order").await;
    eventually("the first delivered to its phone", Duration::from_secs(60), || async {
        Ok(sim.messages().iter().any(|m| m.id == ids[0] && m.ack >= 2).then_some(()))
    })
    .await;
    sim.read(&ids[0]).unwrap();
    let incoming = sim.send_from_phone(FRIEND, PHONE, "hello, webhooks").unwrap();
    eventually("the endpoint to hear of all of it", Duration::from_secs(90), || async {
        let got = receiver.unique("crm");
        let told = |id: &str, status: &str| receipts(&got, id).iter().any(|s| s == status);
        let all = told(&ids[0], "read")
            && ids[1..].iter().all(|id| told(id, "delivered"))
            && got.iter().any(|d| d.kind == "message" && d.data["id"] == json!(incoming));
        Ok(all.then_some(()))
    })
    .await;
    let (listed, got) = settled(&process, &receiver, "crm", Duration::from_secs(30)).await;
    assert_in_queue_order(&got, &listed);
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());

    assert_events_say_what_happened(&got, &ids);
    assert_listings(&process, &listed).await;

    // A redelivery sends the same event again (same webhook-id), and is delivered again.
    let first = &listed[0];
    let id = first["id"].as_str().unwrap();
    let (code, again) = post(&process, &format!("/v1/webhooks/deliveries/{id}/redeliver"), json!({})).await;
    assert_eq!(
        (code, &again["status"], &again["eventId"]),
        (202, &json!("pending"), &first["eventId"]),
        "{again}"
    );
    eventually("the redelivery", Duration::from_secs(30), || async {
        let copies = receiver.accepted("crm").iter().filter(|d| d.id == first["eventId"]).count();
        Ok((copies == 2).then_some(()))
    })
    .await;
    assert_eq!(receiver.unique("crm").len(), listed.len(), "a consumer deduplicating sees nothing new");
    for missing in ["999999", "abc"] {
        let (code, refused) =
            post(&process, &format!("/v1/webhooks/deliveries/{missing}/redeliver"), json!({})).await;
        assert_eq!((code, refused["error"].as_str()), (404, Some("DELIVERY_NOT_FOUND")), "{missing}");
    }
    let delivered =
        metric(&process, r#"whatsapp_session_webhook_deliveries_total{endpoint="crm",outcome="delivered"}"#)
            .await;
    assert_eq!(delivered, (listed.len() + 1) as f64);
}

#[tokio::test]
async fn a_stalled_endpoint_holds_back_neither_sends_nor_the_other_endpoint() {
    let ns = cluster().namespace("webhooks-stall").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.set_mode("stuck", Mode::Stall);
    let spec = json!({"clienteId": 1, "send": {"ratePerMinute": 120},
        "webhooks": [hook(&receiver, "stuck", &["message.ack"]), hook(&receiver, "live", &["message.ack"])]});
    let process = linked(&ns, &sim, "acme", spec).await;

    let ids = send(&process, 10, "stall").await;
    eventually("every message at WhatsApp", Duration::from_secs(90), || async {
        Ok((sim.messages().len() >= ids.len()).then_some(()))
    })
    .await;
    eventually("the live endpoint to hear of every message's delivery", Duration::from_secs(60), || async {
        let got = receiver.unique("live");
        Ok(ids.iter().all(|id| receipts(&got, id).iter().any(|s| s == "delivered")).then_some(()))
    })
    .await;
    assert!(
        receiver.unique("stuck").is_empty() && receiver.requests("stuck") >= 1,
        "stuck was tried, never answered"
    );
    let (_, pending) =
        get(&process, "/v1/webhooks/deliveries?endpoint=stuck&status=pending&limit=1000").await;
    assert!(pending["deliveries"].as_array().unwrap().len() >= ids.len(), "{pending}");

    // Released, it catches up, in order: the same events the live one got.
    receiver.set_mode("stuck", Mode::Accept);
    let (stuck, got) = settled(&process, &receiver, "stuck", Duration::from_secs(180)).await;
    assert_in_queue_order(&got, &stuck);
    let (live, got) = settled(&process, &receiver, "live", Duration::from_secs(30)).await;
    assert_in_queue_order(&got, &live);
    let events = |listed: &[Value]| listed.iter().map(|d| d["eventId"].clone()).collect::<Vec<_>>();
    assert_eq!(events(&stuck), events(&live));
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
}

#[tokio::test]
async fn an_endpoint_down_for_a_while_gets_everything_in_order_once_back() {
    let ns = cluster().namespace("webhooks-down").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.set_mode("crm", Mode::Fail);
    let spec = json!({"clienteId": 1, "send": {"ratePerMinute": 120},
        "webhooks": [hook(&receiver, "crm", &["message.ack", "state"])]});
    let process = linked(&ns, &sim, "acme", spec).await;
    let ids = send(&process, 5, "down").await;
    eventually("the endpoint to be retried", Duration::from_secs(60), || async {
        Ok((receiver.requests("crm") >= 3).then_some(()))
    })
    .await;
    let (_, pending) = get(&process, "/v1/webhooks/deliveries?endpoint=crm&status=pending&limit=1000").await;
    let head = pending["deliveries"].as_array().unwrap().last().cloned().expect("the head");
    assert_eq!(
        (&head["lastStatus"], &head["lastError"]),
        (&json!(500), &json!("the endpoint answered 500 Internal Server Error"))
    );
    assert!(head["attempts"].as_u64().unwrap() >= 2 && head["nextAttemptAt"].is_string(), "{head}");

    receiver.set_mode("crm", Mode::Accept);
    eventually("every message's delivery told", Duration::from_secs(180), || async {
        let got = receiver.unique("crm");
        Ok(ids.iter().all(|id| receipts(&got, id).iter().any(|s| s == "delivered")).then_some(()))
    })
    .await;
    let (listed, got) = settled(&process, &receiver, "crm", Duration::from_secs(30)).await;
    assert_in_queue_order(&got, &listed);
    assert_eq!(receiver.accepted("crm").len(), listed.len(), "a failed attempt is never taken as delivered");
    for id in &ids {
        assert_forward(&receipts(&got, id));
    }
    let failed =
        metric(&process, r#"whatsapp_session_webhook_deliveries_total{endpoint="crm",outcome="failed"}"#)
            .await;
    assert!(failed >= 3.0, "{failed}");
    assert_eq!(metric(&process, r#"whatsapp_session_webhook_queue{endpoint="crm"}"#).await, 0.0);
}

/// After deduplication by `webhook-id`: how many things (an incoming message, a receipt's
/// status) were told by more than one event, and how many incoming messages by none.
fn tally(got: &[Delivery], written: &[String]) -> (usize, usize) {
    let mut told: HashMap<(String, String), usize> = HashMap::new();
    for d in got {
        let status = d.data["status"].as_str().unwrap_or("in").to_string();
        *told.entry((d.data["id"].as_str().unwrap_or_default().to_string(), status)).or_default() += 1;
    }
    let twice = told.values().filter(|n| **n > 1).count();
    let lost = written.iter().filter(|id| !told.contains_key(&(id.to_string(), "in".to_string()))).count();
    (twice, lost)
}

#[tokio::test]
async fn through_pod_kills_while_the_endpoint_is_down_no_event_is_lost_or_told_twice() {
    const INCOMING: usize = 500;
    const SENDS: usize = 20;
    const KILLS: usize = 10;
    let ns = cluster().namespace("webhooks-drill").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let receiver = WebhookReceiver::start(SECRET).await;
    let name = "drill";
    let spec = json!({"clienteId": 1, "send": {"ratePerMinute": 60},
        "webhooks": [hook(&receiver, "crm", &["message", "message.ack"])]});
    let mut process = Some(linked(&ns, &sim, name, spec).await);
    let sends = send(process.as_ref().unwrap(), SENDS, "drill").await;

    // The endpoint is down for the first half of the kills, up for the second (kills then
    // land between a delivery and its record: the receiver sees some twice).
    receiver.set_mode("crm", Mode::Fail);
    let written: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let writer = async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for i in 0..INCOMING {
            pace.tick().await;
            let id = sim.send_from_phone(FRIEND, PHONE, &format!("drill #{i}")).unwrap();
            written.lock().unwrap().push(id);
        }
    };
    let killer = async {
        for k in 0..KILLS {
            let point = (k + 1) * INCOMING / (KILLS + 1);
            eventually(&format!("{point} messages written"), Duration::from_secs(120), || async {
                Ok((written.lock().unwrap().len() >= point).then_some(()))
            })
            .await;
            if k == KILLS / 2 {
                receiver.set_mode("crm", Mode::Accept);
            }
            process = Some(restarted(&ns, name, &sim, process.take().unwrap()).await);
        }
    };
    tokio::join!(writer, killer);
    receiver.set_mode("crm", Mode::Accept);

    let process = process.unwrap();
    let written = written.into_inner().unwrap();
    eventually("every event at the endpoint", Duration::from_secs(300), || async {
        let got = receiver.unique("crm");
        let incoming: HashSet<&str> =
            got.iter().filter(|d| d.kind == "message").filter_map(|d| d.data["id"].as_str()).collect();
        let untold = written.iter().filter(|id| !incoming.contains(id.as_str())).count();
        let unsent = sends.iter().filter(|id| receipts(&got, id).is_empty()).count();
        match (untold, unsent) {
            (0, 0) => Ok(Some(())),
            _ => Err(format!("{untold} incoming messages and {unsent} sends not told yet")),
        }
    })
    .await;
    let (listed, got) = settled(&process, &receiver, "crm", Duration::from_secs(60)).await;
    assert_in_queue_order(&got, &listed);
    let (twice, lost) = tally(&got, &written);
    let repeats = receiver.accepted("crm").len() - got.len();
    println!(
        "webhook drill: {INCOMING} incoming messages and {SENDS} sends, {KILLS} pod kills, the endpoint down for the first {}",
        KILLS / 2
    );
    println!(
        "  events {}, requests {}, accepted {} (repeats {repeats}, deduplicated by webhook-id), told twice {twice}, lost {lost}",
        got.len(),
        receiver.requests("crm"),
        receiver.accepted("crm").len()
    );
    assert_eq!((twice, lost), (0, 0));
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
}

#[tokio::test]
async fn the_pod_may_read_exactly_the_secrets_that_sign_its_webhooks() {
    use k8s_openapi::api::rbac::v1::Role;
    let ns = cluster().namespace("webhooks-rbac").await;
    let _op = Operator::start(&ns, "op", "op", &[]);
    let receiver = WebhookReceiver::start(SECRET).await;
    let mut other = hook(&receiver, "erp", &["state"]);
    other["secretRef"] = json!({"name": "erp-signing", "key": "key"});
    ns.create_session(
        "acme",
        json!({"clienteId": 1, "webhooks": [hook(&receiver, "crm", &["state"]), other]}),
    )
    .await;
    let roles = ns.api::<Role>();
    let secret_rule = |role: &Role| {
        role.rules.iter().flatten().any(|r| r.resources.as_deref() == Some(&["secrets".to_string()][..]))
    };
    eventually("the pod's Role to name the Secrets", Duration::from_secs(60), || async {
        Ok(roles.get_opt("acme-session").await.map_err(|e| e.to_string())?.filter(secret_rule))
    })
    .await;

    let who = format!("system:serviceaccount:{}:acme-session", ns.name);
    let can = |what: &str| {
        let out =
            whatsapp_tests::output(ns.kubectl().args(["auth", "can-i", "get", what, "--as", &who])).unwrap();
        out.stdout.trim() == "yes"
    };
    assert!(can("secrets/signing") && can("secrets/erp-signing"));
    assert!(!can("secrets/acme-hub-token") && !can("secrets"), "no other Secret, no listing");

    // Without webhooks, no Secret at all.
    ns.api::<whatsapp_crds::WhatsAppSession>()
        .patch(
            "acme",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"webhooks": null}})),
        )
        .await
        .unwrap();
    eventually("the Role without Secrets", Duration::from_secs(60), || async {
        let role = roles.get_opt("acme-session").await.map_err(|e| e.to_string())?;
        Ok(role.filter(|r| !secret_rule(r)).map(|_| ()))
    })
    .await;
    assert!(!can("secrets/signing"));
}
