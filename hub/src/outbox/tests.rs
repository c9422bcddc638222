use serde_json::json;

use super::*;

fn refusal(e: ApiError) -> (String, Option<usize>) {
    match e {
        ApiError::Validation { code, index, .. } => (code.to_owned(), index),
        other => panic!("not a validation error: {other:?}"),
    }
}

#[test]
fn texts_are_one_to_4096_characters_not_only_blanks() {
    assert!(check_message("hola").is_ok());
    assert!(check_message(&"ñ".repeat(MAX_MESSAGE_CHARS)).is_ok(), "characters, not bytes");
    assert!(check_message(&"x".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
    assert!(check_message("").is_err());
    assert!(check_message(" \n\t").is_err());
}

#[test]
fn one_message_or_a_batch_is_read_from_the_same_route() {
    let one = Submit::from_json(json!({"to": "+5491155550000", "message": "hola", "idempotencyKey": "k-1"}))
        .unwrap();
    let batch = one.into_batch().unwrap();
    assert_eq!(batch.batch, None);
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.messages[0].to, "5491155550000", "the pod gets digits only");
    assert_eq!(batch.messages[0].idempotency_key.as_deref(), Some("k-1"));

    let many = Submit::from_json(json!({"batch": "b-1", "messages": [
        {"to": "5491155550000", "message": "a", "notBefore": "2026-12-02T10:00:00-03:00"},
        {"to": "5491155550001", "message": "b", "expiresAt": "2026-12-02T10:00:00Z"},
    ]}))
    .unwrap()
    .into_batch()
    .unwrap();
    assert_eq!(many.batch.as_deref(), Some("b-1"));
    assert_eq!(many.messages[0].not_before.as_deref(), Some("2026-12-02T13:00:00Z"), "times go as UTC");
    assert_eq!(many.messages[1].expires_at.as_deref(), Some("2026-12-02T10:00:00Z"));
    let forwarded = serde_json::to_value(&many).unwrap();
    assert_eq!(
        forwarded["messages"][1],
        json!({"to": "5491155550001", "message": "b", "expiresAt": "2026-12-02T10:00:00Z"})
    );
}

#[test]
fn a_batch_is_refused_whole_naming_its_first_bad_message() {
    let mut messages: Vec<_> =
        (0..5).map(|i| json!({"to": format!("54911555500{i:02}"), "message": "x"})).collect();
    messages[3]["to"] = json!("12");
    messages[4]["message"] = json!("");
    let e = Submit::from_json(json!({"messages": messages})).unwrap().into_batch().unwrap_err();
    assert_eq!(refusal(e), ("INVALID_NUMBER".into(), Some(3)));

    messages[3]["to"] = json!("5491155550003");
    let e = Submit::from_json(json!({"messages": messages})).unwrap().into_batch().unwrap_err();
    assert_eq!(refusal(e), ("INVALID_MESSAGE".into(), Some(4)));

    for (body, code) in [
        (json!({"messages": []}), "INVALID_BODY"),
        (json!({"messages": [{"to": "5491155550000", "message": "x"}], "batch": "a b"}), "INVALID_BODY"),
        (
            json!({"messages": [{"to": "5491155550000", "message": "x", "notBefore": "tomorrow"}]}),
            "INVALID_BODY",
        ),
        (
            json!({"messages": [{"to": "5491155550000", "message": "x", "idempotencyKey": ""}]}),
            "INVALID_BODY",
        ),
        (
            json!({"messages": [{"to": "5491155550000", "message": "x",
                "notBefore": "2026-12-02T10:00:00Z", "expiresAt": "2026-12-02T09:00:00Z"}]}),
            "INVALID_BODY",
        ),
    ] {
        let e = Submit::from_json(body.clone()).unwrap().into_batch().unwrap_err();
        assert_eq!(refusal(e).0, code, "{body}");
    }
    let too_many = vec![json!({"to": "5491155550000", "message": "x"}); MAX_BATCH + 1];
    let e = Submit::from_json(json!({"messages": too_many})).unwrap().into_batch().unwrap_err();
    assert_eq!(refusal(e), ("INVALID_BODY".into(), None));
    let most = vec![json!({"to": "5491155550000", "message": "x"}); MAX_BATCH];
    assert_eq!(
        Submit::from_json(json!({"messages": most})).unwrap().into_batch().unwrap().messages.len(),
        MAX_BATCH
    );
}

#[test]
fn shapes_the_route_does_not_take_are_invalid_bodies() {
    for body in [
        json!([]),
        json!("x"),
        json!({"to": "5491155550000", "message": "x", "extra": 1}),
        json!({"messages": {"to": "5491155550000"}}),
        json!({"messages": [{"to": "5491155550000", "message": "x"}], "other": true}),
    ] {
        let e = Submit::from_json(body.clone()).unwrap_err();
        assert_eq!(refusal(e).0, "INVALID_BODY", "{body}");
    }
    // Without a text, a message needs a file (its caption may be empty).
    let e = Submit::from_json(json!({"to": "5491155550000"})).unwrap().into_batch().unwrap_err();
    assert_eq!(refusal(e).0, "INVALID_MESSAGE");
}

#[test]
fn list_queries_are_checked_before_they_travel() {
    let q = ListQuery {
        direction: None,
        status: Some(MessageStatus::Delivered),
        batch: Some("b-1".into()),
        cursor: Some("c".into()),
        limit: Some(5),
    };
    assert_eq!(
        q.to_pod().unwrap(),
        vec![
            ("status", "delivered".into()),
            ("batch", "b-1".into()),
            ("cursor", "c".into()),
            ("limit", "5".into())
        ]
    );
    assert!(ListQuery::default().to_pod().unwrap().is_empty());
    for bad in [
        ListQuery { limit: Some(0), ..Default::default() },
        ListQuery { limit: Some(1001), ..Default::default() },
        ListQuery { batch: Some("a/b".into()), ..Default::default() },
        ListQuery { cursor: Some(String::new()), ..Default::default() },
    ] {
        assert_eq!(refusal(bad.to_pod().unwrap_err()).0, "INVALID_QUERY", "{bad:?}");
    }
}

#[test]
fn job_ids_name_their_session_and_are_unique() {
    let a = new_job_id(51);
    let b = new_job_id(51);
    assert_ne!(a, b);
    assert!(a.starts_with("51-") && a.len() == 3 + 32, "{a}");
    assert!(check_key("batch", &a).is_ok(), "a job id is a valid batch name");
    assert_eq!(parse_job_id(&a).unwrap(), 51);
    assert_eq!(parse_job_id("7-abc").unwrap(), 7);
    for bad in [
        "",
        "51",
        "51-",
        "-abc",
        "0-abc",
        "051-abc",
        "+5-abc",
        "x-abc",
        "-5-abc",
        "51-a/b",
        "99999999999999999999-a",
    ] {
        let e = parse_job_id(bad).unwrap_err();
        assert_eq!(e.code(), "JOB_NOT_FOUND", "{bad:?}");
    }
}

#[test]
fn job_progress_counts_what_is_pending_sent_and_failed() {
    let counts: BatchCounts = serde_json::from_value(json!({"batch": "51-x", "total": 20,
        "byStatus": {"queued": 4, "sending": 1, "sent": 6, "delivered": 5, "read": 2, "played": 0, "failed": 2}}))
    .unwrap();
    let p = JobProgress::of("51-x", 51, counts);
    assert_eq!((p.total, p.pending, p.sent, p.failed, p.done), (20, 5, 13, 2, false));
    let done: BatchCounts =
        serde_json::from_value(json!({"batch": "51-x", "total": 2, "byStatus": {"read": 2}})).unwrap();
    assert!(JobProgress::of("51-x", 51, done).done);
}
