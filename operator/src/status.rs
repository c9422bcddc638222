//! The operator's part of a session's status: its own conditions (`Reconciled`, `PodReady`)
//! and `observedGeneration`, and the Events that mark their meaningful transitions. The
//! session pod owns everything else in the status; server-side apply keeps the two apart.

use k8s_openapi::api::apps::v1::StatefulSet;
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
/// PodReady reason while the StatefulSet rolls the pod onto a new template (a `spec.browser`
/// edit, a fleet-wide change let through by the rollout budget): a planned restart, told with a
/// Normal `Restarting` event rather than a `PodLost` warning.
pub const RESTARTING: &str = "Restarting";
/// Label the StatefulSet controller puts on each pod: the revision of the template it runs.
const REVISION_LABEL: &str = "controller-revision-hash";
/// Reconciled reason while a new pod template waits for a restart slot (see `rollout`): not a
/// problem with the spec, so no `InvalidSpec` event.
pub const ROLL_PENDING: &str = "RollPending";

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

/// Whether the StatefulSet is rolling its pod onto a new template: the controller has not yet
/// observed the latest spec (it deletes the old pod before it records the new revision), its
/// update revision is not yet the current one, or the pod runs another revision. A StatefulSet
/// the controller never recorded a revision for is being created, not rolled.
pub fn rolling(sts: Option<&StatefulSet>, pod: Option<&Pod>) -> bool {
    let Some(sts) = sts else { return false };
    let Some(status) = sts.status.as_ref().filter(|s| s.current_revision.is_some()) else {
        return false;
    };
    let unobserved = status.observed_generation.zip(sts.metadata.generation).is_some_and(|(o, g)| o < g);
    let update = status.update_revision.as_deref();
    let pod_revision = pod.and_then(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL)).map(String::as_str);
    unobserved
        || update != status.current_revision.as_deref()
        || pod_revision.is_some_and(|r| update.is_some_and(|u| u != r))
}

/// What the pod says about the session, `sts` being its StatefulSet as last seen: a pod that
/// is not ready while the StatefulSet rolls it is `Restarting`, not lost.
pub fn pod_ready(session: &WhatsAppSession, pod: Option<&Pod>, sts: Option<&StatefulSet>) -> Observation {
    let observed = pod_state(session, pod);
    if observed.status || observed.reason == SUSPENDED || !rolling(sts, pod) {
        return observed;
    }
    Observation::new(
        false,
        RESTARTING,
        format!("the pod restarts on its new template ({}: {})", observed.reason, observed.message),
    )
}

