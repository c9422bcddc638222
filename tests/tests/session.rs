//! The session pod's process with real Chromium, the WhatsApp Web simulator and the real
//! control plane: QR in the status, linking, sending, restarts on the same profile.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use whatsapp_crds::{SessionState, WhatsAppSessionStatus};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{SessionProcess, TEST_HUB_TOKEN, chromium_pid};
use whatsapp_tests::simulator::{Build, SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(90);
const PHONE: &str = "5491122334455";

fn fast_simulator() -> SimConfig {
    SimConfig { first_ref: Duration::from_secs(4), next_ref: Duration::from_secs(2), ..SimConfig::default() }
}

async fn send(
    session: &SessionProcess,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().post(format!("{}/v1/messages", session.url())).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(json!(null)))
}

#[tokio::test]
async fn on_todays_build_qr_scan_ready_send_and_restart_without_a_new_qr() {
    qr_scan_ready_send_and_restart(Build::Current).await;
}

#[tokio::test]
async fn on_an_older_build_qr_scan_ready_send_and_restart_without_a_new_qr() {
    qr_scan_ready_send_and_restart(Build::Legacy).await;
}

async fn qr_scan_ready_send_and_restart(build: Build) {
    let ns = cluster().namespace("session-e2e").await;
    let sim = Simulator::start(SimConfig { build, ..fast_simulator() }).await.unwrap();
    ns.create_session("acme", json!({"clienteId": 1})).await;
    let profile = ns.profile_dir("acme");
    let mut process = SessionProcess::start(&ns, "acme", &profile, &sim);

    // The QR appears in the status as WhatsApp Web draws it (ref, noise key, identity key,
    // ADV secret, platform), with its attempt count and expiry.
    let status = ns.wait_status("acme", "a QR code in the status", |s| s.qr.is_some()).await;
    assert_eq!(status.state, Some(SessionState::QrRequired));
    let qr = status.qr.unwrap();
    assert!(qr.code.starts_with("2@") && qr.code.split(',').count() >= 5, "{}", qr.code);
    assert!(qr.attempts >= 1);
    assert_eq!(status.endpoint.as_deref(), Some(process.url().as_str()));
    let compatible = status.conditions.iter().find(|c| c.type_ == "BridgeCompatible");
    assert_eq!(
        compatible.map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "AllModulesPresent"))
    );

    // The phone refuses what is not the whole QR of this browser.
    let bare_ref = qr.code.split(',').next().unwrap();
    assert!(sim.scan(bare_ref, PHONE, "Acme").is_err(), "a bare ref links nothing");
    let mut parts: Vec<String> = qr.code.split(',').map(String::from).collect();
    parts[1] = BASE64.encode([7u8; 32]);
    assert!(sim.scan(&parts.join(","), PHONE, "Acme").is_err(), "a QR with another noise key links nothing");

    // The phone scans the code now on screen.
    let ready = link(&ns, &sim, "acme").await;
    assert_eq!(ready.me.as_ref().map(|m| m.phone.as_str()), Some(PHONE));
    assert!(ready.qr.is_none(), "no QR once linked");
    assert!(ready.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    // Sending: delivered once, even with the same idempotency key twice; the id is
    // WhatsApp's own message id.
    let body = json!({"to": "+54 9 11 5555-0000", "message": "hola", "idempotencyKey": "k-1"});
    let (code, first) = send(&process, Some(TEST_HUB_TOKEN), body.clone()).await;
    assert_eq!(code, 200, "{first}");
    let (code, second) = send(&process, Some(TEST_HUB_TOKEN), body).await;
    assert_eq!((code, &second["id"], &second["duplicate"]), (200, &first["id"], &json!(true)));
    let received = sim.messages();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        (received[0].to.as_str(), received[0].body.as_str(), received[0].from.as_str()),
        ("5491155550000", "hola", PHONE)
    );
    assert_eq!(first["id"].as_str(), Some(received[0].id.as_str()));
    // WhatsApp saw a desktop Chromium, not a headless one: the user agent override (and its
    // client hints) holds for the page's requests after launch.
    let browser = received[0].browser.as_deref().unwrap_or_default();
    assert!(browser.contains("\"Chromium\"") && !browser.contains("Headless"), "Sec-CH-UA: {browser:?}");

    // Bad numbers get clear errors; only the hub may send.
    let (code, err) =
        send(&process, Some(TEST_HUB_TOKEN), json!({"to": "00012345678", "message": "x"})).await;
    assert_eq!((code, err["error"].as_str()), (422, Some("NOT_ON_WHATSAPP")));
    let (code, err) = send(&process, Some(TEST_HUB_TOKEN), json!({"to": "12ab", "message": "x"})).await;
    assert_eq!((code, err["error"].as_str()), (400, Some("INVALID_NUMBER")));
    assert_eq!(send(&process, None, json!({"to": PHONE, "message": "x"})).await.0, 401);
    assert_eq!(send(&process, Some("not-the-hub"), json!({"to": PHONE, "message": "x"})).await.0, 403);
    assert_eq!(sim.messages().len(), 1, "refused sends sent nothing");

    // Restart on the same profile: READY again, without a QR.
    process.stop();
    ns.wait_status("acme", "DISCONNECTED after stopping", |s| s.state == Some(SessionState::Disconnected))
        .await;
    let process = SessionProcess::start(&ns, "acme", &profile, &sim);
    let again =
        ns.wait_status("acme", "READY after a restart", |s| s.state == Some(SessionState::Ready)).await;
    assert_eq!(again.me.map(|m| m.phone), Some(PHONE.to_string()));
    // The idempotency key survived the restart too.
    let (code, replay) = send(
        &process,
        Some(TEST_HUB_TOKEN),
        json!({"to": "5491155550000", "message": "hola", "idempotencyKey": "k-1"}),
    )
    .await;
    assert_eq!((code, &replay["duplicate"]), (200, &json!(true)));
    assert_eq!(sim.messages().len(), 1);
    // Chromium's caches live outside the profile volume, so they can never fill it (the
    // headless shell's code cache path in the profile is a link to the cache directory).
    for cache in ["Default/Cache", "Default/Code Cache"] {
        let on_volume = std::fs::symlink_metadata(profile.join(cache)).is_ok_and(|m| m.is_dir());
        assert!(!on_volume, "{cache} is on the profile volume");
    }
}

