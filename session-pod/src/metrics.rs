//! Prometheus metrics of the session pod, served at `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use whatsapp_crds::SessionState;
use whatsapp_runtime::telemetry::{registered, render};

use crate::tracker::Report;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub state: IntGaugeVec,
    pub qr_refreshes: IntCounter,
    pub messages: IntCounterVec,
    pub send_duration: HistogramVec,
    pub browser_restarts: IntCounter,
    web_version: IntGaugeVec,
    bridge_compatible: IntGauge,
    bridge_missing: IntGaugeVec,
    pub outbox_queued: IntGauge,
    pub outbox_wait: Histogram,
    outbox_messages: IntGaugeVec,
    pub receipts: IntCounterVec,
    pub webhooks: WebhookMetrics,
    pub incoming: IntCounterVec,
    pub number_checks: IntCounterVec,
    volume_space: VolumeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new().expect("the metric definitions are static and valid")
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let state = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("whatsapp_session_state", "1 for the state the session is in."),
                &["state"],
            ),
        )?;
        let qr_refreshes = registered(
            &registry,
            IntCounter::new("whatsapp_session_qr_codes_total", "QR codes shown by WhatsApp Web."),
        )?;
        let messages = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_session_messages_sent_total",
                    "Messages handed to WhatsApp Web, by result (sent, not_on_whatsapp, error, timeout: outcome unknown, settled by lookup).",
                ),
                &["result"],
            ),
        )?;
        let send_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "whatsapp_session_send_duration_seconds",
                    "Time WhatsApp Web took to send a message handed to it.",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["result"],
            ),
        )?;
        let browser_restarts = registered(
            &registry,
            IntCounter::new(
                "whatsapp_session_browser_restarts_total",
                "Chromium restarts after a crash or hang.",
            ),
        )?;
        let web_version = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "whatsapp_session_web_version_info",
                    "The WhatsApp Web build the page runs (value 1).",
                ),
                &["version"],
            ),
        )?;
        let bridge_compatible = registered(
            &registry,
            IntGauge::new(
                "whatsapp_session_bridge_compatible",
                "1 when WhatsApp Web has every module and function the bridge uses, 0 when it lacks some, -1 before the page loaded.",
            ),
        )?;
        bridge_compatible.set(-1);
        let bridge_missing = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "whatsapp_session_bridge_missing_info",
                    "A module or function the bridge uses that this WhatsApp Web build lacks (value 1).",
                ),
                &["item"],
            ),
        )?;
        let outbox_queued = registered(
            &registry,
            IntGauge::new("whatsapp_session_outbox_queued", "Messages in the outbox waiting to be sent."),
        )?;
        let outbox_wait = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "whatsapp_session_outbox_wait_seconds",
                    "Time from a message being accepted to WhatsApp Web sending it.",
                )
                .buckets(vec![0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0]),
            ),
        )?;
        let outbox_messages = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("whatsapp_session_outbox_messages", "Messages in the outbox, by status."),
                &["status"],
            ),
        )?;
        let receipts = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_session_receipts_total",
                    "Receipts WhatsApp Web reported for sent messages, by what they say (sent, delivered, read, played, error).",
                ),
                &["status"],
            ),
        )?;
        let webhooks = WebhookMetrics::register(&registry)?;
        let incoming = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_session_incoming_total",
                    "Incoming messages stored, by how they were taken from WhatsApp Web (live: as they arrived; catch_up: found after a restart, taken by the page before it died).",
                ),
                &["source"],
            ),
        )?;
        let number_checks = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_session_number_checks_total",
                    "Existence queries made through WhatsApp Web (paced, each answer kept a day), by result (on_whatsapp, not_on_whatsapp, error).",
                ),
                &["result"],
            ),
        )?;
        let volume_space = VolumeMetrics::register(&registry)?;
        for s in SessionState::ALL {
            state.with_label_values(&[s.as_str()]).set(0);
        }
        Ok(Metrics {
            registry,
            state,
            qr_refreshes,
            messages,
            send_duration,
            browser_restarts,
            web_version,
            bridge_compatible,
            bridge_missing,
            outbox_queued,
            outbox_wait,
            outbox_messages,
            receipts,
            webhooks,
            incoming,
            number_checks,
            volume_space,
        })
    }
}

