//! The rollout budget: at most N sessions restart their pod at a time when a fleet-wide input
//! changes (the hub-token key, the session image or another operator setting, an operator
//! upgrade that changes the pod template), instead of every session at once.
//!
//! A reconcile whose desired pod template differs from the StatefulSet's asks the [`Budget`]
//! for a slot. A slot is taken while the restart is in flight: from the apply until the
//! StatefulSet, as the cache shows it, runs its latest template on a ready pod, and for at most
//! [`DEADLINE`] (a pod that never becomes ready stops holding a slot then, so nothing
//! deadlocks). Sessions that wait are served oldest first (creation time, then name). What is
//! never held back:
//! - a change the session's own spec asked for (`spec.browser`): one user, one session, no
//!   storm, and the user expects to see it applied;
//! - a session with no pod serving (suspended, or its pod missing or not ready): restarting it
//!   takes nothing offline, and it does not count as rolling either.
//!
//! Everything is decided from the caches and this process's memory: no extra API call. After a
//! failover, restarts a previous leader started are seen in the cache (the StatefulSet's
//! current and update revisions differ) and counted.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::children::BROWSER_DIGEST_ANNOTATION;

/// A restart that has not finished after this long stops holding a slot.
pub const DEADLINE: Duration = Duration::from_secs(600);
/// A waiting session not heard from for this long (deleted, or no longer needing a restart)
/// is forgotten, so it holds no place in the queue.
const FORGET_WAITER: Duration = Duration::from_secs(60);

/// How many sessions may restart at a time: a number, or a percentage of the sessions that
/// run a pod (rounded up, at least 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxRolling {
    Count(usize),
    Percent(u32),
}

impl FromStr for MaxRolling {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || format!("{text:?}: expected a number of sessions (1 or more) or a percentage (1%-100%)");
        let parsed = match text.trim().strip_suffix('%') {
            Some(percent) => MaxRolling::Percent(percent.trim().parse().map_err(|_| invalid())?),
            None => MaxRolling::Count(text.trim().parse().map_err(|_| invalid())?),
        };
        match parsed {
            MaxRolling::Count(0) | MaxRolling::Percent(0) => Err(invalid()),
            MaxRolling::Percent(p) if p > 100 => Err(invalid()),
            ok => Ok(ok),
        }
    }
}

impl MaxRolling {
    /// The number of slots for a fleet of `running` sessions.
    pub fn limit(self, running: usize) -> usize {
        match self {
            MaxRolling::Count(n) => n,
            MaxRolling::Percent(p) => (running * p as usize).div_ceil(100).max(1),
        }
    }
}

/// Why a session's pod template is about to change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cause {
    /// A fleet-wide input (operator settings, an upgrade, a restored drift): takes a slot.
    Fleet,
    /// The session's own `spec.browser`: never held back, but counts while it runs.
    Own,
    /// No pod serves (suspended, missing or not ready): never held back, never counted.
    Idle,
}

/// What a StatefulSet in the cache says about its rollout.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct StsView {
    pub generation: i64,
    pub replicas: i32,
    pub observed_generation: i64,
    /// `status.currentRevision != status.updateRevision`: its pod runs an older template.
    pub revisions_differ: bool,
    pub updated: i32,
    pub ready: i32,
}

impl StsView {
    pub fn of(sts: &StatefulSet) -> StsView {
        let status = sts.status.as_ref();
        StsView {
            generation: sts.metadata.generation.unwrap_or_default(),
            replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or_default(),
            revisions_differ: status.is_some_and(|s| s.current_revision != s.update_revision),
            updated: status.and_then(|s| s.updated_replicas).unwrap_or_default(),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or_default(),
        }
    }

    /// Its pod runs the latest template and is ready (or it wants no pod).
    pub fn settled(&self) -> bool {
        self.replicas == 0
            || (self.observed_generation >= self.generation
                && !self.revisions_differ
                && self.updated >= self.replicas
                && self.ready >= self.replicas)
    }
}

