//! The session's directory: the contacts WhatsApp Web knows (synced on demand from the page's
//! Contact collection, the phone's address book included, and kept on the volume), and which
//! numbers are on WhatsApp.
//!
//! Number checks are WhatsApp Web's own existence query (`WAWebQueryExistsJob.queryWidExists`),
//! a request to WhatsApp's servers: the same lookup number harvesters make, which WhatsApp
//! answers by banning accounts that make many of them fast. So they are paced like sends: one
//! at a time, each after a random gap of 1 to 2 s ([`Pacing::WHATSAPP`]: at most about 40 a
//! minute, never at a fixed beat, about what a person checking numbers by hand could do, and
//! well under the sending ceiling), and each answer is kept on the volume for a day
//! ([`FRESH_FOR`]), so asking again costs WhatsApp nothing. A request waits at most
//! [`MAX_WAIT`] for its numbers; those not reached by then answer `pending` and stay first in
//! line, checked in the background (a later request finds them in the store). The line is kept
//! in memory (a restart forgets it; asking again queues the numbers again), at most
//! [`MAX_QUEUED`] numbers long.

mod checker;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use checker::Pacing;

use crate::driver::Command;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, StoreError};

/// How long a number's check is trusted.
pub const FRESH_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest a number-check request waits for the page.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// The most numbers waiting to be checked.
pub const MAX_QUEUED: usize = 10_000;
/// The longest one page call (reading the contacts, one existence query) may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(25);

/// A contact as WhatsApp Web knows it: an address-book entry of the phone (`isMyContact`,
/// with the `name` saved there) or a WhatsApp user the account met (a `pushName` only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Contact {
    /// Phone number digits, when known.
    pub number: Option<String>,
    /// The LID's user part, when known.
    pub lid: Option<String>,
    /// The name in the phone's address book.
    pub name: Option<String>,
    /// The name the user gave themselves.
    pub push_name: Option<String>,
    pub is_business: bool,
    /// In the phone's address book.
    pub is_my_contact: bool,
}

impl Contact {
    /// Fills what `self` lacks from `other`, the same person seen by another id.
    fn absorb(&mut self, other: Contact) {
        self.number = self.number.take().or(other.number);
        self.lid = self.lid.take().or(other.lid);
        self.name = self.name.take().or(other.name);
        self.push_name = self.push_name.take().or(other.push_name);
        self.is_business |= other.is_business;
        self.is_my_contact |= other.is_my_contact;
    }

    fn sort_key(&self) -> (String, String) {
        let shown = self.name.as_ref().or(self.push_name.as_ref()).or(self.number.as_ref());
        (shown.map(|s| s.to_lowercase()).unwrap_or_default(), self.number.clone().unwrap_or_default())
    }
}

/// The page lists one person once per id (phone number, LID): one contact each, by name.
pub fn merge(contacts: Vec<Contact>) -> Vec<Contact> {
    // Groups of the same person; a contact naming the number of one and the LID of another
    // joins the two.
    let mut groups: Vec<Option<Contact>> = Vec::new();
    let mut by_number: HashMap<String, usize> = HashMap::new();
    let mut by_lid: HashMap<String, usize> = HashMap::new();
    for contact in contacts {
        let of_number = contact.number.as_ref().and_then(|n| by_number.get(n)).copied();
        let of_lid = contact.lid.as_ref().and_then(|l| by_lid.get(l)).copied();
        let index = match (of_number, of_lid) {
            (None, None) if contact.number.is_none() && contact.lid.is_none() => continue,
            (None, None) => {
                groups.push(Some(contact));
                groups.len() - 1
            }
            (Some(index), other) | (None, other @ Some(index)) => {
                let joined = other.filter(|o| *o != index).and_then(|o| groups[o].take());
                let group = groups[index].as_mut().expect("a live group");
                group.absorb(contact);
                if let Some(joined) = joined {
                    group.absorb(joined);
                }
                index
            }
        };
        let group = groups[index].as_ref().expect("a live group");
        if let Some(number) = &group.number {
            by_number.insert(number.clone(), index);
        }
        if let Some(lid) = &group.lid {
            by_lid.insert(lid.clone(), index);
        }
    }
    let mut merged: Vec<Contact> = groups.into_iter().flatten().collect();
    merged.sort_by_key(Contact::sort_key);
    merged
}

/// What WhatsApp Web's existence query said of a number (the bridge's `checkNumber`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Existence {
    pub exists: bool,
    #[serde(default)]
    pub lid: Option<String>,
}

/// A number's check, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    pub exists: bool,
    pub lid: Option<String>,
    pub checked_at: Timestamp,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NumberStatus {
    OnWhatsapp,
    NotOnWhatsapp,
    /// Not 8 to 15 digits: never asked.
    Invalid,
    /// Not checked yet: it is in line; ask again later.
    Pending,
}

