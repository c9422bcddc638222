//! Contacts, number checks and the original system's remaining routes through the whole stack
//! (control plane, operator, pod runner with the real session process and Chromium, the
//! simulator as WhatsApp and the phone, the hub as a process), used the way the frontend uses
//! them: the phone's address book synced through `/sync-contacts/sync` and paged; numbers
//! checked once each, paced, then answered from the session's store (WhatsApp is not asked
//! again); received messages listed and pushed live; every route of the original hub answers.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::hub::{Hub, HubOptions, tenant_token};
use whatsapp_tests::processes::Operator;
use whatsapp_tests::simulator::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(90);
const CLIENTE: i64 = 71;
const PHONE: &str = "5491144445555";
const ANA: &str = "5491177770000";
const SHOP: &str = "5491177770001";
const NOT_ON_WHATSAPP: &str = "0001177770002";
const BETO: &str = "5491177770003";

/// A linked session of clienteId 71 behind a hub, with the simulator as WhatsApp.
/// Fields drop in order: the hub, the pods, the operator, the simulator, then the namespace.
struct Stack {
    hub: Hub,
    token: String,
    _runner: whatsapp_tests::podrunner::PodRunner,
    _op: Operator,
    sim: Simulator,
    _ns: TestNamespace,
}

impl Stack {
    async fn linked(prefix: &str) -> Stack {
        let ns = cluster().namespace(prefix).await;
        let config = SimConfig {
            first_ref: Duration::from_secs(4),
            next_ref: Duration::from_secs(2),
            ..SimConfig::default()
        };
        let sim = Simulator::start(config).await.unwrap();
        let op = Operator::start(&ns, "op", "op", &[]);
        let runner = ns.pod_runner(&sim);
        let hub = Hub::ready(&ns, HubOptions::default()).await;
        let token = tenant_token(CLIENTE);
        ns.create_session(&format!("cliente-{CLIENTE}"), json!({"clienteId": CLIENTE})).await;
        let stack = Stack { hub, token, _runner: runner, _op: op, sim, _ns: ns };
        stack.scan().await;
        stack.wait_state("READY").await;
        stack
    }

    /// The phone scans the QR picture the hub shows (the next one, if it rotated in between).
    async fn scan(&self) {
        eventually("a scan of the QR the hub shows", WAIT, || async {
            let (code, body) = self.get(&format!("/api/whatsapp/{CLIENTE}/qr")).await;
            let data_url = body["qr"]["base64"].as_str().unwrap_or_default();
            let Some(png) = data_url.strip_prefix("data:image/png;base64,").filter(|_| code == 200) else {
                return Ok(None);
            };
            let png = base64::engine::general_purpose::STANDARD.decode(png).map_err(|e| e.to_string())?;
            Ok(self.sim.scan_png(&png, PHONE, "Acme").ok())
        })
        .await
    }

    async fn wait_state(&self, state: &str) -> Value {
        eventually(&format!("the session {state}"), WAIT, || async {
            let (code, status) = self.get(&format!("/api/whatsapp/{CLIENTE}/status")).await;
            Ok((code == 200 && status["state"] == state).then_some(status))
        })
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.hub.get(path, &self.token).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.hub.post(path, &self.token, body).await
    }

    /// `/sync-contacts/sync` as the original frontend calls it: the tenant from the token, no body.
    async fn sync(&self) -> Value {
        let (code, synced) =
            self.hub.call(reqwest::Method::POST, "/sync-contacts/sync", Some(&self.token), None).await;
        assert_eq!((code, synced["ok"].as_bool()), (200, Some(true)), "{synced}");
        synced
    }

    /// Every contact of the last sync, `limit` at a time.
    async fn contacts(&self, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..50 {
            let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let (code, page) =
                self.get(&format!("/api/whatsapp/{CLIENTE}/contacts?limit={limit}{after}")).await;
            assert_eq!(code, 200, "{page}");
            let contacts = page["contacts"].as_array().unwrap();
            assert!(contacts.len() <= limit, "{page}");
            all.extend(contacts.iter().cloned());
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
        panic!("more pages than contacts");
    }

    async fn check(&self, numbers: &[String]) -> Vec<Value> {
        let (code, checked) =
            self.post(&format!("/api/whatsapp/{CLIENTE}/numbers/check"), json!({"numbers": numbers})).await;
        assert_eq!(code, 200, "{checked}");
        let results = checked["results"].as_array().unwrap().clone();
        assert_eq!(results.len(), numbers.len(), "one answer per number: {checked}");
        results
    }
}

fn statuses(results: &[Value]) -> Vec<&str> {
    results.iter().map(|r| r["status"].as_str().unwrap()).collect()
}

fn by_number<'a>(contacts: &'a [Value], number: &str) -> &'a Value {
    contacts.iter().find(|c| c["number"] == number).unwrap_or_else(|| panic!("{number} in {contacts:?}"))
}