/// What the pod alone says about the session.
fn pod_state(session: &WhatsAppSession, pod: Option<&Pod>) -> Observation {
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

/// Whether `new` is only progress of a pod that stays not ready (`PodMissing` to `PodPending`,
/// a new scheduling message): worth showing once it holds, not a write per step while a pod
/// starts. A flip of the status, and a change into or out of `Suspended` (which a person asked
/// for), are never mere progress.
pub fn pod_progress_only(previous: Option<&Condition>, new: &Condition) -> bool {
    previous.is_some_and(|p| {
        p.status == "False"
            && new.status == "False"
            && p.observed_generation == new.observed_generation
            && p.reason != SUSPENDED
            && new.reason != SUSPENDED
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
        (_, false) if reconciled.reason == ROLL_PENDING => {}
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
        if pod.reason == RESTARTING {
            out.push(notice(EventType::Normal, RESTARTING, pod.message.clone()));
        } else {
            out.push(notice(EventType::Warning, "PodLost", format!("{}: {}", pod.reason, pod.message)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_steps_of_a_pod_that_stays_not_ready_are_progress() {
        let progress = |from: Option<Condition>, to: Condition| pod_progress_only(from.as_ref(), &to);
        assert!(progress(Some(stored("False", "PodMissing")), stored("False", "PodPending")));
        assert!(!progress(None, stored("False", "PodPending")), "a first condition is written at once");
        assert!(!progress(Some(stored("False", "PodPending")), stored("True", "PodReady")), "a flip");
        assert!(!progress(Some(stored("True", "PodReady")), stored("False", RESTARTING)), "a flip");
        assert!(!progress(Some(stored("False", "PodPending")), stored("False", SUSPENDED)));
        assert!(!progress(Some(stored("False", SUSPENDED)), stored("False", "PodMissing")));
        let mut next_generation = stored("False", "PodPending");
        next_generation.observed_generation = Some(2);
        assert!(!progress(Some(stored("False", "PodMissing")), next_generation), "a spec edit");
    }

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
        // Waiting for a restart slot is not an invalid spec.
        let pending = Observation::new(false, ROLL_PENDING, "waits");
        assert!(
            notices(Some(&reconciled), &pending, None, &Observation::new(true, "PodReady", "")).is_empty()
        );
    }

    fn applied() -> Condition {
        Condition { type_: RECONCILED.into(), ..stored("True", "Applied") }
    }

    fn session(suspended: bool) -> WhatsAppSession {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
            "kind": "WhatsAppSession",
            "metadata": {"name": "acme", "namespace": "tenants", "uid": "u-1"},
            "spec": {"clienteId": 1, "suspended": suspended},
        }))
        .unwrap()
    }

    /// A StatefulSet at `generation`, as its controller last saw it.
    fn sts(generation: i64, observed: i64, current: &str, update: &str) -> StatefulSet {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        StatefulSet {
            metadata: kube::api::ObjectMeta { generation: Some(generation), ..Default::default() },
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                current_revision: Some(current.into()),
                update_revision: Some(update.into()),
                replicas: 1,
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    /// A pod of template `revision`, in `phase`, ready or not, maybe shutting down.
    fn pod(revision: &str, phase: &str, ready: bool, terminating: bool) -> Pod {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        Pod {
            metadata: kube::api::ObjectMeta {
                labels: Some([(REVISION_LABEL.to_string(), revision.to_string())].into()),
                deletion_timestamp: terminating.then_some(now),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_statefulset_rolls_while_its_new_template_is_not_everywhere() {
        let old = pod("r1", "Running", true, false);
        assert!(!rolling(Some(&sts(2, 2, "r1", "r1")), Some(&old)), "settled");
        assert!(!rolling(None, Some(&old)), "no StatefulSet");
        assert!(!rolling(Some(&StatefulSet::default()), None), "a new StatefulSet is created, not rolled");
        // The controller deletes the old pod before it records the new revision.
        assert!(rolling(Some(&sts(3, 2, "r1", "r1")), Some(&old)), "new spec not yet observed");
        assert!(rolling(Some(&sts(3, 3, "r1", "r2")), None), "the update revision is not yet current");
        assert!(rolling(Some(&sts(3, 3, "r2", "r2")), Some(&old)), "the pod runs the previous revision");
        assert!(!rolling(Some(&sts(3, 3, "r2", "r2")), Some(&pod("r2", "Pending", false, false))));
    }

    #[test]
    fn a_pod_restarting_on_its_new_template_is_not_lost() {
        let s = session(false);
        let was_ready = stored("True", "PodReady");
        let ok = Observation::new(true, "Applied", "");
        let rolled = sts(3, 2, "r1", "r1");
        let observed = pod_ready(&s, Some(&pod("r1", "Running", false, true)), Some(&rolled));
        assert_eq!((observed.status, observed.reason.as_str()), (false, RESTARTING));
        assert!(observed.message.starts_with("the pod restarts on its new template"), "{observed:?}");
        let said: Vec<_> = notices(Some(&applied()), &ok, Some(&was_ready), &observed)
            .into_iter()
            .map(|n| (n.type_, n.reason))
            .collect();
        assert_eq!(said, [(EventType::Normal, RESTARTING)]);
        // Gone, then back on the new revision but not ready yet: still restarting.
        for (pod_now, sts_now) in
            [(None, sts(3, 3, "r1", "r2")), (Some(pod("r2", "Running", false, false)), sts(3, 3, "r1", "r2"))]
        {
            assert_eq!(pod_ready(&s, pod_now.as_ref(), Some(&sts_now)).reason, RESTARTING);
        }
        // Ready on the new template, though the controller has not caught up: ready.
        let ready = pod_ready(&s, Some(&pod("r2", "Running", true, false)), Some(&sts(3, 3, "r1", "r2")));
        assert_eq!((ready.status, ready.reason.as_str()), (true, "PodReady"));
        // Suspended stays suspended, rolling or not.
        assert_eq!(pod_ready(&session(true), None, Some(&rolled)).reason, SUSPENDED);
    }

    #[test]
    fn a_pod_that_goes_away_while_nothing_rolls_is_lost() {
        let s = session(false);
        let settled = sts(2, 2, "r1", "r1");
        let ok = Observation::new(true, "Applied", "");
        let was_ready = stored("True", "PodReady");
        for (pod_now, reason) in [
            (Some(pod("r1", "Running", false, true)), "PodTerminating"),
            (None, "PodMissing"),
            (Some(pod("r1", "Running", false, false)), "PodNotReady"),
        ] {
            let observed = pod_ready(&s, pod_now.as_ref(), Some(&settled));
            assert_eq!((observed.status, observed.reason.as_str()), (false, reason));
            let said: Vec<_> = notices(Some(&applied()), &ok, Some(&was_ready), &observed)
                .into_iter()
                .map(|n| (n.type_, n.reason))
                .collect();
            assert_eq!(said, [(EventType::Warning, "PodLost")], "{reason}");
        }
    }
}
