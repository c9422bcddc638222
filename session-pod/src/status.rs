//! Writes the session pod's part of the WhatsAppSession status: server-side apply with its
//! own field manager, only when something changed, at most a few times a second.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};
use whatsapp_crds::{SessionState, WhatsAppSession, WhatsAppSessionStatus};

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Status};
use crate::tracker::Report;
use crate::volume::{Cause, LOW_SPACE_BYTES, Storage};

/// Field manager of the session pod's status writes.
pub const FIELD_MANAGER: &str = "whatsapp-session";
/// Coalescing window: bursts of changes become one write.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

fn time(t: SystemTime) -> Time {
    let ts = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Time(Timestamp::from_second(ts.as_secs() as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// When the state, the bridge's compatibility and the volume's fullness last changed.
#[derive(Clone, Copy, Debug)]
pub struct Since {
    pub state: SystemTime,
    pub compatible: SystemTime,
    pub storage: SystemTime,
}

/// What the status already said when this process started: transition times move only when
/// what they stamp changes, not because a pod restarted.
pub struct Written {
    pub state: Option<SessionState>,
    pub compatible: Option<bool>,
    pub storage_full: Option<bool>,
    pub since: Since,
}

impl Written {
    pub fn of(status: Option<&WhatsAppSessionStatus>) -> Written {
        let now = SystemTime::now();
        let at = |t: &Time| SystemTime::from(t.0);
        let condition = |type_: &str| status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
        let bridge = condition("BridgeCompatible");
        let storage = condition(STORAGE_FULL);
        Written {
            state: status.and_then(|s| s.state),
            compatible: bridge.map(|c| c.status == "True"),
            storage_full: storage.map(|c| c.status == "True"),
            since: Since {
                state: status.and_then(|s| s.last_state_change.as_ref()).map_or(now, at),
                compatible: bridge.map_or(now, |c| at(&c.last_transition_time)),
                storage: storage.map_or(now, |c| at(&c.last_transition_time)),
            },
        }
    }

    /// The times to stamp `report` and `storage` with: what is unknown keeps its time.
    pub fn since_for(&self, report: &Report, storage: Option<&Storage>) -> Since {
        let now = SystemTime::now();
        let compatible = report.missing.as_ref().map(|m| m.is_empty());
        let storage_full = storage.map(|s| s.full.is_some());
        let keep = |known: Option<bool>, now_: Option<bool>| now_.is_none() || known == now_;
        Since {
            state: if self.state == Some(report.state) { self.since.state } else { now },
            compatible: if keep(self.compatible, compatible) { self.since.compatible } else { now },
            storage: if keep(self.storage_full, storage_full) { self.since.storage } else { now },
        }
    }

    /// Takes in what is about to be written and returns its times, saying what changed.
    pub fn observe(&mut self, report: &Report, storage: Option<&Storage>) -> Since {
        let since = self.since_for(report, storage);
        if self.state != Some(report.state) {
            info!(state = %report.state, reason = %report.reason, "state changed");
            self.state = Some(report.state);
        }
        let compatible = report.missing.as_ref().map(|m| m.is_empty());
        if compatible.is_some() && compatible != self.compatible {
            if let Some(gaps) = report.missing.as_ref().filter(|m| !m.is_empty()) {
                warn!(missing = %gaps.join(", "), "this WhatsApp Web build lacks what the bridge uses");
            }
            self.compatible = compatible;
        }
        if let Some(storage) = storage.filter(|s| Some(s.full.is_some()) != self.storage_full) {
            let (available, size) = (storage.space.available, storage.space.size);
            match storage.full {
                Some(cause) => warn!(available, size, ?cause, "the session's volume is full"),
                None => info!(available, size, "the session's volume has space"),
            }
            self.storage_full = Some(storage.full.is_some());
        }
        self.since = since;
        since
    }
}

/// The `BridgeCompatible` condition: does this WhatsApp Web build have every module and
/// function the bridge calls? `None` while the page has not told.
fn bridge_condition(missing: Option<&[String]>, since: SystemTime) -> Option<Condition> {
    let (status, reason, message) = match missing? {
        [] => (
            "True",
            "AllModulesPresent",
            "WhatsApp Web has every module and function the bridge uses".to_string(),
        ),
        gaps => (
            "False",
            "ModuleMissing",
            format!(
                "this WhatsApp Web build lacks {}: the bridge needs an update (a new wa-bridge.js in the bridge ConfigMap)",
                gaps.join(", ")
            ),
        ),
    };
    Some(Condition {
        type_: "BridgeCompatible".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: time(since),
    })
}

/// The `StorageFull` condition type.
const STORAGE_FULL: &str = "StorageFull";

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The `StorageFull` condition: is the session's volume full? `None` if it could not be
/// measured.
fn storage_condition(storage: Option<&Storage>, since: SystemTime) -> Option<Condition> {
    let Storage { full, space } = storage?;
    let (available, size) = (mib(space.available), mib(space.size));
    let low = mib(LOW_SPACE_BYTES);
    let (status, reason, message) = match full {
        Some(cause) => {
            let why = match cause {
                Cause::LowSpace => format!("under {low} available"),
                Cause::WriteFailed => "a write failed for lack of space".to_string(),
            };
            let message = format!(
                "the session's volume is full ({why}; {available} of {size} available): new messages are refused with 507 STORAGE_FULL until space is freed; the login and the messages already accepted are kept"
            );
            ("True", "VolumeFull", message)
        }
        None => (
            "False",
            "SpaceAvailable",
            format!("the session's volume has space ({available} of {size} available; full under {low})"),
        ),
    };
    Some(Condition {
        type_: STORAGE_FULL.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: time(since),
    })
}

/// The status patch for a report. Fields the report does not have are left out, so this
/// field manager releases them (a QR disappears once linked).
pub fn patch(
    report: &Report,
    endpoint: Option<&str>,
    since: Since,
    storage: Option<&Storage>,
) -> serde_json::Value {
    let ready = report.state == SessionState::Ready;
    let condition = Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: report.reason.clone(),
        message: report.message.clone(),
        observed_generation: None,
        last_transition_time: time(since.state),
    };
    let conditions: Vec<Condition> = std::iter::once(condition)
        .chain(bridge_condition(report.missing.as_deref(), since.compatible))
        .chain(storage_condition(storage, since.storage))
        .collect();
    let qr = report.qr.as_ref().map(|q| {
        json!({"code": q.code, "attempts": q.attempts, "updatedAt": time(q.shown_at), "expiresAt": time(q.expires_at)})
    });
    let me = report.me.as_ref().map(|m| json!({"phone": m.phone, "pushName": m.push_name}));
    let mut body = json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "status": {
            "state": report.state,
            "reason": report.reason,
            "message": report.message,
            "qr": qr,
            "pairingCode": report.pairing_code,
            "me": me,
            "endpoint": endpoint,
            "conditions": conditions,
            "lastStateChange": time(since.state),
        }
    });
    if let Some(status) = body["status"].as_object_mut() {
        status.retain(|_, v| !v.is_null());
    }
    body
}

