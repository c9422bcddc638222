//! Watches the session's volume (the filesystem of the profile: the WhatsApp login and the
//! outbox file): its available and total bytes every 10 s, and at once when a store call met a
//! full volume. What it finds becomes the `StorageFull` condition (see [`crate::status`]) and
//! the metrics `whatsapp_session_volume_available_bytes`, `whatsapp_session_volume_size_bytes`
//! and `whatsapp_session_storage_full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Below this many available bytes the volume counts as full: redb's commits (a batch of
/// 10,000 messages takes a few MiB) and Chromium's leveldb compactions need room, and a write
/// refused half-way is what damages a store. 16 MiB is 1.6% of the default 1 GiB volume.
pub const LOW_SPACE_BYTES: u64 = 16 * 1024 * 1024;
/// How often the volume is measured when nothing failed.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The volume's space, in bytes (what an unprivileged writer may use, as the pod runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub available: u64,
    pub size: u64,
}

/// Measures the filesystem that holds `dir`.
pub fn measure(dir: &Path) -> nix::Result<Space> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    let block = stat.fragment_size() as u64;
    Ok(Space {
        available: (stat.blocks_available() as u64).saturating_mul(block),
        size: (stat.blocks() as u64).saturating_mul(block),
    })
}

/// Why the volume counts as full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Less than [`LOW_SPACE_BYTES`] available.
    LowSpace,
    /// A write failed for lack of space (ENOSPC) and no space was freed since.
    WriteFailed,
}

/// What the status says about the volume: `full` (with why) and the space when that was
/// last decided. It changes only when `full` flips, so the status is not rewritten every time
/// a byte is written; the metrics carry the live numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    pub full: Option<Cause>,
    pub space: Space,
}

/// The decision, kept across measurements: a failed write keeps the volume full until
/// [`LOW_SPACE_BYTES`] more than were available at the failure have been freed.
#[derive(Debug, Default)]
pub struct Assessor {
    failed_with: Option<u64>,
}

impl Assessor {
    /// Whether the volume is full given this measurement (and a write failure just now).
    pub fn assess(&mut self, space: Space, write_failed: bool) -> Option<Cause> {
        if write_failed {
            self.failed_with = Some(space.available);
        } else if self.failed_with.is_some_and(|at| space.available >= at.saturating_add(LOW_SPACE_BYTES)) {
            self.failed_with = None;
        }
        if space.available < LOW_SPACE_BYTES {
            Some(Cause::LowSpace)
        } else if self.failed_with.is_some() {
            Some(Cause::WriteFailed)
        } else {
            None
        }
    }
}

/// Starts watching the volume of `dir`: the first measurement is taken now (so the first
/// status write already carries the condition), then every 10 s and whenever `write_failed`
/// is rung. The receiver holds `None` only if the volume could not be measured at all.
pub fn start(
    dir: PathBuf,
    write_failed: Arc<Notify>,
    metrics: Metrics,
) -> (watch::Receiver<Option<Storage>>, tokio::task::JoinHandle<()>) {
    let mut assessor = Assessor::default();
    let first = observe(&dir, &mut assessor, &metrics, false);
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.tick().await;
        loop {
            let failed = tokio::select! {
                _ = tick.tick() => false,
                _ = write_failed.notified() => true,
            };
            let Some(now) = observe(&dir, &mut assessor, &metrics, failed) else { continue };
            tx.send_if_modified(|known| {
                let flipped = known.is_none_or(|k| k.full.is_some() != now.full.is_some());
                if flipped {
                    *known = Some(now);
                }
                flipped
            });
        }
    });
    (rx, task)
}

/// One measurement: the metrics updated, the decision made.
#[tracing::instrument(skip(assessor, metrics), fields(available, size))]
fn observe(dir: &Path, assessor: &mut Assessor, metrics: &Metrics, write_failed: bool) -> Option<Storage> {
    let space = match measure(dir) {
        Ok(space) => space,
        Err(error) => {
            warn!(%error, dir = %dir.display(), "measuring the session's volume failed");
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record("available", space.available);
    span.record("size", space.size);
    let full = assessor.assess(space, write_failed);
    if write_failed {
        info!(full = full.is_some(), "a store write failed for lack of space: measured the volume");
    }
    metrics.volume(space.available, space.size, full.is_some());
    Some(Storage { full, space })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn space(available_mib: u64) -> Space {
        Space { available: available_mib * MIB, size: 96 * MIB }
    }

    #[test]
    fn low_space_is_full_and_a_failed_write_stays_full_until_space_is_freed() {
        let mut a = Assessor::default();
        assert_eq!(a.assess(space(80), false), None);
        assert_eq!(a.assess(space(15), false), Some(Cause::LowSpace));
        assert_eq!(a.assess(space(40), false), None);
        // A big write failed with 40 MiB available: full until 16 MiB more are free.
        assert_eq!(a.assess(space(40), true), Some(Cause::WriteFailed));
        assert_eq!(a.assess(space(50), false), Some(Cause::WriteFailed));
        assert_eq!(a.assess(space(10), false), Some(Cause::LowSpace));
        assert_eq!(a.assess(space(56), false), None);
        assert_eq!(a.assess(space(41), false), None, "the failure is forgotten once space was freed");
    }

    #[test]
    fn the_volume_of_a_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let s = measure(dir.path()).unwrap();
        assert!(s.size > 0 && s.available <= s.size, "{s:?}");
    }
}
