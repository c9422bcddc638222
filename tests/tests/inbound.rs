//! Incoming messages against real Chromium, the simulator and the real control plane: what
//! WhatsApp users write is listed and streamed with its sender; what the page took while the
//! session process could not drain it is found by the catch-up after a restart; and a steady
//! stream of messages through kills of the process and of Chromium is stored exactly once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::hub::Events;
use whatsapp_tests::processes::{SessionProcess, TEST_HUB_TOKEN, chromium_pid, sample_value};
use whatsapp_tests::simulator::{SimConfig, Simulator};

/// The session's account.
const PHONE: &str = "5491122334455";
/// A WhatsApp user who writes to it.
const FRIEND: &str = "5491166667777";

fn simulator() -> SimConfig {
    SimConfig {
        first_ref: Duration::from_secs(4),
        next_ref: Duration::from_secs(2),
        sync: Duration::from_millis(1500),
        ..SimConfig::default()
    }
}

/// A GET of the pod's API: its status and JSON (status 0 while the process does not answer).
async fn get(process: &SessionProcess, path: &str) -> (u16, Value) {
    let request = reqwest::Client::new().get(format!("{}{path}", process.url())).bearer_auth(TEST_HUB_TOKEN);
    match request.send().await {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
        Err(e) => (0, json!(e.to_string())),
    }
}

/// Starts a session process for `name` and links it.
async fn linked(ns: &TestNamespace, sim: &Simulator, name: &str) -> SessionProcess {
    ns.create_session(name, json!({"clienteId": 1})).await;
    let process = SessionProcess::start(ns, name, &ns.profile_dir(name), sim);
    ns.link(sim, name, PHONE).await;
    process
}

/// Every incoming message the session lists, page by page (newest first), ids with repeats.
async fn listed_ids(process: &SessionProcess) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/v1/inbound?limit=100&cursor={c}"),
            None => "/v1/inbound?limit=100".to_string(),
        };
        let (code, page) = get(process, &path).await;
        if code != 200 {
            return Err(format!("{code}: {page}"));
        }
        for m in page["messages"].as_array().into_iter().flatten() {
            ids.push(m["id"].as_str().unwrap_or_default().to_string());
        }
        match page["nextCursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return Ok(ids),
        }
    }
}

