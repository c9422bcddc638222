//! Ownership of the browser profile (the WhatsApp login). Two processes on one profile make
//! WhatsApp fight itself ("conflict / replaced"), so the first takes an exclusive lock and the
//! second refuses to start.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Held for the life of the process; the kernel releases it however the process ends.
pub struct ProfileLock {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "the browser profile {dir} is in use by another session process ({holder}): refusing to start a second one"
    )]
    InUse { dir: String, holder: String },
    #[error("preparing the browser profile {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

const LOCK_FILE: &str = ".whatsapp-session.lock";

/// Locks `dir` (creating it) and removes the `Singleton*` files a killed Chromium leaves
/// behind, which would otherwise make the next launch fail ("profile in use on another
/// computer"). Removing them is safe only once the lock is ours.
pub fn lock(dir: &Path) -> Result<ProfileLock, ProfileError> {
    let io = |source| ProfileError::Io { dir: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(LOCK_FILE);
    let file = File::options().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder =
                if holder.trim().is_empty() { "unknown process".into() } else { holder.trim().to_string() };
            return Err(ProfileError::InUse { dir: dir.display().to_string(), holder });
        }
    };
    // Say who holds it, for the refusal message of a second process.
    let file: &mut File = &mut lock;
    file.set_len(0).map_err(io)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    write!(file, "pid {} on {}", std::process::id(), host.trim()).map_err(io)?;
    for stale in ["SingletonLock", "SingletonSocket", "SingletonCookie"] {
        // These are symlinks (possibly dangling): remove_file works on the link itself.
        let _ = std::fs::remove_file(dir.join(stale));
    }
    Ok(ProfileLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_profile_is_refused_and_stale_singletons_go() {
        let dir = std::env::temp_dir().join(format!("wao-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("otherhost-123", dir.join("SingletonLock")).unwrap();
        let first = lock(&dir).expect("first lock");
        assert!(std::fs::symlink_metadata(dir.join("SingletonLock")).is_err(), "stale SingletonLock removed");
        let second = lock(&dir);
        let message = second.err().expect("second lock refused").to_string();
        assert!(message.contains("in use by another session process"), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        drop(first);
        lock(&dir).expect("free again once the first holder is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