#[tokio::test]
async fn the_phones_address_book_is_synced_and_paged_through_the_original_route() {
    let stack = Stack::linked("contacts-sync").await;
    let sim = &stack.sim;
    sim.set_business(SHOP, "Ferretería Sur SA");
    sim.set_address_book(PHONE, &[(ANA, "Ana Pérez"), (SHOP, "Ferretería"), (NOT_ON_WHATSAPP, "Nobody")]);
    // Someone not in the address book writes: a contact too, by the name they gave themselves.
    sim.set_push_name(BETO, "Beto");
    sim.send_from_phone(BETO, PHONE, "hola, ¿tienen stock?").unwrap();

    // The phone's sync and the message reach the page in the background: sync until both show.
    let synced = eventually("the address book and the writer in WhatsApp Web", WAIT, || async {
        let synced = stack.sync().await;
        Ok((synced["count"] == 3).then_some(synced))
    })
    .await;
    assert!(synced["syncedAt"].is_string(), "{synced}");

    let contacts = stack.contacts(2).await;
    let names: Vec<&str> =
        contacts.iter().map(|c| c["name"].as_str().or(c["pushName"].as_str()).unwrap_or_default()).collect();
    assert_eq!(
        names,
        ["Ana Pérez", "Beto", "Ferretería"],
        "each person once (phone and LID merged), by name"
    );
    let ana = by_number(&contacts, ANA);
    assert_eq!(
        (ana["lid"].as_str(), ana["isMyContact"].as_bool()),
        (Some(Simulator::lid_of(ANA).as_str()), Some(true))
    );
    assert_eq!(ana["isBusiness"], false);
    assert_eq!(by_number(&contacts, SHOP)["isBusiness"], true);
    let beto = by_number(&contacts, BETO);
    assert_eq!(
        (beto["name"].clone(), beto["pushName"].as_str(), beto["isMyContact"].as_bool()),
        (Value::Null, Some("Beto"), Some(false))
    );
    assert!(!contacts.iter().any(|c| c["number"] == NOT_ON_WHATSAPP || c["number"] == PHONE), "{contacts:?}");

    // The user edits the address book: the next sync is the book as it is now.
    sim.set_address_book(PHONE, &[(ANA, "Ana P. (trabajo)"), (BETO, "Beto Gómez")]);
    eventually("the edited address book in the next sync", WAIT, || async {
        stack.sync().await;
        let contacts = stack.contacts(100).await;
        let saved = |n: &str| by_number(&contacts, n)["name"].clone();
        Ok((saved(ANA) == "Ana P. (trabajo)" && saved(BETO) == "Beto Gómez" && saved(SHOP).is_null())
            .then_some(()))
    })
    .await;

    // A tenant syncs only its own session; a session not linked is refused, not queued.
    let (code, body) = stack.post("/sync-contacts/sync", json!({"clienteId": CLIENTE + 1})).await;
    assert_eq!((code, body["error"].as_str()), (403, Some("FORBIDDEN")));
}

