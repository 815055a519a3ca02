//! Reading query strings: a parameter of the wrong form is a 422 naming it (JSON pointer
//! `/name`), as a body field is (the framework's `Query` answered a bare 400), and a NUL
//! character, which PostgreSQL can store in no text, is refused the same way.

use super::body::clean;
use super::problem::{pointer_token, serde_problem, FieldProblem, Problem};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The request's query parameters as `T`.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parse(parts.uri.query().unwrap_or_default()).map(Params)
    }
}

/// Parses a query string (without its `?`) as `T`.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    let pairs = form_urlencoded::parse(query.as_bytes());
    if let Some((name, _)) = pairs
        .clone()
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(Problem::invalid(vec![FieldProblem {
            pointer: format!("/{}", pointer_token(&name)),
            detail: "text must not contain the NUL character (%00)".into(),
        }]));
    }
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let path = e.path().clone();
        // A query string is one object of parameters.
        Problem::invalid(vec![serde_problem(
            &path,
            clean(&e.into_inner().to_string()),
            true,
        )])
    })
}

/// Rows an answer carries unless its `limit` parameter says otherwise, and at most
/// (`GET /worklists`, the audit pages).
pub const DEFAULT_LIMIT: u32 = 1_000;
pub const MAX_LIMIT: u32 = 10_000;

/// A `limit` parameter as a row count, or the problem at `/limit`.
pub fn limit(value: Option<u32>) -> Result<i64, FieldProblem> {
    let limit = value.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(i64::from(limit))
    } else {
        Err(FieldProblem {
            pointer: "/limit".into(),
            detail: format!("limit must be 1 to {MAX_LIMIT}"),
        })
    }
}

/// The UUID in `id` if it is written as 8-4-4-4-12 hexadecimal digits, nothing else
/// (the parser would also take braces, a URN or no hyphens, which the pattern does not).
pub fn hyphenated_uuid(id: &str) -> Option<uuid::Uuid> {
    let shape = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    shape.then(|| uuid::Uuid::parse_str(id).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Range {
        from: NaiveDate,
        department: Option<String>,
    }

    fn only_problem(p: &Problem) -> (String, String) {
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["status"], 422, "{v}");
        (
            v["errors"][0]["pointer"].as_str().unwrap().to_string(),
            v["errors"][0]["detail"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn a_parameter_of_the_wrong_form_is_named() {
        let p = parse::<Range>("from=17%2F05%2F2026").unwrap_err();
        let (pointer, detail) = only_problem(&p);
        assert_eq!(pointer, "/from");
        assert!(detail.contains("input"), "{detail}");
    }

    #[test]
    fn a_nul_character_is_refused_and_named() {
        let p = parse::<Range>("from=2026-05-17&department=BIO%00CHEM").unwrap_err();
        let (pointer, detail) = only_problem(&p);
        assert_eq!(pointer, "/department");
        assert!(detail.contains("NUL"), "{detail}");
    }

    #[test]
    fn a_missing_parameter_is_named_by_its_own_pointer() {
        let p = parse::<Range>("department=BIOCHEMISTRY").unwrap_err();
        let (pointer, detail) = only_problem(&p);
        assert_eq!(
            (pointer.as_str(), detail.as_str()),
            ("/from", "missing field `from`")
        );
    }

    #[test]
    fn good_parameters_read_as_their_types() {
        let r = parse::<Range>("from=2026-05-17&department=BIOCHEMISTRY").unwrap();
        assert_eq!(r.from, NaiveDate::from_ymd_opt(2026, 5, 17).unwrap());
        assert_eq!(r.department.as_deref(), Some("BIOCHEMISTRY"));
        assert!(parse::<Range>("").is_err());
    }
}
