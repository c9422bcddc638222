use std::time::Duration;

use super::*;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn msg(to: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        to: to.into(),
        message: format!("hi {to}"),
        idempotency_key: key.map(String::from),
        ..NewMessage::default()
    }
}

fn none() -> Limits {
    Limits::of(&whatsapp_crds::SendSpec::default())
}

fn due(o: &Outbox, now: Timestamp) -> Option<Message> {
    o.next_due(now, &none()).unwrap().map(|(m, _)| m)
}

fn outbox(dir: &tempfile::TempDir, max: u64) -> Outbox {
    Outbox::open(&dir.path().join("outbox.redb"), max).unwrap()
}

#[tokio::test]
async fn accepted_messages_survive_a_reopen_and_keys_are_never_queued_twice() {
    let d = dir();
    let ids: Vec<String> = {
        let o = outbox(&d, 100);
        let a =
            o.accept(vec![msg("5491100000001", Some("k1")), msg("5491100000002", None)], None).await.unwrap();
        assert!(a.iter().all(|a| !a.duplicate && a.message.status == Status::Queued));
        assert!(a[0].message.id.starts_with("3EB0") && a[0].message.id.len() == 22, "{}", a[0].message.id);
        a.into_iter().map(|a| a.message.id).collect()
    };
    let o = outbox(&d, 100);
    assert_eq!(o.queued().unwrap(), 2);
    assert_eq!(o.get(&ids[1]).unwrap().unwrap().to, "5491100000002");
    let again = o.accept(vec![msg("5491100000001", Some("k1"))], None).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].message.id, ids[0]);
    assert_eq!(o.queued().unwrap(), 2, "a known key queues nothing");
}

#[tokio::test]
async fn a_full_outbox_refuses_the_whole_batch() {
    let d = dir();
    let o = outbox(&d, 3);
    o.accept(vec![msg("5491100000001", None), msg("5491100000002", None)], None).await.unwrap();
    let err = o.accept(vec![msg("5491100000003", None), msg("5491100000004", None)], None).await.unwrap_err();
    assert!(matches!(err, StoreError::Full { queued: 3, max: 3 }), "{err}");
    assert_eq!(o.queued().unwrap(), 2, "nothing of the refused batch stays");
}

#[tokio::test]
async fn the_queue_goes_in_order_honouring_not_before_and_expiry() {
    let d = dir();
    let o = outbox(&d, 100);
    let now = Timestamp::now();
    let later =
        NewMessage { not_before: Some(now + Duration::from_secs(3600)), ..msg("5491100000001", None) };
    let stale = NewMessage { expires_at: Some(now - Duration::from_secs(1)), ..msg("5491100000002", None) };
    let a = o.accept(vec![later, stale, msg("5491100000003", None)], None).await.unwrap();
    let mut updates = o.subscribe();
    assert_eq!(due(&o, now).unwrap().id, a[2].message.id, "the future one waits, the stale one expires");
    let expired = updates.recv().await.unwrap();
    assert_eq!((expired.id.as_str(), expired.reason.as_deref()), (a[1].message.id.as_str(), Some("EXPIRED")));
    assert_eq!(due(&o, now + Duration::from_secs(7200)).unwrap().id, a[2].message.id, "still first in line");
}

#[tokio::test]
async fn a_send_is_persisted_before_it_happens_and_an_interrupted_one_goes_first_again() {
    let d = dir();
    let o = outbox(&d, 100);
    let a = o.accept(vec![msg("5491100000001", None), msg("5491100000002", None)], None).await.unwrap();
    let first = due(&o, Timestamp::now()).unwrap();
    let sending = o.sending(&first.id, Duration::from_secs(5), &none()).unwrap().unwrap();
    assert_eq!((sending.status, sending.attempts), (Status::Sending, 1));
    let (_, allowed) = o.next_due(Timestamp::now(), &none()).unwrap().unwrap();
    assert!(allowed > Timestamp::now() + Duration::from_secs(4), "the pacing is persisted");
    drop(o);
    let o = outbox(&d, 100);
    assert_eq!(
        o.in_flight().unwrap().iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![a[0].message.id.clone()]
    );
    o.requeue(&a[0].message.id).unwrap();
    assert_eq!(
        due(&o, Timestamp::now()).unwrap().id,
        a[0].message.id,
        "the interrupted send goes first, same id"
    );
    assert!(o.in_flight().unwrap().is_empty());
}

