//! The session's state machine, as a pure function of what the page shows: no browser here,
//! so every transition is unit-tested.
//!
//! DISCONNECTED -> CONNECTING -> QR_REQUIRED -> READY, and FAILED with a reason. QR codes are
//! counted; after `qr.maxAttempts` the session stops with `QRAttemptsExhausted` instead of
//! looping.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use whatsapp_crds::{Me, PairingMethod, SessionState, WhatsAppSessionSpec};

/// What the injected bridge reports (`window.__waoBridge.snapshot()`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub loaded: bool,
    pub web_version: Option<String>,
    pub modules: bool,
    pub state: Option<String>,
    pub has_synced: bool,
    #[serde(rename = "ref")]
    pub qr: Option<String>,
    pub idle: bool,
    pub me: Option<SnapshotMe>,
    /// What of the bridge's needs this WhatsApp Web build lacks (`Module` or
    /// `Module.export`); absent until the page has loaded.
    pub missing: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMe {
    pub phone: String,
    pub lid: Option<String>,
    pub push_name: Option<String>,
}

/// The session pod's part of the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub state: SessionState,
    pub reason: String,
    pub message: String,
    pub qr: Option<Qr>,
    pub pairing_code: Option<String>,
    pub me: Option<Me>,
    /// What the bridge found missing in the page (the BridgeCompatible condition); `None`
    /// while not known.
    pub missing: Option<Vec<String>>,
}