/// Patches the status each time the report or the volume's fullness changes, until the
/// reports' channel closes.
pub async fn report_forever(
    api: Api<WhatsAppSession>,
    name: String,
    endpoint: Option<String>,
    mut reports: watch::Receiver<Report>,
    mut volume: watch::Receiver<Option<Storage>>,
    written: Option<WhatsAppSessionStatus>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut written = Written::of(written.as_ref());
    loop {
        let report = reports.borrow_and_update().clone();
        let storage = *volume.borrow_and_update();
        let since = written.observe(&report, storage.as_ref());
        let body = patch(&report, endpoint.as_deref(), since, storage.as_ref());
        let mut delay = Duration::from_millis(500);
        while let Err(error) = api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            warn!(%error, "writing the session status failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        tokio::time::sleep(MIN_INTERVAL).await;
        let more = tokio::select! {
            changed = reports.changed() => changed.is_ok(),
            // A closed volume channel (its watcher gone) leaves only the reports to wait for.
            changed = volume.changed() => changed.is_ok() || reports.changed().await.is_ok(),
        };
        if !more {
            return;
        }
    }
}

/// Field manager of the outbox summary (its own, so the state writes never drop it).
const OUTBOX_FIELD_MANAGER: &str = "whatsapp-session-outbox";
/// How often the outbox is counted (for the metrics).
const OUTBOX_COUNT_EVERY: Duration = Duration::from_secs(15);

/// The outbox summary in the status.
pub fn outbox_patch(queued: i64, failed: i64, at: SystemTime) -> serde_json::Value {
    json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "status": {"outbox": {"queued": queued, "failed": failed, "updatedAt": time(at)}},
    })
}

