//! The failure drills as a suite with counts (issue 14): each drill injects one kind of fault
//! again and again into the real stack and measures, every time, how long until a user sees
//! the system whole again, through the API a user has (the WhatsAppSession status through the
//! kube API, the hub's REST API and event stream).
//!
//! [`run`] runs every drill at the given [`Counts`] and returns a [`Report`]: one [`Row`] per
//! drill with its attempts, successes, median and worst recovery time. An attempt succeeds when
//! every check of it held and the system recovered within [`DEADLINE`]; times are printed,
//! never asserted. `tests/tests/drills.rs` runs the suite at [`Counts::ci`] and asserts every
//! attempt succeeded; `bench-drills` runs it at [`Counts::full`], the counts.

mod apiserver;
mod hub;
mod leader;
mod sessions;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use whatsapp_crds::{SessionState, WhatsAppSession};

use crate::harness::eventually;
use crate::processes::percentile;

/// How long one attempt may take to recover before it counts as failed: generous, since
/// Chromium's restart backoff alone grows to 30 s after repeated crashes.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// How many times each drill runs.
#[derive(Clone, Debug)]
pub struct Counts {
    /// The session process (and its Chromium, its process group) killed with SIGKILL.
    pub session_kill: usize,
    /// Chromium alone killed with SIGKILL.
    pub chromium_kill: usize,
    /// Chromium frozen with SIGSTOP.
    pub chromium_stop: usize,
    /// The session's pod deleted.
    pub pod_delete: usize,
    /// The leading operator killed (no Lease release).
    pub leader_kill: usize,
    /// The leading operator's connection to the API server cut.
    pub leader_partition: usize,
    /// The API server stopped for [`Counts::apiserver_outage`] (on a control plane of the
    /// drill's own).
    pub apiserver_stop: usize,
    pub apiserver_outage: Duration,
    /// The hub killed while event streams are open.
    pub hub_kill: usize,
}

impl Counts {
    /// The counts.
    pub fn full() -> Counts {
        Counts {
            session_kill: 20,
            chromium_kill: 20,
            chromium_stop: 5,
            pod_delete: 20,
            leader_kill: 5,
            leader_partition: 3,
            apiserver_stop: 1,
            apiserver_outage: Duration::from_secs(30),
            hub_kill: 5,
        }
    }

    /// Every drill, fewer times: what `./dev test` affords.
    pub fn ci() -> Counts {
        Counts {
            session_kill: 3,
            chromium_kill: 3,
            chromium_stop: 3,
            pod_delete: 3,
            leader_kill: 3,
            leader_partition: 1,
            apiserver_stop: 1,
            apiserver_outage: Duration::from_secs(30),
            hub_kill: 3,
        }
    }
}

impl Counts {
    /// These counts with only the drills whose row name contains one of `names` (all if none).
    pub fn only(mut self, names: &[String]) -> Counts {
        if names.is_empty() {
            return self;
        }
        let wanted = |row: &str| names.iter().any(|n| row.to_lowercase().contains(&n.to_lowercase()));
        let rows = [
            (sessions::PROCESS_KILL, &mut self.session_kill),
            (sessions::CHROMIUM_KILL, &mut self.chromium_kill),
            (sessions::CHROMIUM_STOP, &mut self.chromium_stop),
            (sessions::POD_DELETE, &mut self.pod_delete),
            (leader::KILL, &mut self.leader_kill),
            (leader::PARTITION, &mut self.leader_partition),
            (apiserver::DRILL, &mut self.apiserver_stop),
            (hub::DRILL, &mut self.hub_kill),
        ];
        for (row, count) in rows {
            if !wanted(row) {
                *count = 0;
            }
        }
        self
    }
}

/// One drill's results.
#[derive(Debug)]
pub struct Row {
    pub drill: &'static str,
    /// What the recovery time runs from and to.
    pub measured: &'static str,
    /// How many attempts were asked for.
    pub planned: usize,
    /// Recovery time of each successful attempt.
    pub recoveries: Vec<Duration>,
    /// Why each failed attempt failed (or the drill's setup).
    pub failures: Vec<String>,
    /// Attempts made (a drill stops after [`GIVE_UP_AFTER`] failures in a row).
    pub attempts: usize,
}

/// Failures in a row after which a drill stops: the system is not coming back by itself.
const GIVE_UP_AFTER: usize = 3;

impl Row {
    fn new(drill: &'static str, measured: &'static str, planned: usize) -> Row {
        Row { drill, measured, planned, recoveries: Vec::new(), failures: Vec::new(), attempts: 0 }
    }

    pub fn successes(&self) -> usize {
        self.recoveries.len()
    }

    pub fn median(&self) -> Option<Duration> {
        (!self.recoveries.is_empty()).then(|| percentile(&self.recoveries, 50))
    }

    pub fn worst(&self) -> Option<Duration> {
        self.recoveries.iter().max().copied()
    }

    /// Every planned attempt made, and every one recovered.
    pub fn passed(&self) -> bool {
        self.attempts == self.planned && self.successes() == self.planned
    }