#[tokio::test]
async fn receipts_only_move_forward_and_cancel_only_takes_queued_messages() {
    let d = dir();
    let o = outbox(&d, 100);
    let a = o.accept(vec![msg("5491100000001", None), msg("5491100000002", None)], None).await.unwrap();
    let id = a[0].message.id.clone();
    o.sending(&id, Duration::ZERO, &none()).unwrap();
    o.sent(&id).unwrap();
    o.ack(&id, 3).unwrap();
    o.ack(&id, 2).unwrap();
    let m = o.get(&id).unwrap().unwrap();
    assert_eq!(m.status, Status::Read);
    let counts = o.counts().unwrap();
    assert!(counts.contains(&(Status::Read, 1)) && counts.contains(&(Status::Sending, 0)), "{counts:?}");
    assert!(m.sent_at.is_some() && m.read_at.is_some() && m.delivered_at.is_none());
    assert!(o.in_flight().unwrap().is_empty());
    assert!(matches!(o.cancel(&id), Err(StoreError::NotCancellable(Status::Read))));
    let cancelled = o.cancel(&a[1].message.id).unwrap().unwrap();
    assert_eq!((cancelled.status, cancelled.reason.as_deref()), (Status::Failed, Some("CANCELLED")));
    assert_eq!(due(&o, Timestamp::now()), None);
    assert!(o.cancel("3EB0NOPE").unwrap().is_none());
}

#[tokio::test]
async fn the_daily_cap_counts_sends_across_a_reopen() {
    let d = dir();
    let capped = Limits::of(&serde_json::from_value(serde_json::json!({"dailyCap": 2})).unwrap());
    {
        let o = outbox(&d, 100);
        o.accept((0..3).map(|i| msg(&format!("549110000000{i}"), None)).collect(), None).await.unwrap();
        for _ in 0..2 {
            let (m, at) = o.next_due(Timestamp::now(), &capped).unwrap().unwrap();
            assert!(at <= Timestamp::now());
            o.sending(&m.id, Duration::ZERO, &capped).unwrap();
            o.sent(&m.id).unwrap();
        }
    }
    let o = outbox(&d, 100);
    let (_, at) = o.next_due(Timestamp::now(), &capped).unwrap().unwrap();
    assert!(at > Timestamp::now() + Duration::from_secs(1), "the third waits for tomorrow: {at}");
}

#[tokio::test]
async fn a_message_refused_for_now_waits_and_holds_every_send_back() {
    let d = dir();
    let o = outbox(&d, 100);
    let a = o.accept(vec![msg("5491100000001", Some("k")), msg("5491100000002", None)], None).await.unwrap();
    let id = a[0].message.id.clone();
    o.sending(&id, Duration::ZERO, &none()).unwrap();
    o.retry_later(&id, Duration::from_secs(30)).unwrap();
    let m = o.get(&id).unwrap().unwrap();
    assert_eq!((m.status, m.attempts), (Status::Queued, 1));
    let (next, at) = o.next_due(Timestamp::now(), &none()).unwrap().unwrap();
    assert_eq!(next.id, a[1].message.id, "the other is first in line now");
    assert!(at > Timestamp::now() + Duration::from_secs(25), "but nothing goes before the wait is over");
    let (again, _) = o.next_due(Timestamp::now() + Duration::from_secs(31), &none()).unwrap().unwrap();
    assert_eq!(again.id, a[1].message.id);
    assert_eq!(o.by_key("k").unwrap().map(|m| m.id), Some(id));
    assert_eq!(o.by_key("nope").unwrap(), None);
}