#[tokio::test]
async fn a_build_without_a_module_the_bridge_uses_is_reported_not_failed_later() {
    let ns = cluster().namespace("session-canary").await;
    let sim = Simulator::start(SimConfig {
        without_modules: vec!["WAWebQueryExistsJob".into()],
        ..fast_simulator()
    })
    .await
    .unwrap();
    ns.create_session("acme", json!({"clienteId": 1})).await;
    let process = SessionProcess::start(&ns, "acme", &ns.profile_dir("acme"), &sim);
    // Linking needs nothing that is missing: it works. What sending needs is checked once the
    // account is connected (WhatsApp Web loads those modules late).
    link(&ns, &sim, "acme").await;
    let status = ns
        .wait_status("acme", "BridgeCompatible=False", |s| {
            s.conditions.iter().any(|c| c.type_ == "BridgeCompatible" && c.status == "False")
        })
        .await;
    let condition = status.conditions.iter().find(|c| c.type_ == "BridgeCompatible").unwrap();
    assert_eq!(condition.reason, "ModuleMissing");
    assert!(condition.message.contains("WAWebQueryExistsJob"), "{}", condition.message);
    let metrics = reqwest::get(format!("{}/metrics", process.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("whatsapp_session_bridge_compatible 0"), "{metrics}");
    assert!(
        metrics.contains(r#"whatsapp_session_bridge_missing_info{item="WAWebQueryExistsJob"} 1"#),
        "{metrics}"
    );

    // A send says what is missing at once.
    let (code, err) =
        send(&process, Some(TEST_HUB_TOKEN), json!({"to": "5491155550000", "message": "x"})).await;
    assert_eq!(code, 502, "{err}");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("WAWebQueryExistsJob")), "{err}");
    assert!(sim.messages().is_empty());
}

async fn link(ns: &TestNamespace, sim: &Simulator, name: &str) -> WhatsAppSessionStatus {
    ns.link(sim, name, PHONE).await
}

