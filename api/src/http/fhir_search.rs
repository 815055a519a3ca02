//! The search parameters of the FHIR interface (`http::fhir`) and its paging: each
//! parameter checked to exactly the form its schema documents (a problem naming it
//! otherwise), and the cursor a Bundle's `next` link carries.

use super::problem::FieldProblem;
use super::AppState;
use lis_domain::ids::PatientId;

/// The largest `_count`, and the default.
const MAX_COUNT: u32 = 1_000;
const DEFAULT_COUNT: u32 = 100;

/// Where a page starts: after the entry with this sort key (a time and an id, in the
/// search's descending order), written `<microseconds since 1970>.<uuid>` in the
/// `_page` parameter of a Bundle's `next` link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Cursor {
    pub(super) at: chrono::DateTime<chrono::Utc>,
    pub(super) id: uuid::Uuid,
}

impl Cursor {
    pub(super) fn parse(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('.')?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        if !(1..=18).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let micros: i64 = micros.parse().ok()?;
        let at = chrono::DateTime::from_timestamp_micros(micros)?;
        // Years any collection or order time can have; PostgreSQL's timestamptz holds
        // 4713 BC to 294276 AD, and a cursor outside that range would fail the query.
        if !(1..=9999).contains(&chrono::Datelike::year(&at)) {
            return None;
        }
        Some(Self {
            at,
            id: hyphenated_uuid(id)?,
        })
    }

    pub(super) fn text(&self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.id)
    }
}

/// The `_page` parameter, or a problem at `/_page`.
pub(super) fn page_param(raw: Option<&str>, errors: &mut Vec<FieldProblem>) -> Option<Cursor> {
    let raw = raw?;
    let cursor = Cursor::parse(raw);
    if cursor.is_none() {
        errors.push(FieldProblem {
            pointer: "/_page".into(),
            detail: "_page must be as a Bundle's next link gives it".into(),
        });
    }
    cursor
}

/// `rows` as fetched with one more than `count`: the page, and the cursor of the next
/// page if that one more came.
pub(super) fn page_of<T>(
    mut rows: Vec<T>,
    count: u32,
    key: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<Cursor>) {
    let count = count as usize;
    if rows.len() <= count {
        return (rows, None);
    }
    rows.truncate(count);
    let next = rows.last().map(key);
    (rows, next)
}

/// The `self` and `next` links of a search at `path` (its parameters but the page),
/// absolute where the server's public address is configured.
pub(super) fn links(
    s: &AppState,
    path: &str,
    page: Option<Cursor>,
    next: Option<Cursor>,
) -> (String, Option<String>) {
    let origin = s.public_url.as_deref().unwrap_or_default();
    let at = |c: Option<Cursor>| match c {
        Some(c) => format!("{origin}{path}&_page={}", c.text()),
        None => format!("{origin}{path}"),
    };
    (at(page), next.map(|n| at(Some(n))))
}

/// A patient as `GET /fhir/Observation` takes them: the ledger's id, hyphenated, bare or
/// as a FHIR reference.
pub(super) const PATIENT_PATTERN: &str =
    "^(Patient/)?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";
/// A LOINC code (digits, a hyphen, a check digit), bare or with its system.
pub(super) const CODE_PATTERN: &str = r"^(http://loinc\.org\|)?[0-9]{1,8}-[0-9]$";

/// The `Observation.status` codes a result can have ([`fhir::observation_status`]).
pub(super) const STATUSES: [&str; 6] = [
    "preliminary",
    "registered",
    "final",
    "amended",
    "cancelled",
    "entered-in-error",
];
pub(super) const STATUS_PATTERN: &str = "^(preliminary|registered|final|amended|cancelled|entered-in-error)(,(preliminary|registered|final|amended|cancelled|entered-in-error))*$";

/// The form of a `_page` cursor.
pub(super) const PAGE_PATTERN: &str =
    "^-?[0-9]{1,18}\\.[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// The UUID in `id` if it is written as 8-4-4-4-12 hexadecimal digits, nothing else
/// (the parser would also take braces, a URN or no hyphens, which the pattern does not).
pub(super) fn hyphenated_uuid(id: &str) -> Option<uuid::Uuid> {
    let shape = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    shape.then(|| uuid::Uuid::parse_str(id).ok()).flatten()
}

/// Whether `code` is a LOINC code's form: 1 to 8 digits, a hyphen, a check digit.
pub(super) fn loinc_form(code: &str) -> bool {
    code.split_once('-').is_some_and(|(number, check)| {
        (1..=8).contains(&number.len())
            && number.bytes().all(|b| b.is_ascii_digit())
            && check.len() == 1
            && check.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The `patient` parameter as an id, else a problem at `/patient` in `errors`.
pub(super) fn patient_param(raw: &str, errors: &mut Vec<FieldProblem>) -> Option<PatientId> {
    let patient =
        hyphenated_uuid(raw.strip_prefix("Patient/").unwrap_or(raw)).map(PatientId::from_uuid);
    if patient.is_none() {
        errors.push(FieldProblem {
            pointer: "/patient".into(),
            detail: "patient must be the ledger's patient id: a UUID (8-4-4-4-12 hexadecimal digits), or Patient/<uuid>".into(),
        });
    }
    patient
}

/// The `_count` parameter (default [`DEFAULT_COUNT`]), or a problem at `/_count`.
pub(super) fn count_param(count: Option<u32>, errors: &mut Vec<FieldProblem>) -> u32 {
    let count = count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        errors.push(FieldProblem {
            pointer: "/_count".into(),
            detail: format!("_count must be 1 to {MAX_COUNT}"),
        });
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_is_a_hyphenated_uuid_and_a_code_is_a_loinc_code() {
        let id = "0b4a9a5e-1111-4c3a-9d7e-2d2c4c9a0002";
        assert!(hyphenated_uuid(id).is_some());
        for not in [
            "0b4a9a5e11114c3a9d7e2d2c4c9a0002",
            "{0b4a9a5e-1111-4c3a-9d7e-2d2c4c9a0002}",
            " 0b4a9a5e-1111-4c3a-9d7e-2d2c4c9a0002",
            "0b4a9a5e-1111-4c3a-9d7e-2d2c4c9a000g",
        ] {
            assert_eq!(hyphenated_uuid(not), None, "{not}");
        }
        assert!(loinc_form("2823-3") && loinc_form("1-8") && loinc_form("12345678-9"));
        let cursor = Cursor {
            at: "2026-03-03T09:30:00.123456Z".parse().unwrap(),
            id: hyphenated_uuid(id).unwrap(),
        };
        assert_eq!(Cursor::parse(&cursor.text()), Some(cursor));
        for not in [
            format!("+1.{id}"),
            format!("-618541192078856786.{id}"),
            format!("999999999999999999.{id}"),
            format!("1234567890123456789.{id}"),
            format!("1.{}", &id[1..]),
            "1".to_string(),
            format!(".{id}"),
        ] {
            assert_eq!(Cursor::parse(&not), None, "{not}");
        }
        for not in ["2823", "2823-33", "-3", "123456789-0", "2823-x", " 2823-3"] {
            assert!(!loinc_form(not), "{not}");
        }
    }
}
