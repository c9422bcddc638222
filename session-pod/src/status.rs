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
use whatsapp_crds::{SessionState, WhatsAppSession};

use crate::tracker::Report;

/// Field manager of the session pod's status writes.
pub const FIELD_MANAGER: &str = "whatsapp-session";
/// Coalescing window: bursts of changes become one write.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

fn time(t: SystemTime) -> Time {
    let ts = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Time(Timestamp::from_second(ts.as_secs() as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The status patch for a report. `since` is when the state last changed. Fields the
/// report does not have are left out, so this field manager releases them (a QR disappears
/// once linked).
pub fn patch(report: &Report, endpoint: Option<&str>, since: SystemTime) -> serde_json::Value {
    let ready = report.state == SessionState::Ready;
    let condition = Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: report.reason.clone(),
        message: report.message.clone(),
        observed_generation: None,
        last_transition_time: time(since),
    };
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
            "conditions": [condition],
            "lastStateChange": time(since),
        }
    });
    if let Some(status) = body["status"].as_object_mut() {
        status.retain(|_, v| !v.is_null());
    }
    body
}

/// Patches the status each time the report changes, until the channel closes.
pub async fn report_forever(
    api: Api<WhatsAppSession>,
    name: String,
    endpoint: Option<String>,
    mut reports: watch::Receiver<Report>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut last_state: Option<SessionState> = None;
    let mut since = SystemTime::now();
    loop {
        let report = reports.borrow_and_update().clone();
        if last_state != Some(report.state) {
            since = SystemTime::now();
            info!(state = %report.state, reason = %report.reason, "state changed");
            last_state = Some(report.state);
        }
        let body = patch(&report, endpoint.as_deref(), since);
        let mut delay = Duration::from_millis(500);
        while let Err(error) = api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            warn!(%error, "writing the session status failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        tokio::time::sleep(MIN_INTERVAL).await;
        if reports.changed().await.is_err() {
            return;
        }
    }
}
