//! Keyset pages: the cursor a page hands on (its last entry's time and unique key,
//! written `<microseconds since 1970>.<key>`) and the cut of a page read one row long.
//! The audit records page by (time, number), FHIR searches by (time, id); both read
//! `limit + 1` rows, and the extra one says there is a next page.

use chrono::{DateTime, Utc};
use std::fmt::Display;

/// What follows the time in a cursor: an entry's unique key, in one written form.
pub trait Key: Copy + Display + Sized {
    fn from_text(text: &str) -> Option<Self>;
}

impl Key for i64 {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl Key for uuid::Uuid {
    fn from_text(text: &str) -> Option<Self> {
        super::params::hyphenated_uuid(text)
    }
}

/// The place after which a page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor<K> {
    pub at: DateTime<Utc>,
    pub key: K,
}

impl<K: Key> Cursor<K> {
    /// A cursor as [`Cursor::text`] writes it: the microseconds a plain decimal of at
    /// most 18 digits (a sign allowed), at a time the ledger stores
    /// ([`lis_domain::services::storable`], so the database can compare with it).
    pub fn parse(text: &str) -> Option<Self> {
        let (micros, key) = text.split_once('.')?;
        Some(Self {
            at: time(micros)?,
            key: K::from_text(key)?,
        })
    }

    pub fn text(&self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.key)
    }
}

/// A time as a cursor writes it: microseconds since 1970 as a plain decimal of at most 18
/// digits (a sign allowed), at a time the ledger stores.
pub fn time(micros: &str) -> Option<DateTime<Utc>> {
    let digits = micros.strip_prefix('-').unwrap_or(micros);
    if !(1..=18).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    lis_domain::services::storable(&at).then_some(at)
}

/// A page of `rows` read `limit` + 1 long: its first `limit`, and the cursor of the next
/// page (`key` of the last of them) if the extra row showed there is one.
pub fn page<T, K>(
    mut rows: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> Cursor<K>,
) -> (Vec<T>, Option<Cursor<K>>) {
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(key);
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_the_database_cannot_hold() {
        let at = DateTime::parse_from_rfc3339("2026-03-03T10:15:30.123456Z")
            .unwrap()
            .to_utc();
        let c = Cursor { at, key: 42i64 };
        assert_eq!(Cursor::parse(&c.text()), Some(c));
        let early = DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let c = Cursor {
            at: early,
            key: 1i64,
        };
        assert_eq!(Cursor::parse(&c.text()), Some(c));
        for bad in [
            "-300000000000000000.1",
            "999999999999999999.1",
            "1.x",
            "x.1",
            "17",
            "",
        ] {
            assert_eq!(Cursor::<i64>::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_page_read_one_long_says_where_the_next_starts() {
        let at = DateTime::from_timestamp_micros(0).unwrap();
        let key = |n: &i64| Cursor { at, key: *n };
        assert_eq!(page(vec![1i64, 2], 2, key), (vec![1, 2], None));
        assert_eq!(page(vec![1i64, 2, 3], 2, key), (vec![1, 2], Some(key(&2))));
    }
}
