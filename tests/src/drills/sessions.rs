//! Drills on a linked session's pod, through the operator and the pod runner (which restarts a
//! dead process and brings a deleted pod back as a kubelet would): the session process killed,
//! its Chromium killed or frozen, its pod deleted. Each must come back READY on the same login.

use std::time::Instant;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use whatsapp_crds::{SessionState, WhatsAppSession};

use super::{Counts, DEADLINE, Row, StatusLog, guarded};
use crate::harness::{TestNamespace, cluster, eventually};
use crate::podrunner::{PodRunner, claim_dir};
use crate::processes::{Operator, chromium_pid, print_log_tail};
use crate::simulator::{SimConfig, Simulator};

pub(super) const PROCESS_KILL: &str = "session process SIGKILL";
pub(super) const CHROMIUM_KILL: &str = "Chromium SIGKILL";
pub(super) const CHROMIUM_STOP: &str = "Chromium SIGSTOP";
pub(super) const POD_DELETE: &str = "pod deleted";
const TO_READY: &str = "READY again (watch), no QR, same account";
const TO_READY_CRASH: &str = "BrowserCrashed, then READY, no QR, same account";
const TO_READY_POD: &str = "READY on a new pod, same claim, no QR";

/// The operator, the pod runner and WhatsApp (the simulator) for the session drills.
struct Stack {
    ns: TestNamespace,
    sim: Simulator,
    runner: PodRunner,
    _operator: Operator,
}

pub(super) async fn run(counts: &Counts) -> Vec<Row> {
    if counts.session_kill + counts.chromium_kill + counts.chromium_stop + counts.pod_delete == 0 {
        return Vec::new();
    }
    let stack = match guarded(Stack::start()).await {
        Ok(stack) => stack,
        Err(why) => {
            return [
                (PROCESS_KILL, TO_READY, counts.session_kill),
                (CHROMIUM_KILL, TO_READY_CRASH, counts.chromium_kill),
                (CHROMIUM_STOP, TO_READY_CRASH, counts.chromium_stop),
                (POD_DELETE, TO_READY_POD, counts.pod_delete),
            ]
            .into_iter()
            .map(|(drill, measured, n)| Row::setup_failed(drill, measured, n, why.clone()))
            .collect();
        }
    };
    let (a, b, c, d) = futures::join!(
        stack.process_kills(counts.session_kill),
        stack.chromium_faults(CHROMIUM_KILL, Signal::SIGKILL, counts.chromium_kill),
        stack.chromium_faults(CHROMIUM_STOP, Signal::SIGSTOP, counts.chromium_stop),
        stack.pod_deletes(counts.pod_delete),
    );
    vec![a, b, c, d]
}

impl Stack {
    async fn start() -> Stack {
        let ns = cluster().namespace("drills-sessions").await;
        // WhatsApp's own QR timings: the drills link each session once, under load.
        let sim = Simulator::start(SimConfig::default()).await.expect("starting the simulator");
        let _operator = Operator::start(&ns, "op", "op", &[]);
        let runner = ns.pod_runner(&sim);
        Stack { ns, sim, runner, _operator }
    }

    /// Creates the session `name` and links it with `phone`; its statuses followed from the start.
    async fn linked(&self, name: &str, cliente_id: i64, phone: &str) -> StatusLog {
        self.ns.create_session(name, json!({"clienteId": cliente_id})).await;
        let log = StatusLog::follow(self.ns.api(), name);
        let sessions = self.ns.api::<WhatsAppSession>();
        // The phone scans the QR shown now; one that rotated meanwhile is scanned again.
        eventually(&format!("{name}: a scan of its QR"), DEADLINE, || async {
            let session = sessions.get(name).await.map_err(|e| e.to_string())?;
            let Some(qr) = session.status.and_then(|s| s.qr) else { return Ok(None) };
            Ok(self.sim.scan(&qr.code, phone, "Drills").ok())
        })
        .await;
        self.ns.wait_status(name, "READY", |s| s.state == Some(SessionState::Ready)).await;
        log
    }