#[tokio::test]
async fn numbers_are_checked_once_each_paced_and_then_answered_from_the_store() {
    let stack = Stack::linked("contacts-check").await;
    let sim = &stack.sim;
    let given: Vec<String> =
        [ANA, "+54 9 11 7777-0001", NOT_ON_WHATSAPP, "12", ANA].iter().map(|s| s.to_string()).collect();
    let before = sim.exists_queries();
    let results = stack.check(&given).await;
    assert_eq!(
        statuses(&results),
        ["on_whatsapp", "on_whatsapp", "not_on_whatsapp", "invalid", "on_whatsapp"]
    );
    assert_eq!(results[1]["number"], "+54 9 11 7777-0001", "answered as given");
    assert_eq!(results[0]["lid"].as_str(), Some(Simulator::lid_of(ANA).as_str()));
    assert!(results[2]["checkedAt"].is_string() && results[3]["checkedAt"].is_null(), "{results:?}");
    assert_eq!(
        sim.exists_queries() - before,
        3,
        "each distinct valid number asked once, the invalid one never"
    );

    // Asked again: the same answers, and WhatsApp is not asked again.
    assert_eq!(stack.check(&given).await, results);
    assert_eq!(sim.exists_queries() - before, 3, "answered from the session's store");

    // More than a request's wait allows at one query every 1-2 s: the rest answer `pending` and
    // are checked in the background, each once; a later request finds them all.
    let many: Vec<String> = (0..30).map(|i| format!("54911888800{i:02}")).collect();
    let first = stack.check(&many).await;
    let answered = statuses(&first).iter().filter(|s| **s != "pending").count();
    assert!(answered <= 21, "at most one query a second in a 20 s wait: {answered} answered");
    assert!(answered < many.len(), "{first:?}");
    let all = eventually("every number checked in the background", WAIT, || async {
        let results = stack.check(&many).await;
        Ok(results.iter().all(|r| r["status"] == "on_whatsapp").then_some(results))
    })
    .await;
    assert!(all.iter().all(|r| r["checkedAt"].is_string()));
    assert_eq!(sim.exists_queries() - before, 3 + many.len(), "each number asked once, pending or not");

    // The hub refuses what the session would: an empty list, more than 1000.
    for bad in [json!({"numbers": []}), json!({"numbers": vec![ANA; 1001]})] {
        let (code, body) = stack.post(&format!("/api/whatsapp/{CLIENTE}/numbers/check"), bad).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_NUMBERS")), "{body}");
    }
}

#[tokio::test]
async fn received_messages_are_listed_and_pushed_and_every_original_route_answers() {
    let stack = Stack::linked("contacts-routes").await;
    let mut events = stack.hub.events(CLIENTE, &stack.token).await;
    let id = stack.sim.send_from_phone(ANA, PHONE, "¿abren el sábado?").unwrap();

    // Live on the hub's event stream, then in the listing of received messages.
    let pushed = events
        .until("the received message", WAIT, |name, data| name == "message" && data["direction"] == "in")
        .await;
    assert_eq!(
        (pushed["id"].as_str(), pushed["body"].as_str(), pushed["from"].as_str()),
        (Some(id.as_str()), Some("¿abren el sábado?"), Some(ANA))
    );
    let (code, page) = stack.get(&format!("/api/whatsapp/{CLIENTE}/messages?direction=in&limit=10")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["messages"][0]["id"].as_str(), Some(id.as_str()), "{page}");
    let (code, page) = stack.get(&format!("/api/whatsapp/{CLIENTE}/messages")).await;
    assert_eq!(
        (code, page["messages"].as_array().map(Vec::len)),
        (200, Some(0)),
        "sent ones by default: {page}"
    );

    // Every route of the original hub is served (the session's own answer, never a 404).
    let (code, health) = stack.hub.call(reqwest::Method::GET, "/api/health", None, None).await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    for prefix in ["/api/session-manager", "/session-manager"] {
        for path in ["status", "state"] {
            let (code, body) = stack.get(&format!("{prefix}/{path}")).await;
            assert_eq!((code, body["state"].as_str()), (200, Some("READY")), "{prefix}/{path}: {body}");
        }
        let (code, body) = stack.get(&format!("{prefix}/qr")).await;
        assert_eq!((code, body["error"].as_str()), (409, Some("ALREADY_CONNECTED")), "{prefix}/qr");
        let (code, body) = stack.post(&format!("{prefix}/login"), json!({})).await;
        assert_eq!((code, body["alreadyConnected"].as_bool()), (200, Some(true)), "{prefix}/login: {body}");
    }
    let (code, page) = stack.get(&format!("/api/whatsapp/{CLIENTE}/webhooks/deliveries")).await;
    assert_eq!((code, page["deliveries"].as_array().map(Vec::len)), (200, Some(0)), "no webhooks: {page}");
    let (code, body) =
        stack.post(&format!("/api/whatsapp/{CLIENTE}/webhooks/deliveries/1/redeliver"), json!({})).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("DELIVERY_NOT_FOUND")), "{body}");

    // Logout through the original route: the phone's device is removed, a new QR follows.
    let (code, body) = stack.post("/api/session-manager/logout", json!({})).await;
    assert_eq!((code, body["message"].as_str()), (200, Some("Logged out")), "{body}");
    stack.wait_state("QR_REQUIRED").await;
    let (code, body) = stack.post("/session-manager/logout", json!({})).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("SESSION_NOT_READY")),
        "nothing to log out: {body}"
    );
    let (code, body) = stack.post("/sync-contacts/sync", json!({})).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "{body}");
}
