//! Keeps the login's databases readable after a full volume. Chromium keeps the WhatsApp
//! login in leveldb databases on the profile (IndexedDB, Local Storage). A write cut short by
//! a full volume (ENOSPC) or a kill leaves a torn record at the end of a database's log.
//! leveldb reads a torn tail as the end of the log, but Chromium's leveldb then reuses that log
//! and appends after the torn bytes; at the next open the torn record sits in the middle, fails
//! its checksum, and Chromium (paranoid checks) deletes the whole database: the login is gone
//! and the session shows a QR. So before every Chromium launch each database's newest log is
//! cut back to the end of its last complete record: exactly what leveldb would read from it.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// leveldb's log: 32 KiB blocks of records, each with a 7-byte header (masked CRC32C of type
/// and payload, little-endian length, type).
const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc = CRC32C[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// leveldb stores checksums masked (rotated and offset).
fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(0xa282_ead8).rotate_left(15)
}

/// How many bytes of `log` leveldb reads as whole records: the end of the last complete
/// record before the first torn or damaged one (or the end of the log).
pub fn readable_length(log: &[u8]) -> usize {
    let (mut at, mut readable) = (0, 0);
    loop {
        let left = BLOCK - at % BLOCK;
        if left < HEADER {
            at += left; // the block's zero trailer
            continue;
        }
        let Some(header) = log.get(at..at + HEADER) else { return readable };
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        let end = at + HEADER + length;
        let Some(payload) = log.get(at + HEADER..end).filter(|_| HEADER + length <= left) else {
            return readable;
        };
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if unmask(stored) != crc32c(&[&[kind], payload]) {
            return readable;
        }
        match kind {
            FULL | LAST => readable = end,
            FIRST | MIDDLE => {}
            _ => return readable,
        }
        at = end;
    }
}

/// The newest log (`NNNNNN.log`) of each leveldb database under `dir`, a few levels deep.
fn newest_logs(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if depth > 0 {
                newest_logs(&path, depth - 1, found);
            }
            continue;
        }
        let name = entry.file_name();
        let number = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number.filter(|n| newest.as_ref().is_none_or(|(m, _)| n > m)) {
            newest = Some((n, path));
        }
    }
    if let Some((_, log)) = newest.filter(|_| dir.join("CURRENT").is_file()) {
        found.push(log);
    }
}

/// Cuts one log back to its readable length; returns the bytes cut.
fn repair(log: &Path) -> std::io::Result<usize> {
    let bytes = std::fs::read(log)?;
    let readable = readable_length(&bytes);
    if readable == bytes.len() {
        return Ok(0);
    }
    let file = std::fs::OpenOptions::new().write(true).open(log)?;
    file.set_len(readable as u64)?;
    file.sync_all()?;
    Ok(bytes.len() - readable)
}

/// Repairs every leveldb log of the browser profile `profile` (Chromium must not be running
/// on it). Failures are logged: Chromium then does what it would have done anyway.
#[tracing::instrument]
pub fn repair_profile(profile: &Path) {
    let mut logs = Vec::new();
    newest_logs(profile, 4, &mut logs);
    for log in logs {
        match repair(&log) {
            Ok(0) => {}
            Ok(cut) => info!(log = %log.display(), cut, "cut a torn record off a leveldb log of the profile"),
            Err(error) => warn!(log = %log.display(), %error, "checking a leveldb log of the profile failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leveldb log of `records` (each fits one block here), as leveldb writes it.
    fn log_of(records: &[&[u8]]) -> Vec<u8> {
        let mut log = Vec::new();
        for payload in records {
            let crc = crc32c(&[&[FULL], payload]).rotate_right(15).wrapping_add(0xa282_ead8);
            log.extend_from_slice(&crc.to_le_bytes());
            log.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            log.push(FULL);
            log.extend_from_slice(payload);
        }
        log
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_back_to_the_last_whole_record() {
        let whole = log_of(&[b"login", b"chats"]);
        assert_eq!(readable_length(&whole), whole.len());
        let first = HEADER + 5;
        // Cut short by a full volume.
        assert_eq!(readable_length(&whole[..whole.len() - 2]), first);
        // Torn, then appended to (Chromium reusing the log): the checksum fails there.
        let mut appended = whole[..whole.len() - 2].to_vec();
        appended.extend_from_slice(&log_of(&[b"later"]));
        assert_eq!(readable_length(&appended), first);
    }

    #[test]
    fn the_profile_is_repaired_in_place() {
        let profile = tempfile::tempdir().unwrap();
        let db = profile.path().join("Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("CURRENT"), "MANIFEST-000001\n").unwrap();
        let whole = log_of(&[b"login", b"chats"]);
        std::fs::write(db.join("000001.log"), &whole[..whole.len() - 2]).unwrap();
        std::fs::write(db.join("000003.log"), &whole[..whole.len() - 2]).unwrap();
        repair_profile(profile.path());
        assert_eq!(std::fs::read(db.join("000003.log")).unwrap(), whole[..HEADER + 5]);
        assert_eq!(std::fs::read(db.join("000001.log")).unwrap().len(), whole.len() - 2, "only the newest");
    }
}