    /// The session process killed (SIGKILL to its process group, Chromium with it), as a crash:
    /// the runner restarts it, and it finds the login on the volume.
    async fn process_kills(&self, planned: usize) -> Row {
        let (name, phone) = ("crash", "5491100000001");
        let pod = format!("{name}-0");
        let mut row = Row::new(PROCESS_KILL, TO_READY, planned);
        if planned == 0 {
            return row;
        }
        let log = match guarded(self.linked(name, 1, phone)).await {
            Ok(log) => log,
            Err(why) => return Row::setup_failed(PROCESS_KILL, TO_READY, planned, why),
        };
        row.run(async |_| {
            let mark = log.mark();
            let fault = Instant::now();
            assert!(self.runner.kill_process(&self.ns.name, &pod), "no process runs for {pod}");
            log.back_to_ready(mark, None, phone).await.saturating_duration_since(fault)
        })
        .await;
        self.diagnose(&row, &pod);
        row
    }

    /// Chromium alone killed or frozen: the session process notices (`BrowserCrashed`), starts
    /// a new one and is READY again on the same profile.
    async fn chromium_faults(&self, drill: &'static str, signal: Signal, planned: usize) -> Row {
        let (name, id, phone) = match signal {
            Signal::SIGKILL => ("chromium", 2, "5491100000002"),
            _ => ("frozen", 3, "5491100000003"),
        };
        let pod = format!("{name}-0");
        let mut row = Row::new(drill, TO_READY_CRASH, planned);
        if planned == 0 {
            return row;
        }
        let setup = async {
            let log = self.linked(name, id, phone).await;
            let claim = claim_dir(&self.ns.client, &self.ns.name, &format!("profile-{pod}")).await;
            (log, claim.expect("the profile claim's directory").join("profile"))
        };
        let (log, profile) = match guarded(setup).await {
            Ok(found) => found,
            Err(why) => return Row::setup_failed(drill, TO_READY_CRASH, planned, why),
        };
        row.run(async |_| {
            let pid = eventually("Chromium running on the profile", DEADLINE, || async {
                Ok(chromium_pid(&profile))
            })
            .await;
            let mark = log.mark();
            let fault = Instant::now();
            kill(Pid::from_raw(pid), signal).expect("signalling Chromium");
            let back = log.back_to_ready(mark, Some("BrowserCrashed"), phone).await;
            assert_ne!(chromium_pid(&profile), Some(pid), "READY on the Chromium that was {signal}ed");
            back.saturating_duration_since(fault)
        })
        .await;
        self.diagnose(&row, &pod);
        row
    }

    /// The pod deleted: the StatefulSet makes a new one, the runner starts it on the same claim.
    async fn pod_deletes(&self, planned: usize) -> Row {
        let (name, phone) = ("evict", "5491100000004");
        let (pod, claim) = (format!("{name}-0"), format!("profile-{name}-0"));
        let mut row = Row::new(POD_DELETE, TO_READY_POD, planned);
        if planned == 0 {
            return row;
        }
        let pods = self.ns.api::<Pod>();
        let setup = async {
            let log = self.linked(name, 4, phone).await;
            let pvc = self.ns.api::<PersistentVolumeClaim>().get(&claim).await.expect("the claim");
            (log, pvc.metadata.uid)
        };
        let (log, claim_uid) = match guarded(setup).await {
            Ok(found) => found,
            Err(why) => return Row::setup_failed(POD_DELETE, TO_READY_POD, planned, why),
        };
        row.run(async |_| {
            let old = pods.get(&pod).await.expect("the pod").metadata.uid;
            let mark = log.mark();
            let fault = Instant::now();
            pods.delete(&pod, &Default::default()).await.expect("deleting the pod");
            let back = log.back_to_ready(mark, None, phone).await;
            let new = pods.get(&pod).await.expect("the new pod");
            assert_ne!(new.metadata.uid, old, "READY, but on the deleted pod");
            let mounted = new.spec.and_then(|s| s.volumes).unwrap_or_default();
            let mounted = mounted.into_iter().find_map(|v| v.persistent_volume_claim).map(|c| c.claim_name);
            assert_eq!(mounted.as_deref(), Some(claim.as_str()), "the new pod's claim");
            let pvc = self.ns.api::<PersistentVolumeClaim>().get(&claim).await.expect("the claim");
            assert_eq!(pvc.metadata.uid, claim_uid, "the claim was replaced: the login with it");
            back.saturating_duration_since(fault)
        })
        .await;
        self.diagnose(&row, &pod);
        row
    }

    /// On failures, the tail of the pod's session process log.
    fn diagnose(&self, row: &Row, pod: &str) {
        if row.failures.is_empty() {
            return;
        }
        if let Some(log) = self.runner.log(&self.ns.name, pod) {
            print_log_tail(&format!("{} ({pod})", row.drill), &log, 40);
        }
    }
}
