//! Phone numbers as the API takes them: one rule for the hub, the session pod and the CRD's
//! `pairing.phoneNumber` (whose CEL rule checks the normalized form, `^[0-9]{8,15}$`).

/// A phone number in international format: 8 to 15 digits, country code first; a leading `+`,
/// spaces and dashes are ignored. `None` when it is not one.
pub fn normalize_phone(given: &str) -> Option<String> {
    let digits: String =
        given.trim().trim_start_matches('+').chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    ((8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::normalize_phone;

    #[test]
    fn numbers_are_normalized_or_refused() {
        for (given, expected) in [
            ("5491155550000", Some("5491155550000")),
            ("+54 9 11 5555-0000", Some("5491155550000")),
            (" 12345678 ", Some("12345678")),
            ("123456789012345", Some("123456789012345")),
            ("1234567", None),
            ("1234567890123456", None),
            ("", None),
            ("+", None),
            ("54911abc0000", None),
            ("54(11)55550000", None),
            ("５４９１１５５５５００００", None),
        ] {
            assert_eq!(normalize_phone(given).as_deref(), expected, "{given:?}");
        }
    }
}