    /// Runs `attempt` (which returns the recovery time, or panics on a failed check) up to
    /// `planned` times, counting panics as failures.
    async fn run(&mut self, mut attempt: impl AsyncFnMut(usize) -> Duration) {
        let mut failed_in_a_row = 0;
        for i in 0..self.planned {
            self.attempts += 1;
            match AssertUnwindSafe(attempt(i)).catch_unwind().await {
                Ok(recovery) => {
                    self.recoveries.push(recovery);
                    failed_in_a_row = 0;
                }
                Err(panic) => {
                    self.failures.push(format!("attempt {}: {}", i + 1, panic_message(&*panic)));
                    failed_in_a_row += 1;
                    if failed_in_a_row == GIVE_UP_AFTER {
                        return;
                    }
                }
            }
        }
    }

    /// A drill whose setup failed: no attempt made.
    fn setup_failed(drill: &'static str, measured: &'static str, planned: usize, why: String) -> Row {
        let mut row = Row::new(drill, measured, planned);
        row.failures.push(format!("setup: {why}"));
        row
    }
}

/// Runs a drill's setup (which panics if the drill cannot start), its panic as an error.
async fn guarded<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| panic_message(&*p))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// The suite's results.
pub struct Report {
    pub rows: Vec<Row>,
    pub wall: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.rows.iter().all(Row::passed)
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| {:<34} | {:>8} | {:>9} | {:>8} | {:>8} | {:<66} |",
            "drill", "attempts", "successes", "median", "worst", "recovery: from the fault to"
        )?;
        writeln!(f, "|{:-<36}|{:->10}|{:->11}|{:->10}|{:->10}|{:-<68}|", "", "", "", "", "", "")?;
        for row in &self.rows {
            writeln!(
                f,
                "| {:<34} | {:>8} | {:>9} | {:>8} | {:>8} | {:<66} |",
                row.drill,
                format!("{}/{}", row.attempts, row.planned),
                row.successes(),
                seconds(row.median()),
                seconds(row.worst()),
                row.measured,
            )?;
        }
        writeln!(f, "wall time: {:.0} s", self.wall.as_secs_f64())?;
        for row in &self.rows {
            let times: Vec<String> =
                row.recoveries.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
            writeln!(f, "{} (s, in order): {}", row.drill, times.join(" "))?;
        }
        for row in self.rows.iter().filter(|r| !r.failures.is_empty()) {
            for failure in &row.failures {
                writeln!(f, "FAILED {}: {failure}", row.drill)?;
            }
        }
        Ok(())
    }
}

/// Runs every drill, independent ones side by side (each in its own namespace; the API-server
/// drill on a control plane of its own), and returns the table.
pub async fn run(counts: &Counts) -> Report {
    let started = Instant::now();
    let (sessions, leader, apiserver, hub) =
        futures::join!(sessions::run(counts), leader::run(counts), apiserver::run(counts), hub::run(counts),);
    let rows =
        sessions.into_iter().chain(leader).chain(apiserver).chain(hub).filter(|r| r.planned > 0).collect();
    Report { rows, wall: started.elapsed() }
}

/// One WhatsAppSession's status as a watch delivered it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub state: Option<SessionState>,
    pub reason: Option<String>,
    pub qr: bool,
    pub phone: Option<String>,
}

/// Every status of one session a watch delivers, with when it arrived: no state is missed
/// between two polls.
pub struct StatusLog {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    pub fn follow(api: Api<WhatsAppSession>, name: &str) -> StatusLog {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff().applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(next) = stream.next().await {
                let Ok(session) = next else { continue };
                let status = session.status.unwrap_or_default();
                log.lock().expect("lock").push(Seen {
                    at: Instant::now(),
                    state: status.state,
                    reason: status.reason,
                    qr: status.qr.is_some(),
                    phone: status.me.map(|m| m.phone),
                });
            }
        });
        StatusLog { seen, task }
    }

    /// A mark to look for changes after.
    pub fn mark(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// Waits until, after `mark`, the session left READY (with `reason`, if given) and came
    /// back to READY as `phone`; returns when that READY arrived. A QR shown in between, or
    /// another account, fails the attempt: the login was lost.
    pub async fn back_to_ready(&self, mark: usize, reason: Option<&str>, phone: &str) -> Instant {
        let (left, ready) = eventually("READY again after the fault", DEADLINE, || async {
            match self.recovery_after(mark, reason) {
                Some(found) => Ok(Some(found)),
                None => Err(format!("statuses since the fault: {:?}", self.since(mark))),
            }
        })
        .await;
        let seen = self.seen.lock().expect("lock");
        let between = &seen[left..=ready];
        assert!(!between.iter().any(|s| s.qr), "a QR was shown: the login was lost ({between:?})");
        let back = &seen[ready];
        assert_eq!(back.phone.as_deref(), Some(phone), "READY as another account: {back:?}");
        back.at
    }

    /// Indexes of the first non-READY status after `mark` (with `reason`) and of the READY after it.
    fn recovery_after(&self, mark: usize, reason: Option<&str>) -> Option<(usize, usize)> {
        let seen = self.seen.lock().expect("lock");
        let left = (mark..seen.len()).find(|&i| {
            seen[i].state != Some(SessionState::Ready)
                && reason.is_none_or(|r| seen[i].reason.as_deref() == Some(r))
        })?;
        let ready = (left..seen.len()).find(|&i| seen[i].state == Some(SessionState::Ready))?;
        Some((left, ready))
    }

    /// The states seen since `mark`, for failure messages.
    pub fn since(&self, mark: usize) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen[mark.min(seen.len())..]
            .iter()
            .map(|s| format!("{:?}/{}", s.state, s.reason.as_deref().unwrap_or("-")))
            .collect()
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