/// The answer for one number of a request.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NumberResult {
    /// As the caller gave it.
    pub number: String,
    pub status: NumberStatus,
    pub lid: Option<String>,
    pub checked_at: Option<Timestamp>,
}

/// A page of the synced contacts.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ContactsPage {
    pub contacts: Vec<Contact>,
    pub next_cursor: Option<u64>,
    pub synced_at: Option<Timestamp>,
}

/// Why a call through the page failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("WhatsApp Web failed: {0}")]
    Page(String),
    #[error("WhatsApp Web did not answer in time")]
    Timeout,
    #[error("the session is shutting down")]
    Stopped,
}

#[derive(Clone)]
pub struct Directory {
    outbox: Outbox,
    commands: mpsc::Sender<Command>,
    checks: Arc<checker::Checks>,
    metrics: Metrics,
}

impl Directory {
    /// The directory in the outbox file; page calls go to the driver through `commands`.
    pub fn open(
        outbox: Outbox,
        commands: mpsc::Sender<Command>,
        metrics: Metrics,
    ) -> Result<Directory, StoreError> {
        outbox.database(store::create)?;
        Ok(Directory { outbox, commands, checks: Default::default(), metrics })
    }

    /// A call into the page, through the driver (which owns it).
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, DirectoryError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| DirectoryError::Stopped)?;
        match tokio::time::timeout(PAGE_TIMEOUT, answer).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(DirectoryError::Page(e)),
            Ok(Err(_)) => Err(DirectoryError::Stopped),
            Err(_) => Err(DirectoryError::Timeout),
        }
    }

    /// Reads the contacts WhatsApp Web knows and stores them in place of the last sync's.
    pub async fn sync_contacts(&self) -> Result<(usize, Timestamp), DirectoryError> {
        let contacts = merge(self.ask(|reply| Command::Contacts { reply }).await?);
        // Kept to the millisecond, as stored.
        let at = Timestamp::from_millisecond(Timestamp::now().as_millisecond())
            .unwrap_or_else(|_| Timestamp::now());
        self.outbox.database(|db| store::replace_contacts(db, &contacts, at))?;
        tracing::info!(contacts = contacts.len(), "contacts synced");
        Ok((contacts.len(), at))
    }

    /// Up to `limit` contacts of the last sync from `cursor` on.
    pub fn contacts(&self, cursor: Option<u64>, limit: usize) -> Result<ContactsPage, StoreError> {
        self.outbox.database(|db| store::contacts(db, cursor, limit))
    }

    /// The fresh checks of `numbers` (digits) in the store.
    fn known(&self, numbers: &[&str]) -> Result<HashMap<String, Checked>, StoreError> {
        let since = Timestamp::now() - FRESH_FOR;
        Ok(self.outbox.database(|db| store::checked(db, numbers, since))?.into_iter().collect())
    }

    /// Whether each of `given` is on WhatsApp: from the store, else checked through the page
    /// (first in line), waiting at most `wait`; `pending` for those not reached by then.
    pub async fn check(&self, given: &[String], wait: Duration) -> Result<Vec<NumberResult>, StoreError> {
        let digits: Vec<Option<String>> = given.iter().map(|n| whatsapp_crds::normalize_phone(n)).collect();
        let mut seen = HashSet::new();
        let wanted: Vec<&str> =
            digits.iter().flatten().map(String::as_str).filter(|d| seen.insert(*d)).collect();
        // Subscribed before reading the store: no check stored in between is missed.
        let mut stored = self.checks.stored();
        let mut known = self.known(&wanted)?;
        let missing: Vec<String> =
            wanted.iter().filter(|d| !known.contains_key(**d)).map(|d| d.to_string()).collect();
        if !missing.is_empty() {
            self.checks.first(&missing);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let remaining: Vec<&str> =
                    missing.iter().map(String::as_str).filter(|d| !known.contains_key(*d)).collect();
                if remaining.is_empty() {
                    break;
                }
                tokio::select! {
                    changed = stored.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                known.extend(self.known(&remaining)?);
            }
        }
        Ok(given
            .iter()
            .zip(&digits)
            .map(|(number, digits)| result(number, digits.as_deref(), &known))
            .collect())
    }
}

fn result(number: &str, digits: Option<&str>, known: &HashMap<String, Checked>) -> NumberResult {
    let (status, check) = match digits.map(|d| known.get(d)) {
        None => (NumberStatus::Invalid, None),
        Some(None) => (NumberStatus::Pending, None),
        Some(Some(c)) if c.exists => (NumberStatus::OnWhatsapp, Some(c)),
        Some(Some(c)) => (NumberStatus::NotOnWhatsapp, Some(c)),
    };
    NumberResult {
        number: number.to_string(),
        status,
        lid: check.and_then(|c| c.lid.clone()),
        checked_at: check.map(|c| c.checked_at),
    }
}

#[cfg(test)]
mod tests;