impl Report {
    pub fn new(state: SessionState, reason: &str, message: impl Into<String>) -> Report {
        Report {
            state,
            reason: reason.into(),
            message: message.into(),
            qr: None,
            pairing_code: None,
            me: None,
            missing: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Qr {
    pub code: String,
    pub attempts: i32,
    pub shown_at: SystemTime,
    pub expires_at: SystemTime,
}

/// Something the driver must do in the page.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The QR went idle with attempts left: ask for a new batch.
    RefreshQr,
    /// Ask WhatsApp for a pairing code for this phone.
    RequestPairingCode(String),
}

/// How long WhatsApp shows each QR code.
#[derive(Clone, Copy, Debug)]
pub struct QrTimings {
    pub first: Duration,
    pub next: Duration,
}

impl Default for QrTimings {
    fn default() -> Self {
        QrTimings { first: Duration::from_secs(60), next: Duration::from_secs(20) }
    }
}

/// Pairing codes are renewed about every 3 minutes while unpaired.
const PAIRING_CODE_LIFE: Duration = Duration::from_secs(170);

/// Remembers what is needed across snapshots.
#[derive(Debug, Default)]
pub struct Tracker {
    timings: QrTimings,
    last_ref: Option<String>,
    attempts: i32,
    qr_shown_at: Option<SystemTime>,
    /// Attempts were used up: no more QR codes until the session is restarted.
    exhausted: bool,
    pairing_code: Option<(String, SystemTime)>,
    pairing_requested_at: Option<SystemTime>,
    refresh_requested_at: Option<SystemTime>,
    was_ready: bool,
}

impl Tracker {
    pub fn new(timings: QrTimings) -> Tracker {
        Tracker { timings, ..Tracker::default() }
    }

    /// A pairing code arrived from the page.
    pub fn pairing_code(&mut self, code: String, now: SystemTime) {
        self.pairing_code = Some((code, now));
    }

    /// Maps one snapshot to the status to report and what the driver should do next.
    pub fn observe(
        &mut self,
        snap: &Snapshot,
        spec: &WhatsAppSessionSpec,
        now: SystemTime,
    ) -> (Report, Option<Action>) {
        let (mut report, action) = self.state_of(snap, spec, now);
        report.missing = snap.missing.clone();
        (report, action)
    }

    fn state_of(
        &mut self,
        snap: &Snapshot,
        spec: &WhatsAppSessionSpec,
        now: SystemTime,
    ) -> (Report, Option<Action>) {
        if !snap.loaded {
            return (
                Report::new(SessionState::Connecting, "LoadingWhatsAppWeb", "loading WhatsApp Web"),
                None,
            );
        }
        let state = snap.state.as_deref().unwrap_or("");
        match state {
            "CONNECTED" if snap.has_synced && snap.me.is_some() => {
                self.reset_pairing();
                self.was_ready = true;
                let me =
                    snap.me.as_ref().map(|m| Me { phone: m.phone.clone(), push_name: m.push_name.clone() });
                let mut report =
                    Report::new(SessionState::Ready, "Linked", "linked to the phone and able to send");
                report.me = me;
                (report, None)
            }
            "OPENING" | "PAIRING" | "CONNECTED" | "RESUMING" | "SYNCING" => {
                (Report::new(SessionState::Connecting, "Connecting", "connecting to WhatsApp"), None)
            }
            "CONFLICT" => (
                Report::new(
                    SessionState::Disconnected,
                    "Conflict",
                    "this WhatsApp account was opened in another WhatsApp Web; use it here again with a restart of the session",
                ),
                None,
            ),
            "TOS_BLOCK" | "SMB_TOS_BLOCK" => (
                Report::new(
                    SessionState::Failed,
                    "Banned",
                    "WhatsApp blocked this number (terms of service)",
                ),
                None,
            ),
            "DEPRECATED_VERSION" => (
                Report::new(
                    SessionState::Failed,
                    "DeprecatedVersion",
                    "WhatsApp refuses this WhatsApp Web build: unpin spec.browser.webVersion",
                ),
                None,
            ),
            "UNPAIRED" | "UNPAIRED_IDLE" | "" if snap.modules || snap.qr.is_some() || snap.idle => {
                self.unpaired(snap, spec, now)
            }
            other => (
                Report::new(SessionState::Connecting, "Connecting", format!("WhatsApp Web is {other}")),
                None,
            ),
        }
    }

    fn reset_pairing(&mut self) {
        self.last_ref = None;
        self.attempts = 0;
        self.qr_shown_at = None;
        self.exhausted = false;
        self.pairing_code = None;
        self.pairing_requested_at = None;
        self.refresh_requested_at = None;
    }

    /// Asks for new QR codes, at most every 10 s: a refresh restarts WhatsApp's connection,
    /// and asking again while the new batch is on its way would cancel it.
    fn refresh(&mut self, now: SystemTime) -> Option<Action> {
        let asked_recently = self
            .refresh_requested_at
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < Duration::from_secs(10));
        (!asked_recently).then(|| {
            self.refresh_requested_at = Some(now);
            Action::RefreshQr
        })
    }

    fn unpaired(
        &mut self,
        snap: &Snapshot,
        spec: &WhatsAppSessionSpec,
        now: SystemTime,
    ) -> (Report, Option<Action>) {
        let (reason, why) = if self.was_ready {
            ("LoggedOut", "logged out (from the phone or the API): link the phone again")
        } else {
            ("WaitingForPhone", "waiting for the phone to link")
        };
        if spec.pairing.method == PairingMethod::PhoneCode {
            let phone = spec.pairing.phone_number.clone().unwrap_or_default();
            let fresh = self
                .pairing_code
                .as_ref()
                .filter(|(_, at)| now.duration_since(*at).unwrap_or_default() < PAIRING_CODE_LIFE);
            let mut report = Report::new(
                SessionState::QrRequired,
                reason,
                format!(
                    "{why}: on the phone, Linked devices > Link with phone number, and type the pairing code"
                ),
            );
            report.pairing_code = fresh.map(|(c, _)| c.clone());
            // An idle page (its refs ran out) must be woken before it can give a code.
            if snap.idle || snap.state.as_deref() == Some("UNPAIRED_IDLE") {
                return (report, self.refresh(now));
            }
            // Ask again when there is no live code, at most every 10 s.
            let asked_recently = self
                .pairing_requested_at
                .is_some_and(|at| now.duration_since(at).unwrap_or_default() < Duration::from_secs(10));
            let action = (fresh.is_none() && !asked_recently).then(|| {
                self.pairing_requested_at = Some(now);
                Action::RequestPairingCode(phone)
            });
            return (report, action);
        }

        if self.exhausted {
            return (self.exhausted_report(spec), None);
        }
        match &snap.qr {
            Some(code) if snap.state.as_deref() != Some("UNPAIRED_IDLE") => {
                if self.last_ref.as_deref() != Some(code) {
                    // A new code: the previous one expired.
                    if self.attempts >= spec.qr.max_attempts {
                        self.exhausted = true;
                        return (self.exhausted_report(spec), None);
                    }
                    self.attempts += 1;
                    self.last_ref = Some(code.clone());
                    self.qr_shown_at = Some(now);
                }
                let shown_at = self.qr_shown_at.unwrap_or(now);
                let life = if self.attempts % 6 == 1 { self.timings.first } else { self.timings.next };
                let mut report = Report::new(
                    SessionState::QrRequired,
                    reason,
                    format!("{why}: scan the QR code with WhatsApp"),
                );
                report.qr = Some(Qr {
                    code: code.clone(),
                    attempts: self.attempts,
                    shown_at,
                    expires_at: shown_at + life,
                });
                (report, None)
            }
            _ if snap.idle || snap.state.as_deref() == Some("UNPAIRED_IDLE") => {
                if self.attempts >= spec.qr.max_attempts {
                    self.exhausted = true;
                    (self.exhausted_report(spec), None)
                } else {
                    (
                        Report::new(SessionState::QrRequired, reason, "asking WhatsApp for new QR codes"),
                        self.refresh(now),
                    )
                }
            }
            _ => (
                Report::new(
                    SessionState::Connecting,
                    "WaitingForQr",
                    "waiting for WhatsApp to show a QR code",
                ),
                None,
            ),
        }
    }

    fn exhausted_report(&self, spec: &WhatsAppSessionSpec) -> Report {
        Report::new(
            SessionState::Failed,
            "QRAttemptsExhausted",
            format!(
                "no phone scanned any of the {} QR codes (spec.qr.maxAttempts); restart the session (delete its pod, or suspend and resume it) to try again",
                spec.qr.max_attempts
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> WhatsAppSessionSpec {
        serde_json::from_value(json).unwrap()
    }

    fn unpaired(qr: Option<&str>) -> Snapshot {
        Snapshot {
            loaded: true,
            modules: true,
            state: Some(if qr.is_some() { "UNPAIRED" } else { "UNPAIRED_IDLE" }.into()),
            qr: qr.map(String::from),
            idle: qr.is_none(),
            ..Snapshot::default()
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn qr_codes_are_counted_and_expire_on_whatsapps_schedule() {
        let spec = spec(serde_json::json!({"clienteId": 1}));
        let mut t = Tracker::new(QrTimings::default());
        let (r, a) = t.observe(&unpaired(Some("2@a,k")), &spec, at(0));
        assert_eq!((r.state, a), (SessionState::QrRequired, None));
        let qr = r.qr.unwrap();
        assert_eq!((qr.attempts, qr.expires_at), (1, at(60)));
        // The same code again: nothing new.
        assert_eq!(t.observe(&unpaired(Some("2@a,k")), &spec, at(5)).0.qr.unwrap().attempts, 1);
        let qr = t.observe(&unpaired(Some("2@b,k")), &spec, at(60)).0.qr.unwrap();
        assert_eq!((qr.attempts, qr.expires_at), (2, at(80)));
    }

    #[test]
    fn attempts_run_out_with_a_clear_reason_and_no_more_codes() {
        let spec = spec(serde_json::json!({"clienteId": 1, "qr": {"maxAttempts": 2}}));
        let mut t = Tracker::new(QrTimings::default());
        t.observe(&unpaired(Some("2@a")), &spec, at(0));
        t.observe(&unpaired(Some("2@b")), &spec, at(60));
        let (r, a) = t.observe(&unpaired(Some("2@c")), &spec, at(80));
        assert_eq!((r.state, r.reason.as_str(), a), (SessionState::Failed, "QRAttemptsExhausted", None));
        assert!(r.qr.is_none());
        // It stays stopped: idle pages are not refreshed, new codes are not shown.
        assert_eq!(t.observe(&unpaired(None), &spec, at(100)).0.state, SessionState::Failed);
        assert_eq!(t.observe(&unpaired(Some("2@d")), &spec, at(120)).0.state, SessionState::Failed);
    }

    #[test]
    fn an_idle_qr_is_refreshed_while_attempts_remain() {
        let spec = spec(serde_json::json!({"clienteId": 1, "qr": {"maxAttempts": 10}}));
        let mut t = Tracker::new(QrTimings::default());
        t.observe(&unpaired(Some("2@a")), &spec, at(0));
        let (r, a) = t.observe(&unpaired(None), &spec, at(160));
        assert_eq!((r.state, a), (SessionState::QrRequired, Some(Action::RefreshQr)));
        assert_eq!(t.observe(&unpaired(None), &spec, at(161)).1, None, "not again while the batch comes");
        assert_eq!(t.observe(&unpaired(None), &spec, at(171)).1, Some(Action::RefreshQr));
    }

    #[test]
    fn an_idle_page_is_woken_before_a_pairing_code_is_asked_for() {
        let spec = spec(
            serde_json::json!({"clienteId": 1, "pairing": {"method": "PhoneCode", "phoneNumber": "5491122334455"}}),
        );
        let mut t = Tracker::new(QrTimings::default());
        assert_eq!(t.observe(&unpaired(None), &spec, at(0)).1, Some(Action::RefreshQr));
        assert!(matches!(
            t.observe(&unpaired(Some("2@a")), &spec, at(1)).1,
            Some(Action::RequestPairingCode(_))
        ));
    }

    #[test]
    fn linking_makes_it_ready_and_a_later_qr_means_logged_out() {
        let spec = spec(serde_json::json!({"clienteId": 1}));
        let mut t = Tracker::new(QrTimings::default());
        t.observe(&unpaired(Some("2@a")), &spec, at(0));
        let connecting =
            Snapshot { loaded: true, modules: true, state: Some("CONNECTED".into()), ..Snapshot::default() };
        assert_eq!(t.observe(&connecting, &spec, at(1)).0.state, SessionState::Connecting);
        let ready = Snapshot {
            has_synced: true,
            me: Some(SnapshotMe { phone: "5491100000000".into(), lid: None, push_name: Some("Ana".into()) }),
            ..connecting
        };
        let r = t.observe(&ready, &spec, at(2)).0;
        assert_eq!((r.state, r.me.unwrap().phone.as_str()), (SessionState::Ready, "5491100000000"));
        let r = t.observe(&unpaired(Some("2@z")), &spec, at(3)).0;
        assert_eq!((r.state, r.reason.as_str()), (SessionState::QrRequired, "LoggedOut"));
        assert_eq!(r.qr.unwrap().attempts, 1, "a fresh count after a logout");
    }

    #[test]
    fn phone_code_pairing_asks_for_a_code_and_reports_it() {
        let spec = spec(
            serde_json::json!({"clienteId": 1, "pairing": {"method": "PhoneCode", "phoneNumber": "5491122334455"}}),
        );
        let mut t = Tracker::new(QrTimings::default());
        let (r, a) = t.observe(&unpaired(Some("2@a")), &spec, at(0));
        assert_eq!(a, Some(Action::RequestPairingCode("5491122334455".into())));
        assert!(r.qr.is_none() && r.pairing_code.is_none());
        assert_eq!(t.observe(&unpaired(Some("2@a")), &spec, at(1)).1, None, "no second request right away");
        t.pairing_code("ABCD2345".into(), at(2));
        let (r, a) = t.observe(&unpaired(Some("2@b")), &spec, at(3));
        assert_eq!(
            (r.state, r.pairing_code.as_deref(), a),
            (SessionState::QrRequired, Some("ABCD2345"), None)
        );
        // The code ages out: a new one is requested.
        assert!(matches!(
            t.observe(&unpaired(Some("2@b")), &spec, at(200)).1,
            Some(Action::RequestPairingCode(_))
        ));
    }

    #[test]
    fn conflict_and_bans_are_reported() {
        let spec = spec(serde_json::json!({"clienteId": 1}));
        let mut t = Tracker::new(QrTimings::default());
        let snap =
            |s: &str| Snapshot { loaded: true, modules: true, state: Some(s.into()), ..Snapshot::default() };
        assert_eq!(t.observe(&snap("CONFLICT"), &spec, at(0)).0.reason, "Conflict");
        assert_eq!(t.observe(&snap("TOS_BLOCK"), &spec, at(0)).0.state, SessionState::Failed);
        assert_eq!(t.observe(&Snapshot::default(), &spec, at(0)).0.state, SessionState::Connecting);
    }

    #[test]
    fn what_the_page_lacks_is_carried_in_the_report() {
        let spec = spec(serde_json::json!({"clienteId": 1}));
        let mut t = Tracker::new(QrTimings::default());
        let missing = vec!["WAWebQueryExistsJob".to_string()];
        let snap = Snapshot { missing: Some(missing.clone()), ..unpaired(Some("2@a")) };
        let (r, _) = t.observe(&snap, &spec, at(0));
        assert_eq!((r.state, r.missing), (SessionState::QrRequired, Some(missing)));
        assert_eq!(
            t.observe(&Snapshot::default(), &spec, at(1)).0.missing,
            None,
            "not known before the page loads"
        );
    }
}