/// Counts the outbox for the metrics every 15 s (or `write_every`, if shorter), forgets
/// messages settled longer ago than `retention`, and writes
/// `status.outbox` when the numbers changed, at most once every `write_every` (a minute by
/// default, so 1,000 sending sessions never flood the API server).
pub async fn outbox_forever(
    api: Api<WhatsAppSession>,
    name: String,
    outbox: Outbox,
    metrics: Metrics,
    write_every: Duration,
    retention: Duration,
    spec: watch::Receiver<whatsapp_crds::WhatsAppSessionSpec>,
) {
    let params = PatchParams::apply(OUTBOX_FIELD_MANAGER).force();
    let mut written: Option<(i64, i64)> = None;
    let mut last_write: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(OUTBOX_COUNT_EVERY.min(write_every));
    loop {
        tick.tick().await;
        let counts = match outbox.counts() {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "counting the outbox failed");
                continue;
            }
        };
        metrics.outbox_counts(&counts);
        let days = spec.borrow().inbound.retention_days.max(1) as u64;
        prune(&outbox, retention, Duration::from_secs(days * 86_400));
        let count = |wanted: &[Status]| {
            counts.iter().filter(|(s, _)| wanted.contains(s)).map(|(_, n)| *n as i64).sum()
        };
        let now = (count(&[Status::Queued, Status::Sending]), count(&[Status::Failed]));
        let due = last_write.is_none_or(|at| at.elapsed() >= write_every);
        if written == Some(now) || !due {
            continue;
        }
        let body = outbox_patch(now.0, now.1, SystemTime::now());
        match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                written = Some(now);
                last_write = Some(std::time::Instant::now());
            }
            Err(error) => warn!(%error, "writing the outbox summary failed; retrying later"),
        }
    }
}