/// The budget's answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Apply the new template now.
    Roll,
    /// Keep the running template; ask again soon.
    Wait { rolling: usize, ahead: usize, limit: usize },
}

/// Why applying `desired` changes the pod template of `existing`. `serving`: the session's
/// pod runs and is ready.
pub fn cause(existing: &StatefulSet, desired: &StatefulSet, serving: bool) -> Cause {
    let suspended = existing.spec.as_ref().and_then(|s| s.replicas) == Some(0);
    if suspended || !serving {
        return Cause::Idle;
    }
    let digest = |sts: &StatefulSet| {
        let annotations = sts.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?;
        annotations.get(BROWSER_DIGEST_ANNOTATION).cloned()
    };
    // A StatefulSet from an older operator without the digest: adding it is the operator's
    // change, not the session's.
    match digest(existing) {
        Some(running) if Some(&running) != digest(desired).as_ref() => Cause::Own,
        _ => Cause::Fleet,
    }
}

/// The budget rule itself: a fleet-wide restart goes when the restarts in flight and the
/// sessions queued before this one leave a slot.
pub fn decide(cause: Cause, rolling: usize, ahead: usize, limit: usize) -> Decision {
    match cause {
        Cause::Own | Cause::Idle => Decision::Roll,
        Cause::Fleet if rolling + ahead < limit => Decision::Roll,
        Cause::Fleet => Decision::Wait { rolling, ahead, limit },
    }
}

/// Place in the queue: creation time (seconds), then `namespace/name`.
pub type Order = (i64, String);

/// A restart in flight.
#[derive(Debug)]
struct Roll {
    since: Instant,
    /// The StatefulSet generation that carries the new template; None while the apply is on
    /// its way (the cache cannot show it yet).
    generation: Option<i64>,
    /// Whether it holds a slot (an idle session's restart does not).
    counts: bool,
}

impl Roll {
    fn pending(&self, view: &StsView) -> bool {
        self.generation.is_none_or(|g| view.generation < g || !view.settled())
    }
}

#[derive(Debug)]
struct Waiter {
    order: Order,
    seen: Instant,
}

#[derive(Debug, Default)]
struct Ledger {
    rolls: HashMap<String, Roll>,
    waiting: HashMap<String, Waiter>,
}

/// The restarts in flight and the sessions waiting for one, shared by every reconcile.
#[derive(Debug)]
pub struct Budget {
    max: MaxRolling,
    deadline: Duration,
    ledger: Mutex<Ledger>,
}

/// Counts of the budget's state, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counts {
    pub rolling: usize,
    pub waiting: usize,
}

impl Budget {
    pub fn new(max: MaxRolling, deadline: Duration) -> Budget {
        Budget { max, deadline, ledger: Mutex::default() }
    }

    /// Asks for a slot for the session `key`. `fleet` is every StatefulSet in the cache, by
    /// `namespace/name`. A `Roll` takes the slot at once (atomically with the count), so two
    /// concurrent reconciles never both take the last one.
    pub fn request(
        &self,
        key: &str,
        order: Order,
        cause: Cause,
        fleet: &[(String, StsView)],
        now: Instant,
    ) -> Decision {
        let mut ledger = self.ledger.lock().expect("budget lock");
        ledger.refresh(fleet, now);
        if ledger.rolls.get(key).is_some_and(|r| r.counts) {
            // Already restarting: a further change joins that restart.
            ledger.waiting.remove(key);
            return Decision::Roll;
        }
        let rolling = ledger.rolling(now, self.deadline);
        let ahead = ledger.waiting.iter().filter(|(k, w)| k.as_str() != key && w.order < order).count();
        let running = fleet.iter().filter(|(_, v)| v.replicas > 0).count();
        let decision = decide(cause, rolling, ahead, self.max.limit(running));
        match decision {
            Decision::Roll => {
                ledger.waiting.remove(key);
                let roll = Roll { since: now, generation: None, counts: cause != Cause::Idle };
                ledger.rolls.insert(key.to_string(), roll);
            }
            Decision::Wait { .. } => {
                ledger.waiting.insert(key.to_string(), Waiter { order, seen: now });
            }
        }
        decision
    }