#[tokio::test]
async fn a_killed_browser_recovers_and_logout_and_conflict_are_reported() {
    let ns = cluster().namespace("session-faults").await;
    let sim = Simulator::start(fast_simulator()).await.unwrap();
    ns.create_session("acme", json!({"clienteId": 1})).await;
    let profile = ns.profile_dir("acme");
    let process = SessionProcess::start(&ns, "acme", &profile, &sim);
    link(&ns, &sim, "acme").await;

    // Chromium is killed: the driver notices, restarts it, and the login is still there.
    let pid = chromium_pid(&profile).expect("Chromium runs on the profile");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let crashed =
        ns.wait_status("acme", "the crash reported", |s| s.reason.as_deref() == Some("BrowserCrashed")).await;
    assert_eq!(crashed.state, Some(SessionState::Disconnected));
    let back =
        ns.wait_status("acme", "READY after the crash", |s| s.state == Some(SessionState::Ready)).await;
    assert!(back.qr.is_none());
    let metrics = reqwest::get(format!("{}/metrics", process.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("whatsapp_session_browser_restarts_total 1"), "{metrics}");

    // Chromium hangs (frozen, not dead): calls miss their deadline, it is killed and restarted.
    let pid = chromium_pid(&profile).expect("Chromium runs on the profile");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).unwrap();
    ns.wait_status("acme", "the hang reported", |s| {
        s.reason.as_deref() == Some("BrowserCrashed")
            && s.message.as_deref().is_some_and(|m| m.contains("stopped answering"))
    })
    .await;
    ns.wait_status("acme", "READY after the hang", |s| s.state == Some(SessionState::Ready)).await;
    assert_ne!(chromium_pid(&profile), Some(pid), "a new Chromium");

    // Logged out from the phone: a QR again, with the reason.
    sim.logout_from_phone(PHONE).unwrap();
    let out = ns.wait_status("acme", "QR after the logout", |s| s.qr.is_some()).await;
    assert_eq!((out.state, out.reason.as_deref()), (Some(SessionState::QrRequired), Some("LoggedOut")));
    assert!(out.me.is_none());

    // Linked again, then the account is opened elsewhere: a conflict, reported.
    link(&ns, &sim, "acme").await;
    let conflict = reqwest::Client::new()
        .post(format!("{}/control/conflict", sim.control_url()))
        .json(&json!({"phone": PHONE}))
        .send()
        .await
        .unwrap();
    assert!(conflict.status().is_success());
    let reported = ns.wait_status("acme", "the conflict", |s| s.reason.as_deref() == Some("Conflict")).await;
    assert_eq!(reported.state, Some(SessionState::Disconnected));

    // Logout through the hub-only API: refused to anyone but the hub.
    let logout = |token: Option<&'static str>| {
        let mut request = reqwest::Client::new().post(format!("{}/v1/logout", process.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(logout(None).await, 401);
    assert_eq!(logout(Some("not-the-hub")).await, 403);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/logout", process.url()))
        .bearer_auth(TEST_HUB_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    ns.wait_status("acme", "QR after the API logout", |s| s.qr.is_some()).await;
}

#[tokio::test]
async fn a_second_process_on_the_same_profile_refuses_to_start() {
    let ns = cluster().namespace("session-lock").await;
    let sim = Simulator::start(fast_simulator()).await.unwrap();
    ns.create_session("acme", json!({"clienteId": 1})).await;
    let profile = ns.profile_dir("acme");
    let _first = SessionProcess::start(&ns, "acme", &profile, &sim);
    ns.wait_status("acme", "the first process to show a QR", |s| s.qr.is_some()).await;
    let mut second = SessionProcess::start(&ns, "acme", &profile, &sim);
    let log = second.exited(Duration::from_secs(20)).await.expect("the second process exits");
    assert!(log.contains("in use by another session process"), "{log}");
}

#[tokio::test]
async fn an_unscanned_qr_stops_after_max_attempts_with_a_clear_reason() {
    let ns = cluster().namespace("session-qr-max").await;
    let sim = Simulator::start(SimConfig {
        first_ref: Duration::from_secs(2),
        next_ref: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    ns.create_session("acme", json!({"clienteId": 1, "qr": {"maxAttempts": 3}})).await;
    let profile = ns.profile_dir("acme");
    let _process = SessionProcess::start(&ns, "acme", &profile, &sim);
    let failed = ns.wait_status("acme", "FAILED", |s| s.state == Some(SessionState::Failed)).await;
    assert_eq!(failed.reason.as_deref(), Some("QRAttemptsExhausted"));
    assert!(failed.message.unwrap_or_default().contains("3 QR codes"));
    assert!(failed.qr.is_none());
}

#[tokio::test]
async fn phone_code_pairing_links_the_session() {
    let ns = cluster().namespace("session-code").await;
    let sim = Simulator::start(fast_simulator()).await.unwrap();
    ns.create_session(
        "acme",
        json!({"clienteId": 1, "pairing": {"method": "PhoneCode", "phoneNumber": PHONE}}),
    )
    .await;
    let profile = ns.profile_dir("acme");
    let _process = SessionProcess::start(&ns, "acme", &profile, &sim);
    let waiting = ns.wait_status("acme", "a pairing code", |s| s.pairing_code.is_some()).await;
    assert_eq!(waiting.state, Some(SessionState::QrRequired));
    assert!(waiting.qr.is_none(), "no QR with phone-code pairing");
    let code = waiting.pairing_code.unwrap();
    assert_eq!(code.len(), 8);
    let response = reqwest::Client::new()
        .post(format!("{}/control/enter-code", sim.control_url()))
        .json(&json!({"phone": PHONE, "code": code}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let ready = ns.wait_status("acme", "READY", |s| s.state == Some(SessionState::Ready)).await;
    assert_eq!(ready.me.map(|m| m.phone), Some(PHONE.to_string()));
    assert!(ready.pairing_code.is_none());
}

/// The hub's token for a session, as the hub derives it (the operator's Secret holds the same).
async fn hub_token_of(ns: &TestNamespace, name: &str) -> String {
    let secret =
        ns.api::<k8s_openapi::api::core::v1::Secret>().get(&format!("{name}-hub-token")).await.unwrap();
    String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap()
}

async fn pod_ready(ns: &TestNamespace, pod: &str) -> Option<(String, bool)> {
    let p = ns.api::<k8s_openapi::api::core::v1::Pod>().get_opt(pod).await.ok()??;
    let ready = p.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    Some((p.metadata.uid?, ready))
}

#[tokio::test]
async fn through_the_operator_a_session_links_sends_and_survives_crashes_and_pod_loss() {
    let ns = cluster().namespace("session-op").await;
    let sim = Simulator::start(fast_simulator()).await.unwrap();
    let _operator = whatsapp_tests::processes::Operator::start(&ns, "op", "op", &[]);
    let runner = ns.pod_runner(&sim);
    let applied = ns.apply("apiVersion: whatsapp.leadmaster.dev/v1alpha1\nkind: WhatsAppSession\nmetadata:\n  name: acme\nspec:\n  clienteId: 7\n");
    assert!(applied.success, "{applied:?}");

    // QR in the status -> the phone scans -> READY, with the pod Ready too.
    let with_qr = ns.wait_status("acme", "a QR code", |s| s.qr.is_some()).await;
    let code = with_qr.qr.unwrap().code;
    if sim.scan(&code, PHONE, "Acme").is_err() {
        let next =
            ns.wait_status("acme", "the next QR", |s| s.qr.as_ref().is_some_and(|q| q.code != code)).await;
        sim.scan(&next.qr.unwrap().code, PHONE, "Acme").expect("scan");
    }
    let ready = ns.wait_status("acme", "READY", |s| s.state == Some(SessionState::Ready)).await;
    assert_eq!(ready.me.map(|m| m.phone), Some(PHONE.to_string()));
    let (first_uid, _) =
        eventually("pod Ready", WAIT, || async { Ok(pod_ready(&ns, "acme-0").await.filter(|(_, r)| *r)) })
            .await;
    run_kubectl_wait(&ns, "PodReady");

    // A send through the endpoint the status publishes, with the hub's token.
    let endpoint = ready.endpoint.expect("endpoint in the status");
    let token = hub_token_of(&ns, "acme").await;
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/v1/messages"))
        .bearer_auth(&token)
        .json(&json!({"to": "5491100001111", "message": "desde el operador"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(sim.messages().last().map(|m| m.body.clone()), Some("desde el operador".into()));

    // The session process crashes: the runner restarts it; the login is on the volume.
    assert!(runner.kill_process(&ns.name, "acme-0"));
    ns.wait_status("acme", "not READY after the crash", |s| s.state != Some(SessionState::Ready)).await;
    let back =
        ns.wait_status("acme", "READY after the crash", |s| s.state == Some(SessionState::Ready)).await;
    assert!(back.qr.is_none());

    // The pod is deleted: the StatefulSet makes a new one on the same claim, READY again.
    ns.api::<k8s_openapi::api::core::v1::Pod>().delete("acme-0", &Default::default()).await.unwrap();
    eventually("a new pod, Ready", WAIT, || async {
        Ok(pod_ready(&ns, "acme-0").await.filter(|(uid, ready)| *uid != first_uid && *ready))
    })
    .await;
    let again =
        ns.wait_status("acme", "READY on the new pod", |s| s.state == Some(SessionState::Ready)).await;
    assert_eq!(again.me.map(|m| m.phone), Some(PHONE.to_string()));
    assert_eq!(sim.messages().len(), 1);
}

fn run_kubectl_wait(ns: &TestNamespace, condition: &str) {
    whatsapp_tests::run(ns.kubectl().args([
        "wait",
        &format!("--for=condition={condition}"),
        "--timeout=60s",
        "was/acme",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_pinned_web_version_is_served_instead_of_the_live_page() {
    let ns = cluster().namespace("session-pin").await;
    let sim = Simulator::start(fast_simulator()).await.unwrap();
    // The older build, pinned: the session still links on it.
    let pinned = Build::Legacy.version();
    ns.create_session("pinned", json!({"clienteId": 1, "browser": {"webVersion": pinned}})).await;
    ns.create_session("live", json!({"clienteId": 2})).await;
    let template = format!("{}/versions/{{version}}.html", sim.control_url());
    let env = [("WAO_WEB_VERSION_URL", template.as_str())];
    let with_pin = SessionProcess::start_with(&ns, "pinned", &ns.profile_dir("pinned"), &sim, &env);
    let without = SessionProcess::start_with(&ns, "live", &ns.profile_dir("live"), &sim, &env);
    ns.wait_status("pinned", "a QR on the pinned build", |s| s.qr.is_some()).await;
    ns.wait_status("live", "a QR on the live build", |s| s.qr.is_some()).await;
    let version_of = |process: &SessionProcess| {
        let url = format!("{}/metrics", process.url());
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("whatsapp_session_web_version_info{version=\""))
                .and_then(|l| l.split('"').next())
                .map(String::from)
        }
    };
    assert_eq!(version_of(&with_pin).await.as_deref(), Some(pinned));
    assert_eq!(version_of(&without).await.as_deref(), Some(Build::Current.version()));
    assert!(
        with_pin.profile.join(format!("whatsapp-web-{pinned}.html")).exists(),
        "the build is cached on the volume"
    );
    let ready = link(&ns, &sim, "pinned").await;
    assert_eq!(ready.me.map(|m| m.phone), Some(PHONE.to_string()));

    // A build nobody has: reported, not a crash loop.
    ns.create_session("missing", json!({"clienteId": 3, "browser": {"webVersion": "2.3000.1"}})).await;
    let _missing = SessionProcess::start_with(
        &ns,
        "missing",
        &ns.profile_dir("missing"),
        &sim,
        &[("WAO_WEB_VERSION_URL", &format!("{}/nothing/{{version}}", sim.control_url()))],
    );
    let reported = ns
        .wait_status("missing", "the missing build reported", |s| {
            s.reason.as_deref() == Some("WebVersionUnavailable")
        })
        .await;
    assert_eq!(reported.state, Some(SessionState::Disconnected));
}