/// The value of a sample of the process's metrics (0 when absent).
async fn metric(process: &SessionProcess, sample: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", process.url())).await.unwrap().text().await.unwrap();
    sample_value(&text, sample).unwrap_or(0.0)
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Kills the session process and its Chromium (as when the pod's container dies).
async fn kill_process(mut process: SessionProcess) {
    kill(process.pid() as i32);
    let _ = process.exited(Duration::from_secs(10)).await;
    if let Some(pid) = chromium_pid(&process.profile) {
        kill(pid);
    }
}

#[tokio::test]
async fn incoming_messages_are_listed_and_streamed_with_their_sender() {
    let ns = cluster().namespace("inbound-list").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let process = linked(&ns, &sim, "acme").await;
    sim.set_push_name(FRIEND, "Ana");
    let mut events = Events::open(&format!("{}/v1/outbox/events", process.url()), TEST_HUB_TOKEN).await;

    // The session writes first; the friend's last message replies to it.
    let (code, sent) =
        post_outbox(&process, json!({"messages": [{"to": FRIEND, "message": "our offer"}]})).await;
    assert_eq!(code, 202, "{sent}");
    let ours = sent["messages"][0]["id"].as_str().unwrap().to_string();
    eventually("our message at WhatsApp", Duration::from_secs(30), || async {
        Ok(sim.messages().iter().any(|m| m.id == ours).then_some(()))
    })
    .await;
    let mut bodies: Vec<String> = (0..3).map(|i| format!("hello #{i}")).collect();
    let mut ids: Vec<String> =
        bodies.iter().map(|b| sim.send_from_phone(FRIEND, PHONE, b).unwrap()).collect();
    ids.push(sim.send_reply(FRIEND, PHONE, "yes please", &ours).unwrap());
    // The last arrives undecryptable first (a `ciphertext` placeholder): taken once decrypted.
    ids.push(sim.send_undecryptable(FRIEND, PHONE, "at last").unwrap());
    bodies.extend(["yes please".to_string(), "at last".to_string()]);

    // Each is told once stored, in the order it came.
    for id in &ids {
        events
            .until(&format!("event: incoming {id}"), Duration::from_secs(30), |name, data| {
                name == "incoming" && data["id"] == json!(id)
            })
            .await;
    }
    let (code, listed) = get(&process, "/v1/inbound").await;
    assert_eq!(code, 200, "{listed}");
    let messages = listed["messages"].as_array().unwrap();
    let newest_first: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(newest_first, ids.iter().rev().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(listed["nextCursor"], Value::Null);
    let lid = Simulator::lid_of(FRIEND);
    for (m, body) in messages.iter().rev().zip(&bodies) {
        assert_eq!(
            (&m["direction"], &m["from"], &m["fromLid"], &m["pushName"], &m["chat"], &m["type"], &m["body"]),
            (
                &json!("in"),
                &json!(FRIEND),
                &json!(lid),
                &json!("Ana"),
                &json!(format!("{lid}@lid")),
                &json!("chat"),
                &json!(body)
            ),
            "{m}"
        );
        assert!(m["timestamp"].is_string() && m["receivedAt"].is_string() && m["media"].is_null(), "{m}");
    }
    assert_eq!(messages[1]["quotedId"], json!(ours), "the reply names the message it quotes");
    assert_eq!(messages[0]["quotedId"], Value::Null);

    // Pages, one message by id, and what is refused.
    let (_, first) = get(&process, "/v1/inbound?limit=2").await;
    let cursor = first["nextCursor"].as_u64().expect("a next page");
    let (_, second) = get(&process, &format!("/v1/inbound?limit=2&cursor={cursor}")).await;
    assert_eq!(second["messages"][0]["id"], json!(ids[2]));
    let (code, one) = get(&process, &format!("/v1/inbound/{}", ids[0])).await;
    assert_eq!((code, &one), (200, &messages[4]));
    let (code, missing) = get(&process, "/v1/inbound/3A0000000000").await;
    assert_eq!((code, missing["error"].as_str()), (404, Some("MESSAGE_NOT_FOUND")));
    for bad in ["limit=0", "limit=1001", "limit=ten", "cursor=abc"] {
        let (code, refused) = get(&process, &format!("/v1/inbound?{bad}")).await;
        assert_eq!((code, refused["error"].as_str()), (400, Some("INVALID_QUERY")), "{bad}");
    }
    assert_eq!(metric(&process, r#"whatsapp_session_incoming_total{source="live"}"#).await, 5.0);
    assert_eq!(sim.unacknowledged(PHONE), 0, "the page acknowledged every message it stored");
}

async fn post_outbox(process: &SessionProcess, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/outbox", process.url()))
        .bearer_auth(TEST_HUB_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn what_the_page_took_while_the_process_could_not_drain_it_is_caught_up() {
    let ns = cluster().namespace("inbound-catch-up").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let process = linked(&ns, &sim, "acme").await;
    let profile = process.profile.clone();
    let before = sim.send_from_phone(FRIEND, PHONE, "before").unwrap();
    eventually("the first message stored", Duration::from_secs(30), || async {
        Ok(listed_ids(&process).await?.contains(&before).then_some(()))
    })
    .await;

    // The session process freezes: its Chromium goes on, takes and acknowledges three messages
    // (WhatsApp will not send them again), and nobody drains them. Then both die.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(process.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let taken: Vec<String> =
        (0..3).map(|i| sim.send_from_phone(FRIEND, PHONE, &format!("while frozen #{i}")).unwrap()).collect();
    eventually("the page to acknowledge them", Duration::from_secs(30), || async {
        Ok((sim.unacknowledged(PHONE) == 0).then_some(()))
    })
    .await;
    kill_process(process).await;

    // The next process finds them in what WhatsApp Web restores, once each.
    let process = SessionProcess::start(&ns, "acme", &profile, &sim);
    let ids = eventually("the caught-up messages listed", Duration::from_secs(60), || async {
        let ids = listed_ids(&process).await?;
        Ok(taken.iter().all(|id| ids.contains(id)).then_some(ids))
    })
    .await;
    assert_eq!(ids.len(), 4, "each once: {ids:?}");
    assert_eq!(metric(&process, r#"whatsapp_session_incoming_total{source="catch_up"}"#).await, 3.0);
}

#[tokio::test]
async fn a_steady_stream_through_kills_is_stored_exactly_once() {
    const MESSAGES: usize = 200;
    const KILLS: usize = 5;
    let ns = cluster().namespace("inbound-drill").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let name = "drill";
    let profile = ns.profile_dir(name);
    let mut process = Some(linked(&ns, &sim, name).await);

    // The friend writes at a steady pace while the session process (with its Chromium) or only
    // its Chromium is killed, five times.
    let sent: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let writer = async {
        let mut pace = tokio::time::interval(Duration::from_millis(250));
        for i in 0..MESSAGES {
            pace.tick().await;
            let id = sim.send_from_phone(FRIEND, PHONE, &format!("drill #{i}")).unwrap();
            sent.lock().unwrap().push(id);
        }
    };
    let killer = async {
        let mut kills: HashMap<&str, usize> = HashMap::new();
        for k in 0..KILLS {
            let point = (k + 1) * MESSAGES / (KILLS + 1);
            eventually(&format!("{point} messages written"), Duration::from_secs(90), || async {
                Ok((sent.lock().unwrap().len() >= point).then_some(()))
            })
            .await;
            if k % 2 == 0 {
                kill_process(process.take().unwrap()).await;
                process = Some(SessionProcess::start(&ns, name, &profile, &sim));
                *kills.entry("session process and Chromium SIGKILL").or_default() += 1;
            } else {
                kill(chromium_pid(&profile).expect("Chromium runs on the profile"));
                *kills.entry("Chromium SIGKILL").or_default() += 1;
            }
            // A message written after the kill is stored: the session is back.
            let after = point + 3;
            let p = process.as_ref().unwrap();
            eventually(
                &format!("message {after} stored after kill {k}"),
                Duration::from_secs(60),
                || async {
                    let id = sent.lock().unwrap().get(after).cloned();
                    let Some(id) = id else { return Ok(None) };
                    Ok(listed_ids(p).await?.contains(&id).then_some(()))
                },
            )
            .await;
        }
        kills
    };
    let ((), kills) = tokio::join!(writer, killer);

    let process = process.unwrap();
    let sent = sent.into_inner().unwrap();
    let ids = eventually("every message listed", Duration::from_secs(60), || async {
        let ids = listed_ids(&process).await?;
        Ok(sent.iter().all(|id| ids.contains(id)).then_some(ids))
    })
    .await;
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *copies.entry(id.as_str()).or_default() += 1;
    }
    let duplicates = copies.values().filter(|n| **n > 1).count();
    let missing = sent.iter().filter(|id| !copies.contains_key(id.as_str())).count();
    let caught_up = metric(&process, r#"whatsapp_session_incoming_total{source="catch_up"}"#).await;
    println!("inbound drill: {MESSAGES} incoming messages, one every 250 ms");
    for (kind, n) in &kills {
        println!("  {kind:<38} {n} kills");
    }
    println!(
        "  listed {}, duplicates {duplicates}, missing {missing}, held by WhatsApp {}, caught up by the last process {caught_up}",
        ids.len(),
        sim.unacknowledged(PHONE)
    );
    assert_eq!((ids.len(), duplicates, missing), (MESSAGES, 0, 0));
    assert_eq!(sim.unacknowledged(PHONE), 0, "the page acknowledged every message");
}