    /// The new template was applied: the StatefulSet `generation` carries it.
    pub fn applied(&self, key: &str, generation: i64) {
        if let Some(roll) = self.ledger.lock().expect("budget lock").rolls.get_mut(key) {
            roll.generation = Some(generation);
        }
    }

    /// The apply failed: the slot is free again.
    pub fn abandon(&self, key: &str) {
        self.ledger.lock().expect("budget lock").rolls.remove(key);
    }

    /// Restarts holding a slot and sessions waiting for one, with the fleet as it is now.
    pub fn observe(&self, fleet: &[(String, StsView)], now: Instant) -> Counts {
        let mut ledger = self.ledger.lock().expect("budget lock");
        ledger.refresh(fleet, now);
        Counts { rolling: ledger.rolling(now, self.deadline), waiting: ledger.waiting.len() }
    }
}

impl Ledger {
    /// Brings the restarts in flight up to date with the cache: finished ones leave, ones
    /// started elsewhere (a previous leader) join.
    fn refresh(&mut self, fleet: &[(String, StsView)], now: Instant) {
        let mut rolls = HashMap::with_capacity(self.rolls.len());
        for (key, view) in fleet {
            match self.rolls.remove(key) {
                Some(roll) if roll.pending(view) => {
                    rolls.insert(key.clone(), roll);
                }
                Some(_) => {}
                None if view.replicas > 0 && view.revisions_differ => {
                    let roll = Roll { since: now, generation: Some(view.generation), counts: true };
                    rolls.insert(key.clone(), roll);
                }
                None => {}
            }
        }
        // Not in the cache: kept only while its apply is on its way.
        rolls.extend(self.rolls.drain().filter(|(_, r)| r.generation.is_none()));
        self.rolls = rolls;
        let rolls = &self.rolls;
        self.waiting.retain(|key, w| now.duration_since(w.seen) < FORGET_WAITER && !rolls.contains_key(key));
    }