/// Forgets, a bounded number at a time: settled outbox messages after the outbox retention,
/// incoming messages and the event log after `spec.inbound.retentionDays`.
fn prune(outbox: &Outbox, retention: Duration, inbound_retention: Duration) {
    match outbox.prune(retention) {
        Ok(0) => {}
        Ok(n) => info!(messages = n, "forgot messages settled longer ago than the outbox retention"),
        Err(error) => warn!(%error, "pruning the outbox failed"),
    }
    match outbox.prune_inbound(inbound_retention) {
        Ok(0) => {}
        Ok(n) => info!(messages = n, "forgot incoming messages older than the inbound retention"),
        Err(error) => warn!(%error, "pruning the incoming messages failed"),
    }
    // The event log goes only up to what the webhooks' ingester has taken into the endpoints'
    // queues (each delivery carries its own body).
    let pruned = crate::webhooks::events_taken_upto(outbox)
        .and_then(|upto| outbox.prune_events(inbound_retention, upto));
    match pruned {
        Ok(0) => {}
        Ok(n) => info!(events = n, "forgot events older than the inbound retention"),
        Err(error) => warn!(%error, "pruning the event log failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_condition_names_what_the_page_lacks() {
        let at = SystemTime::UNIX_EPOCH;
        assert!(bridge_condition(None, at).is_none());
        let ok = bridge_condition(Some(&[]), at).unwrap();
        assert_eq!((ok.status.as_str(), ok.reason.as_str()), ("True", "AllModulesPresent"));
        let gaps = ["WAWebQueryExistsJob".to_string(), "WAWebMsgKey.newId".to_string()];
        let bad = bridge_condition(Some(&gaps), at).unwrap();
        assert_eq!((bad.status.as_str(), bad.reason.as_str()), ("False", "ModuleMissing"));
        assert!(bad.message.contains("WAWebQueryExistsJob, WAWebMsgKey.newId"), "{}", bad.message);
    }

    #[test]
    fn transition_times_survive_a_restart_when_nothing_changed() {
        let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap());
        let status: WhatsAppSessionStatus = serde_json::from_value(json!({
            "state": "DISCONNECTED",
            "lastStateChange": earlier,
            "conditions": [{"type": "BridgeCompatible", "status": "True", "reason": "AllModulesPresent", "message": "", "lastTransitionTime": earlier}],
        }))
        .unwrap();
        let written = Written::of(Some(&status));
        let mut stopped = Report::new(SessionState::Disconnected, "PodStopped", "stopped");
        stopped.missing = Some(vec![]);
        let since = written.since_for(&stopped, None);
        assert_eq!(
            (since.state, since.compatible),
            (SystemTime::from(earlier.0), SystemTime::from(earlier.0))
        );
        stopped.state = SessionState::Ready;
        stopped.missing = Some(vec!["WAWebMsgKey".into()]);
        let since = written.since_for(&stopped, None);
        assert!(since.state > SystemTime::from(earlier.0) && since.compatible > SystemTime::from(earlier.0));
    }

    fn storage(full: Option<Cause>, available_mib: u64) -> Storage {
        let space = crate::volume::Space { available: available_mib << 20, size: 96 << 20 };
        Storage { full, space }
    }

    #[test]
    fn the_storage_condition_says_full_with_the_space_and_what_is_refused() {
        let at = SystemTime::UNIX_EPOCH;
        assert!(storage_condition(None, at).is_none());
        let full = storage_condition(Some(&storage(Some(Cause::LowSpace), 2)), at).unwrap();
        assert_eq!((full.status.as_str(), full.reason.as_str()), ("True", "VolumeFull"));
        for part in ["2.0 MiB of 96.0 MiB available", "under 16.0 MiB", "507 STORAGE_FULL"] {
            assert!(full.message.contains(part), "{part}: {}", full.message);
        }
        let failed = storage_condition(Some(&storage(Some(Cause::WriteFailed), 40)), at).unwrap();
        assert!(failed.message.contains("a write failed for lack of space"), "{}", failed.message);
        let fine = storage_condition(Some(&storage(None, 80)), at).unwrap();
        assert_eq!((fine.status.as_str(), fine.reason.as_str()), ("False", "SpaceAvailable"));
        let report = Report::new(SessionState::Ready, "Linked", "linked");
        let body = patch(&report, None, Written::of(None).since, Some(&storage(None, 80)));
        let types: Vec<&str> = body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Ready", "StorageFull"]);
    }

    #[test]
    fn the_storage_transition_time_moves_only_when_fullness_flips() {
        let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap());
        let status: WhatsAppSessionStatus = serde_json::from_value(json!({
            "state": "READY",
            "lastStateChange": earlier,
            "conditions": [{"type": "StorageFull", "status": "False", "reason": "SpaceAvailable", "message": "", "lastTransitionTime": earlier}],
        }))
        .unwrap();
        let mut written = Written::of(Some(&status));
        let report = Report::new(SessionState::Ready, "Linked", "linked");
        let then = SystemTime::from(earlier.0);
        assert_eq!(written.observe(&report, Some(&storage(None, 50))).storage, then);
        assert_eq!(written.observe(&report, None).storage, then, "not measured: unchanged");
        let filled = written.observe(&report, Some(&storage(Some(Cause::LowSpace), 1))).storage;
        assert!(filled > then);
        assert_eq!(written.observe(&report, Some(&storage(Some(Cause::WriteFailed), 20))).storage, filled);
        assert!(written.observe(&report, Some(&storage(None, 90))).storage >= filled);
        assert_eq!(written.storage_full, Some(false));
    }
}