impl Metrics {
    /// Updates the state gauge and counts new QR codes, given the previous report.
    pub fn observe(&self, report: &Report, previous: &Report) {
        if report.state != previous.state {
            self.state.with_label_values(&[previous.state.as_str()]).set(0);
        }
        self.state.with_label_values(&[report.state.as_str()]).set(1);
        let new_code = report.qr.as_ref().map(|q| &q.code);
        if new_code.is_some() && new_code != previous.qr.as_ref().map(|q| &q.code) {
            self.qr_refreshes.inc();
        }
        if let Some(missing) = &report.missing
            && previous.missing.as_ref() != Some(missing)
        {
            self.bridge_compatible.set(i64::from(missing.is_empty()));
            self.bridge_missing.reset();
            for item in missing {
                self.bridge_missing.with_label_values(&[item.as_str()]).set(1);
            }
        }
    }

    /// Records the WhatsApp Web build in use (one series).
    pub fn web_version(&self, version: &str) {
        if self.web_version.get_metric_with_label_values(&[version]).map(|g| g.get()).unwrap_or(0) == 1 {
            return;
        }
        self.web_version.reset();
        self.web_version.with_label_values(&[version]).set(1);
    }

    /// The outbox's messages by status.
    pub fn outbox_counts(&self, counts: &[(crate::outbox::Status, u64)]) {
        for (status, n) in counts {
            self.outbox_messages.with_label_values(&[status.as_str()]).set(*n as i64);
        }
    }

    /// The session's volume as last measured ([`crate::volume`]).
    pub fn volume(&self, available: u64, size: u64, full: bool) {
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.volume_space.available.set(bytes(available));
        self.volume_space.size.set(bytes(size));
        self.volume_space.full.set(i64::from(full));
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The webhooks' deliveries.
#[derive(Clone)]
pub struct WebhookMetrics {
    pub deliveries: IntCounterVec,
    queue: IntGaugeVec,
    dead: IntGaugeVec,
    pub latency: Histogram,
}

impl WebhookMetrics {
    fn register(registry: &Registry) -> prometheus::Result<WebhookMetrics> {
        let deliveries = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_session_webhook_deliveries_total",
                    "Webhook delivery attempts, by endpoint and outcome (delivered, failed: retried later, dead: given up 24 h after it was queued).",
                ),
                &["endpoint", "outcome"],
            ),
        )?;
        let queue = registered(
            registry,
            IntGaugeVec::new(
                Opts::new("whatsapp_session_webhook_queue", "Webhook deliveries pending, by endpoint."),
                &["endpoint"],
            ),
        )?;
        let dead = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "whatsapp_session_webhook_dead",
                    "Webhook deliveries given up (dead-lettered, kept for redelivery), by endpoint.",
                ),
                &["endpoint"],
            ),
        )?;
        let latency = registered(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "whatsapp_session_webhook_latency_seconds",
                    "Time from an event being queued for an endpoint to its delivery there.",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 21600.0, 86400.0]),
            ),
        )?;
        Ok(WebhookMetrics { deliveries, queue, dead, latency })
    }

    /// The deliveries by endpoint and status (pending and dead are shown).
    pub fn counts(&self, counts: &[(String, crate::webhooks::DeliveryStatus, u64)]) {
        use crate::webhooks::DeliveryStatus;
        for (endpoint, status, n) in counts {
            let gauge = match status {
                DeliveryStatus::Pending => &self.queue,
                DeliveryStatus::Dead => &self.dead,
                DeliveryStatus::Delivered => continue,
            };
            gauge.with_label_values(&[endpoint.as_str()]).set(*n as i64);
        }
    }
}

/// The session's volume: its space and whether it counts as full.
#[derive(Clone)]
struct VolumeMetrics {
    available: IntGauge,
    size: IntGauge,
    full: IntGauge,
}

impl VolumeMetrics {
    fn register(registry: &Registry) -> prometheus::Result<VolumeMetrics> {
        let available = registered(
            registry,
            IntGauge::new(
                "whatsapp_session_volume_available_bytes",
                "Bytes the session pod may still write on its volume (the profile's filesystem: the login and the outbox).",
            ),
        )?;
        let size = registered(
            registry,
            IntGauge::new("whatsapp_session_volume_size_bytes", "Size of the session's volume, in bytes."),
        )?;
        let full = registered(
            registry,
            IntGauge::new(
                "whatsapp_session_storage_full",
                "1 while the session's volume is full (under 16 MiB available, or a write failed for lack of space and nothing was freed since): new messages are refused with 507 STORAGE_FULL.",
            ),
        )?;
        Ok(VolumeMetrics { available, size, full })
    }
}
