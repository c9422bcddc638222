//! The directory's tables, in the outbox file (one file per session, on its volume; every
//! write one fsynced transaction): the contacts of the last sync, and the number checks of
//! the last day with an index by time to forget them.

use jiff::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Checked, Contact, ContactsPage};
use crate::outbox::{StoreError, internal};

/// Position in the synced address book -> the contact (JSON).
const CONTACTS: TableDefinition<u64, &[u8]> = TableDefinition::new("contacts");
/// `contacts_synced_ms`: when the contacts were synced (ms since the epoch).
const META: TableDefinition<&str, u64> = TableDefinition::new("directory_meta");
/// Digits -> the last check of the number (JSON).
const NUMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("numbers");
/// (checked at ms, digits): the checks by age, oldest first.
const NUMBERS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("numbers_by_time");

fn ms(t: Timestamp) -> u64 {
    t.as_millisecond().max(0) as u64
}

/// Creates the tables, so readers never meet a missing one.
pub fn create(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    tx.open_table(CONTACTS).map_err(internal)?;
    tx.open_table(META).map_err(internal)?;
    tx.open_table(NUMBERS).map_err(internal)?;
    tx.open_table(NUMBERS_BY_TIME).map_err(internal)?;
    tx.commit().map_err(internal)
}

/// Replaces the stored contacts with `contacts` (in this order), synced `at`.
pub fn replace_contacts(db: &Database, contacts: &[Contact], at: Timestamp) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    {
        let mut table = tx.open_table(CONTACTS).map_err(internal)?;
        table.retain(|_, _| false).map_err(internal)?;
        for (position, contact) in (1u64..).zip(contacts) {
            let bytes = serde_json::to_vec(contact).map_err(internal)?;
            table.insert(position, bytes.as_slice()).map_err(internal)?;
        }
        tx.open_table(META).map_err(internal)?.insert("contacts_synced_ms", ms(at)).map_err(internal)?;
    }
    tx.commit().map_err(internal)
}

/// Up to `limit` contacts from position `cursor` (1 when `None`); the position after them
/// when there are more; when they were synced.
pub fn contacts(db: &Database, cursor: Option<u64>, limit: usize) -> Result<ContactsPage, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let synced = tx.open_table(META).map_err(internal)?.get("contacts_synced_ms").map_err(internal)?;
    let synced = synced.and_then(|v| Timestamp::from_millisecond(v.value() as i64).ok());
    let table = tx.open_table(CONTACTS).map_err(internal)?;
    let mut page = Vec::new();
    let mut next = None;
    for entry in table.range(cursor.unwrap_or(1)..).map_err(internal)? {
        let (position, bytes) = entry.map_err(internal)?;
        if page.len() == limit {
            next = Some(position.value());
            break;
        }
        page.push(serde_json::from_slice(bytes.value()).map_err(internal)?);
    }
    Ok(ContactsPage { contacts: page, next_cursor: next, synced_at: synced })
}

/// The stored checks of `numbers` (digits), those made at or after `since`.
pub fn checked(
    db: &Database,
    numbers: &[&str],
    since: Timestamp,
) -> Result<Vec<(String, Checked)>, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let table = tx.open_table(NUMBERS).map_err(internal)?;
    let mut out = Vec::new();
    for number in numbers {
        if let Some(bytes) = table.get(*number).map_err(internal)? {
            let check: Checked = serde_json::from_slice(bytes.value()).map_err(internal)?;
            if check.checked_at >= since {
                out.push((number.to_string(), check));
            }
        }
    }
    Ok(out)
}

/// Stores the check of `number`, replacing an earlier one.
pub fn record(db: &Database, number: &str, check: &Checked) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    {
        let mut table = tx.open_table(NUMBERS).map_err(internal)?;
        let mut by_time = tx.open_table(NUMBERS_BY_TIME).map_err(internal)?;
        let earlier = table.get(number).map_err(internal)?.map(|b| b.value().to_vec());
        if let Some(earlier) = earlier {
            let earlier: Checked = serde_json::from_slice(&earlier).map_err(internal)?;
            by_time.remove((ms(earlier.checked_at), number)).map_err(internal)?;
        }
        let bytes = serde_json::to_vec(check).map_err(internal)?;
        table.insert(number, bytes.as_slice()).map_err(internal)?;
        by_time.insert((ms(check.checked_at), number), ()).map_err(internal)?;
    }
    tx.commit().map_err(internal)
}

/// Forgets up to `limit` checks made before `before`, oldest first; how many went.
pub fn forget_checks(db: &Database, before: Timestamp, limit: usize) -> Result<usize, StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    let gone = {
        let mut table = tx.open_table(NUMBERS).map_err(internal)?;
        let mut by_time = tx.open_table(NUMBERS_BY_TIME).map_err(internal)?;
        let mut old: Vec<(u64, String)> = Vec::new();
        for entry in by_time.range(..(ms(before), "")).map_err(internal)?.take(limit) {
            let (key, _) = entry.map_err(internal)?;
            let (at, number) = key.value();
            old.push((at, number.to_string()));
        }
        for (at, number) in &old {
            by_time.remove((*at, number.as_str())).map_err(internal)?;
            table.remove(number.as_str()).map_err(internal)?;
        }
        old.len()
    };
    tx.commit().map_err(internal)?;
    Ok(gone)
}
