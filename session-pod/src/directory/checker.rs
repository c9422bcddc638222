//! The line of numbers to check and the one task that checks them through the page, one at a
//! time, paced, while the session is READY.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, warn};
use whatsapp_crds::SessionState;

use super::{Checked, Directory, DirectoryError, FRESH_FOR, MAX_QUEUED, store};
use crate::driver::Command;
use crate::tracker::Report;

/// The longest wait after failed checks (it doubles from [`Pacing::retry`] with each failure in
/// a row).
const RETRY_LAST: Duration = Duration::from_secs(60);
/// How often checks older than a day are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// The gap between two checks: random between `min` and `max`; `retry` after a failed one.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    pub min: Duration,
    pub max: Duration,
    pub retry: Duration,
}

impl Pacing {
    /// 1 to 2 s (see the module's documentation); 5 s after a failure.
    pub const WHATSAPP: Pacing =
        Pacing { min: Duration::from_secs(1), max: Duration::from_secs(2), retry: Duration::from_secs(5) };

    pub fn gap(&self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        rand::rng().random_range(self.min..=self.max)
    }
}

/// The numbers waiting, and who to tell when one was checked.
pub struct Checks {
    line: Mutex<Line>,
    wake: Notify,
    /// Counts the checks stored: requests wait on it.
    stored: watch::Sender<u64>,
}

#[derive(Default)]
struct Line {
    waiting: VecDeque<String>,
    /// Being checked now.
    checking: Option<String>,
}

impl Default for Checks {
    fn default() -> Self {
        Checks { line: Default::default(), wake: Notify::new(), stored: watch::channel(0).0 }
    }
}

impl Checks {
    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Told each time a check is stored.
    pub fn stored(&self) -> watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// Puts `numbers` first in line, in their order (a caller waits for them); the line keeps
    /// at most [`MAX_QUEUED`], dropping from its end.
    pub fn first(&self, numbers: &[String]) {
        let mut line = self.line();
        let new: HashSet<&str> = numbers.iter().map(String::as_str).collect();
        line.waiting.retain(|n| !new.contains(n.as_str()));
        let checking = line.checking.clone();
        for number in numbers.iter().rev().filter(|n| Some(*n) != checking.as_ref()) {
            line.waiting.push_front(number.clone());
        }
        line.waiting.truncate(MAX_QUEUED);
        drop(line);
        self.wake.notify_one();
    }

    /// The next number to check, now being checked.
    async fn next(&self) -> String {
        loop {
            {
                let mut line = self.line();
                if let Some(number) = line.waiting.pop_front() {
                    line.checking = Some(number.clone());
                    return number;
                }
            }
            self.wake.notified().await;
        }
    }

    /// The check of `number` is over: stored, or back first in line to try again.
    fn over(&self, number: String, stored: bool) {
        let mut line = self.line();
        line.checking = None;
        if stored {
            drop(line);
            self.stored.send_modify(|n| *n += 1);
        } else if !line.waiting.contains(&number) {
            line.waiting.push_front(number);
        }
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.line().waiting.len()
    }
}

impl Directory {
    /// Checks the numbers in line through the page for as long as the driver runs: one at a
    /// time, only while the session is READY, a gap of `pacing` after each.
    pub async fn run_checks(self, mut reports: watch::Receiver<Report>, pacing: Pacing) {
        let mut next_at = Instant::now();
        let mut retry = pacing.retry;
        let mut forgotten_at: Option<Instant> = None;
        loop {
            if forgotten_at.is_none_or(|at| at.elapsed() >= FORGET_EVERY) {
                self.forget_old_checks();
                forgotten_at = Some(Instant::now());
            }
            let number = self.checks.next().await;
            let ready = reports.wait_for(|r| r.state == SessionState::Ready).await.is_ok();
            tokio::time::sleep_until(next_at).await;
            if !ready || reports.borrow().state != SessionState::Ready {
                self.checks.over(number, false);
                if !ready {
                    return;
                }
                continue;
            }
            match self.check_one(&number).await {
                Ok(()) => {
                    self.checks.over(number, true);
                    retry = pacing.retry;
                    next_at = Instant::now() + pacing.gap();
                }
                Err(DirectoryError::Stopped) => return,
                Err(error) => {
                    warn!(%error, ?retry, "checking a number failed; trying again later");
                    self.checks.over(number, false);
                    next_at = Instant::now() + retry.max(pacing.gap());
                    retry = (retry * 2).min(RETRY_LAST);
                }
            }
        }
    }

    /// One existence query through the page, stored.
    async fn check_one(&self, number: &str) -> Result<(), DirectoryError> {
        let number_owned = number.to_string();
        let asked = self.ask(|reply| Command::CheckNumber { number: number_owned, reply }).await;
        let result = match &asked {
            Ok(e) if e.exists => "on_whatsapp",
            Ok(_) => "not_on_whatsapp",
            Err(_) => "error",
        };
        self.metrics.number_checks.with_label_values(&[result]).inc();
        let existence = asked?;
        let check = Checked { exists: existence.exists, lid: existence.lid, checked_at: Timestamp::now() };
        self.outbox.database(|db| store::record(db, number, &check))?;
        debug!(exists = check.exists, "number checked");
        Ok(())
    }

    /// Forgets the checks older than [`FRESH_FOR`], a bounded number at a time.
    fn forget_old_checks(&self) {
        let before = Timestamp::now() - FRESH_FOR;
        match self.outbox.database(|db| store::forget_checks(db, before, 10_000)) {
            Ok(0) => {}
            Ok(n) => debug!(forgotten = n, "old number checks forgotten"),
            Err(error) => warn!(%error, "forgetting old number checks failed"),
        }
    }
}