    fn rolling(&self, now: Instant, deadline: Duration) -> usize {
        self.rolls.values().filter(|r| r.counts && now.duration_since(r.since) < deadline).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLED: StsView = StsView {
        generation: 1,
        replicas: 1,
        observed_generation: 1,
        revisions_differ: false,
        updated: 1,
        ready: 1,
    };

    fn fleet(n: usize) -> Vec<(String, StsView)> {
        (0..n).map(|i| (format!("ns/s{i:02}"), SETTLED)).collect()
    }

    fn order(i: usize) -> Order {
        (i as i64, format!("ns/s{i:02}"))
    }

    /// The view after the operator applied a new template (generation 2) and the StatefulSet
    /// controller restarted the pod on it.
    fn rolled(ready: bool) -> StsView {
        StsView {
            generation: 2,
            observed_generation: 2,
            revisions_differ: !ready,
            ready: i32::from(ready),
            ..SETTLED
        }
    }

    fn statefulset(browser: serde_json::Value, image: &str) -> StatefulSet {
        let session: whatsapp_crds::WhatsAppSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "whatsapp.leadmaster.dev/v1alpha1", "kind": "WhatsAppSession",
            "metadata": {"name": "acme", "namespace": "tenants", "uid": "u-1"},
            "spec": {"clienteId": 1, "browser": browser},
        }))
        .unwrap();
        let settings = crate::children::Settings {
            session_image: image.into(),
            image_pull_policy: None,
            hub_token_key: b"0123456789abcdef0123456789abcdef".to_vec(),
            bridge_script_configmap: None,
        };
        crate::children::desired(&session, &settings).unwrap().statefulset
    }

    #[test]
    fn only_a_fleet_wide_change_of_a_serving_pod_is_held_back() {
        let running = statefulset(serde_json::json!({}), "session:1");
        let upgrade = statefulset(serde_json::json!({}), "session:2");
        let edited = statefulset(serde_json::json!({"extraArgs": ["--lang=pt-BR"]}), "session:1");
        assert_eq!(cause(&running, &upgrade, true), Cause::Fleet);
        assert_eq!(cause(&running, &edited, true), Cause::Own);
        assert_eq!(cause(&running, &upgrade, false), Cause::Idle, "its pod is not serving");
        let mut suspended = running.clone();
        suspended.spec.as_mut().unwrap().replicas = Some(0);
        assert_eq!(cause(&suspended, &upgrade, true), Cause::Idle);
        // A StatefulSet from before the browser digest: the operator adds it, fleet-wide.
        let mut older = running.clone();
        let template = &mut older.spec.as_mut().unwrap().template;
        template.metadata.as_mut().unwrap().annotations.as_mut().unwrap().remove(BROWSER_DIGEST_ANNOTATION);
        assert_eq!(cause(&older, &edited, true), Cause::Fleet);
    }

    #[test]
    fn the_rule_holds_only_fleet_wide_restarts_and_only_when_the_slots_are_taken() {
        assert_eq!(decide(Cause::Fleet, 2, 0, 3), Decision::Roll);
        assert_eq!(decide(Cause::Fleet, 3, 0, 3), Decision::Wait { rolling: 3, ahead: 0, limit: 3 });
        assert_eq!(decide(Cause::Fleet, 1, 2, 3), Decision::Wait { rolling: 1, ahead: 2, limit: 3 });
        assert_eq!(decide(Cause::Own, 10, 10, 3), Decision::Roll);
        assert_eq!(decide(Cause::Idle, 10, 10, 3), Decision::Roll);
    }

    #[test]
    fn the_limit_is_a_number_or_a_share_of_the_running_sessions() {
        assert_eq!("3".parse::<MaxRolling>().unwrap().limit(1000), 3);
        assert_eq!("10%".parse::<MaxRolling>().unwrap().limit(1000), 100);
        assert_eq!("10%".parse::<MaxRolling>().unwrap().limit(21), 3, "rounded up");
        assert_eq!("10%".parse::<MaxRolling>().unwrap().limit(0), 1, "at least one");
        for bad in ["0", "0%", "101%", "-1", "ten", ""] {
            assert!(bad.parse::<MaxRolling>().is_err(), "{bad}");
        }
    }

    #[test]
    fn at_most_the_limit_restart_and_a_finished_restart_frees_its_slot() {
        let budget = Budget::new(MaxRolling::Count(3), DEADLINE);
        let mut fleet = fleet(20);
        let now = Instant::now();
        let decisions: Vec<_> =
            (0..20).map(|i| budget.request(&fleet[i].0, order(i), Cause::Fleet, &fleet, now)).collect();
        assert_eq!(decisions.iter().filter(|d| **d == Decision::Roll).count(), 3);
        assert_eq!(budget.observe(&fleet, now), Counts { rolling: 3, waiting: 17 });
        // Applied, but the cache still shows the old generation: still restarting.
        for (key, _) in &fleet[..3] {
            budget.applied(key, 2);
        }
        assert!(matches!(
            budget.request(&fleet[3].0, order(3), Cause::Fleet, &fleet, now),
            Decision::Wait { .. }
        ));
        // The pod restarts on the new template, not ready yet: still restarting.
        fleet[0].1 = rolled(false);
        assert!(matches!(
            budget.request(&fleet[3].0, order(3), Cause::Fleet, &fleet, now),
            Decision::Wait { .. }
        ));
        // Ready: its slot goes to the next in line.
        fleet[0].1 = rolled(true);
        assert_eq!(budget.request(&fleet[3].0, order(3), Cause::Fleet, &fleet, now), Decision::Roll);
        assert_eq!(budget.observe(&fleet, now), Counts { rolling: 3, waiting: 16 });
    }

    #[test]
    fn waiting_sessions_get_the_slots_oldest_first() {
        let budget = Budget::new(MaxRolling::Count(1), DEADLINE);
        let mut fleet = fleet(4);
        let now = Instant::now();
        assert_eq!(budget.request(&fleet[0].0, order(0), Cause::Fleet, &fleet, now), Decision::Roll);
        budget.applied(&fleet[0].0, 2);
        // The youngest asks first, then the others: all wait.
        for i in [3, 1, 2] {
            assert!(matches!(
                budget.request(&fleet[i].0, order(i), Cause::Fleet, &fleet, now),
                Decision::Wait { .. }
            ));
        }
        fleet[0].1 = rolled(true);
        // The slot is free, but s03 and s02 are not first in line: s01 is.
        for i in [3, 2] {
            let decision = budget.request(&fleet[i].0, order(i), Cause::Fleet, &fleet, now);
            assert!(matches!(decision, Decision::Wait { rolling: 0, .. }), "{i}: {decision:?}");
        }
        assert_eq!(budget.request(&fleet[1].0, order(1), Cause::Fleet, &fleet, now), Decision::Roll);
    }

    #[test]
    fn a_restart_that_never_finishes_stops_holding_its_slot_after_the_deadline() {
        let budget = Budget::new(MaxRolling::Count(1), Duration::from_secs(600));
        let mut fleet = fleet(2);
        let start = Instant::now();
        assert_eq!(budget.request(&fleet[0].0, order(0), Cause::Fleet, &fleet, start), Decision::Roll);
        budget.applied(&fleet[0].0, 2);
        fleet[0].1 = rolled(false);
        let later = start + Duration::from_secs(599);
        assert!(matches!(
            budget.request(&fleet[1].0, order(1), Cause::Fleet, &fleet, later),
            Decision::Wait { .. }
        ));
        let after = start + Duration::from_secs(600);
        assert_eq!(budget.request(&fleet[1].0, order(1), Cause::Fleet, &fleet, after), Decision::Roll);
    }

    #[test]
    fn own_and_idle_restarts_never_wait_and_idle_ones_take_no_slot() {
        let budget = Budget::new(MaxRolling::Count(1), DEADLINE);
        let fleet = fleet(4);
        let now = Instant::now();
        assert_eq!(budget.request(&fleet[0].0, order(0), Cause::Idle, &fleet, now), Decision::Roll);
        assert_eq!(budget.observe(&fleet, now).rolling, 0);
        assert_eq!(budget.request(&fleet[1].0, order(1), Cause::Own, &fleet, now), Decision::Roll);
        assert_eq!(budget.request(&fleet[2].0, order(2), Cause::Own, &fleet, now), Decision::Roll);
        assert_eq!(budget.observe(&fleet, now).rolling, 2, "a user's restart counts while it runs");
        assert!(matches!(
            budget.request(&fleet[3].0, order(3), Cause::Fleet, &fleet, now),
            Decision::Wait { .. }
        ));
        // A failed apply gives its slot back.
        budget.abandon(&fleet[1].0);
        budget.abandon(&fleet[2].0);
        assert_eq!(budget.request(&fleet[3].0, order(3), Cause::Fleet, &fleet, now), Decision::Roll);
    }

    #[test]
    fn restarts_started_before_this_process_are_counted_and_suspended_sessions_never() {
        let budget = Budget::new(MaxRolling::Count(1), DEADLINE);
        let mut fleet = fleet(3);
        // A previous leader's restart, seen in the cache.
        fleet[0].1 = StsView { revisions_differ: true, ready: 0, ..rolled(false) };
        // A suspended session: no pod, whatever its revisions say.
        fleet[1].1 = StsView { replicas: 0, revisions_differ: true, ..SETTLED };
        let now = Instant::now();
        let decision = budget.request(&fleet[2].0, order(2), Cause::Fleet, &fleet, now);
        assert_eq!(decision, Decision::Wait { rolling: 1, ahead: 0, limit: 1 });
        fleet[0].1 = rolled(true);
        assert_eq!(budget.request(&fleet[2].0, order(2), Cause::Fleet, &fleet, now), Decision::Roll);
    }
}
