//! The search parameters of the FHIR interface (`http::fhir`) and its paging: each
//! parameter checked to exactly the form its schema documents (a problem naming it
//! otherwise), and the links of a page (its cursor: `http::cursor`).

use super::cursor::Cursor;
use super::params::hyphenated_uuid;
use super::problem::FieldProblem;
use super::AppState;
use lis_domain::ids::PatientId;
use uuid::Uuid;

/// The largest `_count`, and the default.
const MAX_COUNT: u32 = 1_000;
const DEFAULT_COUNT: u32 = 100;

/// The `_page` parameter, or a problem at `/_page`.
pub(super) fn page_param(
    raw: Option<&str>,
    errors: &mut Vec<FieldProblem>,
) -> Option<Cursor<Uuid>> {
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

/// The `self` and `next` links of a search at `path` (its parameters but the page),
/// absolute where the server's public address is configured.
pub(super) fn links(
    s: &AppState,
    path: &str,
    page: Option<Cursor<Uuid>>,
    next: Option<Cursor<Uuid>>,
) -> (String, Option<String>) {
    let origin = s.public_url.as_deref().unwrap_or_default();
    let at = |c: Option<Cursor<Uuid>>| match c {
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
            key: hyphenated_uuid(id).unwrap(),
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
            assert_eq!(Cursor::<Uuid>::parse(&not), None, "{not}");
        }
        for not in ["2823", "2823-33", "-3", "123456789-0", "2823-x", " 2823-3"] {
            assert!(!loinc_form(not), "{not}");
        }
    }
}