#[tokio::test]
async fn listings_page_newest_first_by_status_and_batch() {
    let d = dir();
    let o = outbox(&d, 100);
    let batch: Vec<NewMessage> = (0..5).map(|i| msg(&format!("549110000001{i}"), None)).collect();
    let a = o.accept(batch, Some("b-1".into())).await.unwrap();
    o.accept(vec![msg("5491100000099", None)], None).await.unwrap();
    let first = o.list(None, Some("b-1"), None, 2).unwrap();
    assert_eq!(
        first.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![a[4].message.id.clone(), a[3].message.id.clone()]
    );
    let second = o.list(None, Some("b-1"), first.next_cursor, 2).unwrap();
    assert_eq!(second.messages[0].id, a[2].message.id);
    let third = o.list(None, Some("b-1"), second.next_cursor, 2).unwrap();
    assert_eq!((third.messages.len(), third.next_cursor), (1, None));
    assert_eq!(o.list(Some(Status::Queued), None, None, 100).unwrap().messages.len(), 6);
    o.cancel(&a[0].message.id).unwrap();
    assert_eq!(o.list(Some(Status::Failed), None, None, 100).unwrap().messages.len(), 1);
    let counts = o.counts().unwrap();
    assert!(counts.contains(&(Status::Queued, 5)) && counts.contains(&(Status::Failed, 1)), "{counts:?}");
    let summary = o.batch_summary("b-1").unwrap().unwrap();
    assert!(summary.contains(&(Status::Queued, 4)) && summary.contains(&(Status::Failed, 1)));
    assert!(o.batch_summary("b-2").unwrap().is_none());
}

#[tokio::test]
async fn settled_messages_are_forgotten_after_the_retention_and_waiting_ones_never() {
    let d = dir();
    let o = outbox(&d, 100);
    let a = o
        .accept(vec![msg("5491100000001", Some("k1")), msg("5491100000002", Some("k2"))], Some("b".into()))
        .await
        .unwrap();
    o.cancel(&a[0].message.id).unwrap();
    assert_eq!(o.prune(Duration::from_secs(3600)).unwrap(), 0, "younger than the retention");
    assert_eq!(o.prune(Duration::ZERO).unwrap(), 1, "only the settled one goes");
    assert_eq!(o.get(&a[0].message.id).unwrap(), None);
    assert!(o.by_key("k1").unwrap().is_none() && o.by_key("k2").unwrap().is_some());
    assert!(o.counts().unwrap().contains(&(Status::Failed, 0)));
    assert_eq!(o.batch_summary("b").unwrap().unwrap().iter().map(|(_, n)| n).sum::<u64>(), 1);
}

#[tokio::test]
async fn receipts_and_own_events_are_logged_in_order() {
    let d = dir();
    let o = outbox(&d, 10);
    let a = o.accept(vec![msg("5491100000001", None)], None).await.unwrap();
    let id = a[0].message.id.clone();
    assert!(o.events_after(0, 10).unwrap().is_empty(), "accepting tells nothing yet");
    o.sent(&id).unwrap();
    o.event("state", serde_json::json!({"state": "READY"})).unwrap();
    o.ack(&id, 2).unwrap();
    o.ack(&id, 2).unwrap(); // the same receipt twice is one event
    let events = o.events_after(0, 10).unwrap();
    let kinds: Vec<(&str, Option<&str>)> =
        events.iter().map(|e| (e.kind.as_str(), e.data["status"].as_str())).collect();
    assert_eq!(kinds, [("message.ack", Some("sent")), ("state", None), ("message.ack", Some("delivered"))]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq && w[0].id != w[1].id));
    assert_eq!(o.events_after(events[1].seq, 10).unwrap(), events[2..].to_vec());
    // Pruning takes only what is old enough and taken by every reader.
    assert_eq!(o.prune_events(std::time::Duration::ZERO, events[0].seq).unwrap(), 1);
    assert_eq!(o.events_after(0, 10).unwrap(), events[1..].to_vec());
}

/// A store whose file could not be opened again answers every caller with the opening's own
/// error (a full volume's, say), never with "not open", and works again once it can open.
#[test]
fn a_failed_reopening_is_retried_by_every_caller_and_reported_as_itself() {
    let d = dir();
    let home = d.path().join("volume");
    std::fs::create_dir(&home).unwrap();
    let store = store::Store::open(&home.join("outbox.redb"), 10).unwrap();
    assert!(store.get("3EB0000000000000000000").unwrap().is_none());
    // The volume goes away under the store, and a call fails on the file.
    let away = d.path().join("away");
    std::fs::rename(&home, &away).unwrap();
    store.failed();
    // Callers at once, as the driver, the API and the webhooks are.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..50 {
                    let e = store.get("3EB0000000000000000000").unwrap_err().to_string();
                    assert!(e.contains("No such file"), "{e}");
                }
            });
        }
    });
    std::fs::rename(&away, &home).unwrap();
    assert!(store.get("3EB0000000000000000000").unwrap().is_none());
}
