//! The operator's part of a session's status: its own conditions (`Reconciled`, `PodReady`)
//! and `observedGeneration`, and the Events that mark their meaningful transitions. The
//! session pod owns everything else in the status; server-side apply keeps the two apart.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;
use whatsapp_crds::WhatsAppSession;

/// Condition: every child exists as the spec says.
pub const RECONCILED: &str = "Reconciled";
/// Condition: the session's pod runs and passes its readiness probe.
pub const POD_READY: &str = "PodReady";
/// PodReady reason while suspended.
pub const SUSPENDED: &str = "Suspended";

/// A condition as the reconciler sees it, before timestamps.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Observation {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observation {
    pub fn new(status: bool, reason: &str, message: impl Into<String>) -> Observation {
        Observation { status, reason: reason.into(), message: message.into() }
    }
}

/// What the pod says about the session.
pub fn pod_ready(session: &WhatsAppSession, pod: Option<&Pod>) -> Observation {
    if session.spec.suspended {
        return Observation::new(
            false,
            SUSPENDED,
            "spec.suspended is true: no pod runs; the login is kept on its volume",
        );
    }
    let Some(pod) = pod else {
        return Observation::new(false, "PodMissing", "the session's pod does not exist yet");
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Observation::new(false, "PodTerminating", "the session's pod is shutting down");
    }
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") if condition("Ready").is_some_and(|c| c.status == "True") => {
            Observation::new(true, "PodReady", "the session's pod is running and ready")
        }
        Some("Running") => Observation::new(false, "PodNotReady", "the session's pod runs but is not ready"),
        Some("Pending") | None => {
            let why = condition("PodScheduled")
                .filter(|c| c.status != "True")
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "waiting to start".into());
            Observation::new(false, "PodPending", format!("the session's pod is pending: {why}"))
        }
        Some(phase) => Observation::new(false, "PodNotRunning", format!("the session's pod is {phase}")),
    }
}

/// The condition to store: `lastTransitionTime` moves only when the status flips.
pub fn condition(
    type_: &str,
    observed: &Observation,
    previous: Option<&Condition>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if observed.status { "True" } else { "False" };
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: observed.reason.clone(),
        message: observed.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition of a type in a session's current status.
pub fn current<'a>(session: &'a WhatsAppSession, type_: &str) -> Option<&'a Condition> {
    session.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether storing `new` would change anything (timestamps aside).
pub fn differs(previous: Option<&Condition>, new: &Condition) -> bool {
    previous.is_none_or(|p| {
        p.status != new.status
            || p.reason != new.reason
            || p.message != new.message
            || p.observed_generation != new.observed_generation
    })
}

/// An Event worth telling a person about.
#[derive(Debug, PartialEq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// The Events for moving from the stored conditions to the observed ones.
pub fn notices(
    previous_reconciled: Option<&Condition>,
    reconciled: &Observation,
    previous_pod: Option<&Condition>,
    pod: &Observation,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let notice = |type_, reason, note: String| Notice { type_, reason, note };
    match (previous_reconciled, reconciled.status) {
        (None, true) => out.push(notice(
            EventType::Normal,
            "Created",
            "created the StatefulSet, Service, ServiceAccount, Role, RoleBinding and hub-token Secret".into(),
        )),
        (Some(p), false) if p.status == "True" || p.reason != reconciled.reason => out.push(notice(
            EventType::Warning,
            "InvalidSpec",
            format!("{}: {}", reconciled.reason, reconciled.message),
        )),
        (None, false) => out.push(notice(
            EventType::Warning,
            "InvalidSpec",
            format!("{}: {}", reconciled.reason, reconciled.message),
        )),
        _ => {}
    }
    let was_suspended = previous_pod.is_some_and(|p| p.reason == SUSPENDED);
    let is_suspended = pod.reason == SUSPENDED;
    if is_suspended && !was_suspended {
        out.push(notice(
            EventType::Normal,
            "Suspended",
            "scaled to zero; the login is kept on its volume".into(),
        ));
    } else if was_suspended && !is_suspended {
        out.push(notice(EventType::Normal, "Resumed", "scaled back to one pod on the same volume".into()));
    } else if previous_pod.is_some_and(|p| p.status == "True") && !pod.status {
        out.push(notice(EventType::Warning, "PodLost", format!("{}: {}", pod.reason, pod.message)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(status: &str, reason: &str) -> Condition {
        Condition {
            type_: POD_READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap()),
        }
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let previous = stored("False", "PodPending");
        let same = condition(
            POD_READY,
            &Observation::new(false, "PodNotReady", "x"),
            Some(&previous),
            Some(1),
            &now,
        );
        assert_eq!(same.last_transition_time, previous.last_transition_time);
        let flipped =
            condition(POD_READY, &Observation::new(true, "PodReady", "x"), Some(&previous), Some(1), &now);
        assert_eq!(flipped.last_transition_time, now);
    }

    #[test]
    fn events_mark_meaningful_transitions() {
        let ok = Observation::new(true, "Applied", "");
        let reasons = |prev_rec: Option<&Condition>, prev_pod: Option<&Condition>, pod: Observation| {
            notices(prev_rec, &ok, prev_pod, &pod).into_iter().map(|n| n.reason).collect::<Vec<_>>()
        };
        let reconciled = Condition { type_: RECONCILED.into(), ..stored("True", "Applied") };
        assert_eq!(reasons(None, None, Observation::new(false, "PodMissing", "")), ["Created"]);
        assert_eq!(
            reasons(
                Some(&reconciled),
                Some(&stored("True", "PodReady")),
                Observation::new(false, SUSPENDED, "")
            ),
            ["Suspended"]
        );
        assert_eq!(
            reasons(
                Some(&reconciled),
                Some(&stored("False", SUSPENDED)),
                Observation::new(false, "PodMissing", "")
            ),
            ["Resumed"]
        );
        assert_eq!(
            reasons(
                Some(&reconciled),
                Some(&stored("True", "PodReady")),
                Observation::new(false, "PodMissing", "")
            ),
            ["PodLost"]
        );
        // Nothing changed: nothing to say.
        assert!(
            reasons(
                Some(&reconciled),
                Some(&stored("True", "PodReady")),
                Observation::new(true, "PodReady", "")
            )
            .is_empty()
        );
        let bad = Observation::new(false, "StorageClassNotFound", "no class fast");
        let said: Vec<_> = notices(Some(&reconciled), &bad, None, &Observation::new(false, "PodMissing", ""))
            .into_iter()
            .map(|n| (n.type_, n.reason))
            .collect();
        assert_eq!(said, [(EventType::Warning, "InvalidSpec")]);
    }
}
