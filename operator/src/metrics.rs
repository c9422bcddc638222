//! Prometheus metrics of the operator, served at `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use whatsapp_crds::SessionState;
use whatsapp_runtime::telemetry::{registered, render};

/// The operator's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciliations: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub writes: IntCounterVec,
    pub sessions: IntGaugeVec,
    pub leader: IntGauge,
    pub rollout: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new().expect("the metric definitions are static and valid")
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconciliations = registered(
            &registry,
            IntCounter::with_opts(Opts::new(
                "whatsapp_operator_reconciliations_total",
                "Reconciliations of WhatsAppSession resources.",
            )),
        )?;
        let reconcile_errors = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_operator_reconcile_errors_total",
                    "Failed reconciliations, by error category.",
                ),
                &["category"],
            ),
        )?;
        let reconcile_duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "whatsapp_operator_reconcile_duration_seconds",
                    "Time to reconcile one session.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            ),
        )?;
        let writes = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "whatsapp_operator_kube_writes_total",
                    "Writes the operator made to the Kubernetes API, by kind.",
                ),
                &["kind"],
            ),
        )?;
        let sessions = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "whatsapp_operator_sessions",
                    "WhatsAppSession resources by the state their pod reports.",
                ),
                &["state"],
            ),
        )?;
        let leader = registered(
            &registry,
            IntGauge::new("whatsapp_operator_leader", "1 while this replica holds the leader lease."),
        )?;
        let rollout = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "whatsapp_operator_pod_restarts",
                    "Session pod restarts for a new template: holding a slot of the rollout budget \
                     (rolling), or waiting for one (waiting).",
                ),
                &["phase"],
            ),
        )?;
        Ok(Metrics {
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            writes,
            sessions,
            leader,
            rollout,
        })
    }
}

/// The label for sessions whose pod has not reported a state yet.
pub const STATE_UNKNOWN: &str = "UNKNOWN";

impl Metrics {
    /// Sets the sessions-by-state gauge from a count of every state (absent states read 0).
    pub fn set_sessions(&self, states: impl Iterator<Item = Option<SessionState>>) {
        let mut counts = std::collections::BTreeMap::<&str, i64>::new();
        for s in SessionState::ALL {
            counts.insert(s.as_str(), 0);
        }
        counts.insert(STATE_UNKNOWN, 0);
        for state in states {
            *counts.entry(state.map_or(STATE_UNKNOWN, SessionState::as_str)).or_default() += 1;
        }
        for (state, n) in counts {
            self.sessions.with_label_values(&[state]).set(n);
        }
    }

    /// Sets the pod-restart gauges from the rollout budget's counts.
    pub fn set_rollout(&self, counts: crate::rollout::Counts) {
        self.rollout.with_label_values(&["rolling"]).set(counts.rolling as i64);
        self.rollout.with_label_values(&["waiting"]).set(counts.waiting as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
