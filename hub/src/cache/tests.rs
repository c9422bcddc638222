use serde_json::json;

use super::*;

fn session(name: &str, cliente_id: i64, created: &str, status: serde_json::Value) -> WhatsAppSession {
    serde_json::from_value(json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "metadata": {"name": name, "namespace": "t", "creationTimestamp": created},
        "spec": {"clienteId": cliente_id},
        "status": status,
    }))
    .unwrap()
}

fn qr_status(code: &str, attempts: i32) -> serde_json::Value {
    json!({"state": "QR_REQUIRED", "endpoint": "http://10.0.0.1:8080",
           "qr": {"code": code, "attempts": attempts, "updatedAt": "2026-11-23T10:00:00Z"}})
}

#[test]
fn the_public_status_follows_the_resource() {
    let view =
        SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", qr_status("2@abc,k1,k2,k3", 2)), None);
    let qr = view.status.qr.as_ref().unwrap();
    assert!(qr.base64.starts_with("data:image/png;base64,"));
    assert_eq!((qr.url.as_str(), qr.attempts, qr.timestamp), ("2@abc,k1,k2,k3", 2, 1_795_428_000_000));
    assert!(!view.status.connected);
    assert_eq!(view.endpoint.as_deref(), Some("http://10.0.0.1:8080"));

    let ready = json!({"state": "READY", "qr": {"code": "2@stale", "attempts": 1, "updatedAt": "2026-11-23T10:00:00Z"},
                       "me": {"phone": "5491100000000"}});
    let view = SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", ready), None);
    assert!(view.status.connected && view.status.qr.is_none(), "a QR is shown only while QR_REQUIRED");
    assert_eq!(view.status.phone.as_deref(), Some("5491100000000"));

    let none = SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", json!(null)), None);
    assert_eq!(none.status.state, State::Disconnected);

    // READY as the pod last wrote it, but the operator saw the pod go: not connected, and why.
    let condition = |status: &str| {
        json!({"type": "PodReady", "status": status, "reason": if status == "True" { "PodReady" } else { "PodLost" },
               "message": "the session's pod is gone", "lastTransitionTime": "2026-11-23T10:00:00Z"})
    };
    let lost = json!({"state": "READY", "reason": "Linked", "conditions": [condition("False")]});
    let view = SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", lost), None);
    assert!(!view.status.connected);
    assert_eq!(view.status.state, State::Ready);
    assert_eq!(
        (view.status.reason.as_deref(), view.status.message.as_deref()),
        (Some("PodLost"), Some("the session's pod is gone"))
    );
    let running = json!({"state": "READY", "reason": "Linked", "conditions": [condition("True")]});
    let view = SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", running), None);
    assert!(view.status.connected);
    assert_eq!(view.status.reason.as_deref(), Some("Linked"));
}

#[test]
fn the_qr_image_is_rendered_once_per_code() {
    let first = SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", qr_status("2@one,k,k,k", 1)), None);
    let mut marked = first;
    marked.status.qr.as_mut().unwrap().base64 = "reused".into();
    let same =
        SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", qr_status("2@one,k,k,k", 1)), Some(&marked));
    assert_eq!(same.status.qr.unwrap().base64, "reused");
    let next =
        SessionView::of(&session("a", 5, "2026-01-01T00:00:00Z", qr_status("2@two,k,k,k", 2)), Some(&marked));
    assert_ne!(next.status.qr.unwrap().base64, "reused");
}

#[test]
fn only_the_session_named_for_a_cliente_serves_it_and_changes_are_announced() {
    let cache = SessionCache::new(Metrics::default());
    let mut changes = cache.subscribe(7);
    // Sessions by other names, older or not, claiming clienteId 7: they serve no one.
    cache.apply(&session("squatter", 7, "2026-01-01T00:00:00Z", json!({"state": "READY"})));
    cache.apply(&session("cliente-8", 7, "2026-01-01T00:00:00Z", json!({"state": "READY"})));
    assert!(changes.try_recv().is_err());
    assert!(cache.get(7).is_none() && cache.get(8).is_none());
    cache.apply(&session("cliente-7", 7, "2026-02-01T00:00:00Z", json!({"state": "CONNECTING"})));
    assert_eq!(changes.try_recv().unwrap().session.unwrap().name, "cliente-7");
    assert_eq!(cache.get(7).unwrap().name, "cliente-7");

    // A change that leaves the served status as it was is not announced.
    cache.apply(&session(
        "cliente-7",
        7,
        "2026-02-01T00:00:00Z",
        json!({"state": "CONNECTING", "observedGeneration": 3}),
    ));
    assert!(changes.try_recv().is_err());
    cache.apply(&session("cliente-7", 7, "2026-02-01T00:00:00Z", json!({"state": "FAILED"})));
    assert_eq!(changes.try_recv().unwrap().session.unwrap().status.state, State::Failed);

    // The squatter going changes nothing; the tenant's own session going is announced.
    cache.delete(&session("squatter", 7, "2026-01-01T00:00:00Z", json!(null)));
    assert!(changes.try_recv().is_err());
    cache.delete(&session("cliente-7", 7, "2026-02-01T00:00:00Z", json!(null)));
    assert!(changes.try_recv().unwrap().session.is_none());
    assert!(cache.get(7).is_none() && cache.list(None).is_empty());
}

#[test]
fn a_relist_swaps_the_index_and_announces_only_differences() {
    let cache = SessionCache::new(Metrics::default());
    cache.apply(&session("cliente-1", 1, "2026-01-01T00:00:00Z", json!({"state": "READY"})));
    cache.apply(&session("cliente-2", 2, "2026-01-01T00:00:00Z", json!({"state": "READY"})));
    let mut subscriptions: Vec<Changes> = (1..=3).map(|id| cache.subscribe(id)).collect();
    let mut fresh = Index::default();
    for (id, state) in [(1, "READY"), (3, "CONNECTING")] {
        let session = session(&session_name(id), id, "2026-01-01T00:00:00Z", json!({"state": state}));
        fresh.insert(id, Arc::new(SessionView::of(&session, None)));
    }
    cache.swap(fresh);
    let seen: Vec<(i64, bool)> = (1..=3)
        .zip(subscriptions.iter_mut())
        .flat_map(|(id, changes)| {
            std::iter::from_fn(|| changes.try_recv().ok()).map(move |c| (id, c.session.is_some()))
        })
        .collect();
    assert_eq!(seen, vec![(2, false), (3, true)]);
    assert_eq!(cache.list(None).iter().map(|s| s.cliente_id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(cache.list(Some(3)).len(), 1);
}

#[test]
fn a_change_reaches_only_its_clientes_subscribers_and_a_channel_goes_with_its_last() {
    let cache = SessionCache::new(Metrics::default());
    let (mut seven, mut other_seven, mut eight) =
        (cache.subscribe(7), cache.subscribe(7), cache.subscribe(8));
    cache.apply(&session("cliente-7", 7, "2026-01-01T00:00:00Z", json!({"state": "READY"})));
    assert_eq!(seven.try_recv().unwrap().session.unwrap().cliente_id, 7);
    assert_eq!(other_seven.try_recv().unwrap().session.unwrap().cliente_id, 7);
    assert!(eight.try_recv().is_err());
    let view = cache.get(7).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&view.status_json).unwrap()["state"], "READY");

    drop(seven);
    assert_eq!(cache.subscribers.lock().unwrap().len(), 2);
    drop((other_seven, eight));
    assert!(cache.subscribers.lock().unwrap().is_empty());
}
