//! The session's contacts and number checks: the JSON of their routes (the session pod's
//! shapes, checked here before they travel).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::inbound::cursor;

/// The most numbers one check may carry.
pub const MAX_NUMBERS: usize = 1000;
/// The longest number accepted, in characters (`+`, spaces and dashes included).
const MAX_NUMBER_CHARS: usize = 32;

/// A contact WhatsApp Web knows: an entry of the phone's address book (`isMyContact`, with the
/// `name` saved there) or a WhatsApp user the account talked with (a `pushName` only).
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"number": "5491155550000", "lid": "123456789012345", "name": "Ana Pérez", "pushName": "Ana",
    "isBusiness": false, "isMyContact": true}))]
pub struct Contact {
    /// Phone number digits, when known.
    pub number: Option<String>,
    /// The LID's user part, when known.
    pub lid: Option<String>,
    /// The name in the phone's address book.
    pub name: Option<String>,
    /// The name the user gave themselves.
    pub push_name: Option<String>,
    #[serde(default)]
    pub is_business: bool,
    /// In the phone's address book.
    #[serde(default)]
    pub is_my_contact: bool,
}

/// A page of the contacts of the last sync, by name.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, deserialize_with = "cursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// When the contacts were synced (RFC 3339); null before the first sync.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub synced_at: Option<String>,
}

/// `GET /api/whatsapp/{clienteId}/contacts` paging.
#[derive(Deserialize, IntoParams, Debug, Default)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContactsQuery {
    /// The `nextCursor` of the previous page.
    #[param(min_length = 1, max_length = 20, pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
    /// Contacts per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// What the session pod answers a sync with.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Synced {
    pub count: u64,
    pub synced_at: String,
}

/// `POST /sync-contacts/sync`: the contacts were read from WhatsApp Web and stored.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"ok": true, "count": 212, "syncedAt": "2026-12-02T10:00:00Z"}))]
pub struct SyncResponse {
    pub ok: bool,
    /// Contacts stored (each person once).
    pub count: u64,
    #[schema(format = DateTime)]
    pub synced_at: String,
}

/// `POST /sync-contacts/sync`: an admin names the clienteId; a tenant's token does already.
#[derive(Deserialize, ToSchema, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequest {
    /// The tenant: a tenant's token names it already (it may be repeated, not changed); an
    /// admin must give it. `cliente_id` is accepted too.
    #[serde(default, alias = "cliente_id")]
    #[schema(minimum = 1, example = 51)]
    pub cliente_id: Option<i64>,
}

/// `POST /api/whatsapp/{clienteId}/numbers/check`.
#[derive(Deserialize, Serialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"numbers": ["5491155550000", "+54 9 11 5555-0001", "0001234567"]}))]
pub struct NumbersCheck {
    /// 1 to 1000 phone numbers, country code first (`+`, spaces and dashes are ignored).
    #[schema(min_items = 1, max_items = 1000)]
    pub numbers: Vec<String>,
}

impl NumbersCheck {
    /// The check as the pod takes it, or 400 `INVALID_NUMBERS`. A number that is not one is no
    /// reason to refuse the rest: it answers `invalid`.
    pub fn validated(self) -> Result<NumbersCheck, ApiError> {
        if self.numbers.is_empty() || self.numbers.len() > MAX_NUMBERS {
            return Err(ApiError::validation(
                "INVALID_NUMBERS",
                format!("`numbers` must hold 1 to {MAX_NUMBERS} numbers (it has {})", self.numbers.len()),
            ));
        }
        if let Some(index) = self.numbers.iter().position(|n| n.chars().count() > MAX_NUMBER_CHARS) {
            return Err(ApiError::invalid_at(
                index,
                "INVALID_NUMBERS",
                format!("numbers[{index}] is longer than {MAX_NUMBER_CHARS} characters"),
            ));
        }
        Ok(self)
    }
}

/// What is known of a number.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NumberStatus {
    OnWhatsapp,
    NotOnWhatsapp,
    /// Not a phone number (8 to 15 digits, country code first): WhatsApp was not asked.
    Invalid,
    /// Not checked yet (checks are paced, to keep the account safe): ask again later.
    Pending,
}

/// The answer for one number.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NumberResult {
    /// As given.
    #[schema(example = "5491155550000")]
    pub number: String,
    pub status: NumberStatus,
    /// The account's LID (its user part), when WhatsApp told it.
    pub lid: Option<String>,
    /// When WhatsApp was asked (answers are kept a day).
    #[schema(format = DateTime)]
    pub checked_at: Option<String>,
}

/// The answers, in the order the numbers were given.
#[derive(Deserialize, Serialize, ToSchema, Debug, Clone)]
#[schema(example = json!({"results": [
    {"number": "5491155550000", "status": "on_whatsapp", "lid": "123456789012345", "checkedAt": "2026-12-02T10:00:00Z"},
    {"number": "0001234567", "status": "not_on_whatsapp", "lid": null, "checkedAt": "2026-12-02T10:00:02Z"},
    {"number": "12", "status": "invalid", "lid": null, "checkedAt": null}]}))]
pub struct NumbersChecked {
    pub results: Vec<NumberResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_carry_1_to_1000_numbers_of_sane_length() {
        let check = |numbers: Vec<String>| NumbersCheck { numbers }.validated();
        assert!(check(vec!["12".into(), "+54 9 11 5555-0000".into()]).is_ok(), "bad numbers answer invalid");
        assert_eq!(check(vec![]).unwrap_err().code(), "INVALID_NUMBERS");
        assert_eq!(check(vec!["5491155550000".into(); 1001]).unwrap_err().code(), "INVALID_NUMBERS");
        assert!(check(vec!["5491155550000".into(); 1000]).is_ok());
        let long = check(vec!["1".into(), "9".repeat(33)]).unwrap_err();
        assert!(matches!(long, ApiError::Validation { index: Some(1), .. }), "{long:?}");
    }

    #[test]
    fn the_pods_pages_read_with_their_numeric_cursor() {
        let page: ContactPage = serde_json::from_str(
            r#"{"contacts": [{"number": "5491155550000", "lid": null, "name": "Ana", "pushName": null,
                "isBusiness": false, "isMyContact": true}], "nextCursor": 2, "syncedAt": "2026-12-02T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!((page.next_cursor.as_deref(), page.contacts[0].name.as_deref()), (Some("2"), Some("Ana")));
        let never: ContactPage =
            serde_json::from_str(r#"{"contacts": [], "nextCursor": null, "syncedAt": null}"#).unwrap();
        assert_eq!(
            serde_json::to_value(never).unwrap(),
            serde_json::json!({"contacts": [], "syncedAt": null})
        );
    }
}
