//! Reading request bodies: malformed JSON is a 400; JSON of the wrong shape or with an
//! invalid value is a 422 naming the field by JSON pointer.

use super::problem::{pointer_token, serde_problem, FieldProblem, Problem};
use serde::de::DeserializeOwned;

/// Parses `bytes` as `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(e.to_string()))?;
    if !value.is_object() {
        return Err(Problem::bad_request("the body must be a JSON object"));
    }
    // JSON carries a NUL only escaped (a raw one is malformed, above): walk the value
    // for its place only when the text holds the escape.
    let escaped_nul = bytes.windows(6).any(|w| w == br"\u0000");
    if let Some(at) = escaped_nul.then(|| nul_at(&value, String::new())).flatten() {
        return Err(Problem::invalid(vec![FieldProblem {
            pointer: at,
            detail: "text must not contain the NUL character (\\u0000)".into(),
        }]));
    }
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().clone();
        let in_object = value
            .pointer(&super::problem::path_pointer(&path))
            .is_some_and(serde_json::Value::is_object);
        Problem::invalid(vec![serde_problem(
            &path,
            clean(&e.into_inner().to_string()),
            in_object,
        )])
    })
}

/// The JSON pointer of the first string (or key) holding U+0000, which PostgreSQL can
/// store in neither text nor jsonb.
fn nul_at(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}/{i}"))),
        Value::Object(members) => members.iter().find_map(|(k, v)| {
            let here = format!("{at}/{}", pointer_token(k));
            if k.contains('\0') {
                Some(here)
            } else {
                nul_at(v, here)
            }
        }),
        _ => None,
    }
}

/// serde's messages, without the Rust type names a lab user cannot act on.
pub(super) fn clean(message: &str) -> String {
    message
        .replace("invalid type: ", "wrong type: ")
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lis_domain::text::Reason;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Amend {
        reason: Reason,
        value: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        unit: String,
    }

    #[test]
    fn malformed_json_is_a_bad_request_and_bad_fields_are_named() {
        assert_eq!(parse::<Amend>(b"{not json").unwrap_err().status, 400);
        assert_eq!(parse::<Amend>(b"[1]").unwrap_err().status, 400);
        let p = parse::<Amend>(br#"{"reason": " ", "value": {"unit": "g/L"}}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].pointer, "/reason");
        assert!(
            p.errors[0].detail.contains("reason must not be empty"),
            "{:?}",
            p.errors
        );
        let p = parse::<Amend>(br#"{"reason": "typo", "value": {"unit": 5}}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/value/unit");
        let p = parse::<Amend>(br#"{"reason": "typo", "value": {"unit": "g\u0000"}}"#).unwrap_err();
        assert_eq!(
            (p.status, p.errors[0].pointer.as_str()),
            (422, "/value/unit")
        );
        // A missing member is named where it belongs; in what is not an object, the
        // place serde stopped at is.
        let p = parse::<Amend>(br#"{"reason": "typo", "value": {}}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/value/unit");
        let p = parse::<Amend>(br#"{"value": {"unit": "g/L"}}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/reason");
        let p = parse::<Amend>(br#"{"reason": "typo", "value": []}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/value", "{:?}", p.errors);
    }
}
