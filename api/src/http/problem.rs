//! RFC 9457 problem details: every error the API returns.
//!
//! One type says what went wrong and where: `type` is a stable URI per kind of problem
//! (`…/problems/domain-rule`), `rule` names the lab rule that refused a command
//! (`result.four-eyes`), and `errors` lists every offending field by JSON-pointer path.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lis_commands::CommandError;
use lis_domain::validation::FieldError;
use serde::Serialize;

const BASE: &str = "https://lisledger.example/problems/";

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The problem type's slug; serialised as the full type URI.
    #[serde(rename = "type", serialize_with = "type_uri")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// The record a command that may or may not be stored was for (`outcome-unknown`),
    /// that changed since (`precondition-failed`) or whose order was busy (`contended`):
    /// `{"type": "Order", "id": "…"}`, to read before sending the command again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<Record>>,
    #[serde(skip)]
    pub retry_after: Option<u16>,
}

/// A record the ledger keeps: an aggregate's type and id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    /// Where its latest event landed (`precondition-failed`): read it with at least this
    /// `min_position` to see it as it is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

fn type_uri<S: serde::Serializer>(kind: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{BASE}{kind}"))
}

/// One offending field: a JSON pointer (`/patient/mrn`) and what is wrong with it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldProblem {
    pub pointer: String,
    pub detail: String,
}

impl From<&FieldError> for FieldProblem {
    fn from(e: &FieldError) -> Self {
        Self {
            pointer: pointer(&e.field),
            detail: e.message.clone(),
        }
    }
}

/// `patient/mrn` or `patient.mrn` → `/patient/mrn`.
pub fn pointer(path: &str) -> String {
    let p = path.replace('.', "/");
    if p.is_empty() {
        String::new()
    } else if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    }
}

/// The JSON pointer (RFC 6901) of the place serde stopped at: array items by index,
/// member names escaped (a name may hold `.`, `/` or `~`). It ends at the deepest
/// segment serde could name: inside a value serde read whole first (an internally
/// tagged enum), at that value.
pub fn path_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", pointer_token(key))),
            Segment::Enum { variant } => out.push_str(&format!("/{}", pointer_token(variant))),
            Segment::Unknown => break,
        }
    }
    out
}

/// The problem serde found at `path`, saying `message`: a member missing from an object
/// (`in_object`: the value at `path` is one) is named by its own pointer (`/patient`),
/// not its parent's.
pub fn serde_problem(
    path: &serde_path_to_error::Path,
    message: String,
    in_object: bool,
) -> FieldProblem {
    let mut pointer = path_pointer(path);
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
        .filter(|_| in_object)
    {
        pointer.push_str(&format!("/{}", pointer_token(name)));
    }
    FieldProblem {
        pointer,
        detail: message,
    }
}

/// A member name as one JSON pointer token (RFC 6901: `~` is `~0`, `/` is `~1`).
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: None,
            rule: None,
            errors: Vec::new(),
            record: None,
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "The request body is not valid JSON",
        )
        .detail(detail)
    }

    /// A request header holds a value the API cannot use; `detail` names the header.
    pub fn bad_header(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-header",
            "A request header is not valid",
        )
        .detail(detail)
    }

    pub fn invalid(errors: Vec<FieldProblem>) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request has invalid fields",
        );
        p.errors = errors;
        p
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication is required",
        )
        .detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Your role may not do this",
        )
        .detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource").detail(detail)
    }

    pub fn conflict(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, title).detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A dependency is unavailable; retry shortly",
        )
        .detail(detail);
        p.retry_after = Some(2);
        p
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail("the error was logged; quote the request id when reporting it")
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid { rule, errors } => {
                let mut p = Problem::invalid(errors.0.iter().map(FieldProblem::from).collect());
                p.rule = Some(rule);
                p
            }
            CommandError::Rejected { rule, message } => {
                let mut p = Problem::conflict(
                    "domain-rule",
                    "A rule of the lab refuses this command",
                    message,
                );
                p.rule = Some(rule);
                p
            }
            CommandError::NotFound(m) => Problem::not_found(m),
            CommandError::Conflict { .. } => {
                let mut p = Problem::conflict(
                    "concurrent-change",
                    "Someone changed this record at the same time",
                    format!("{e}"),
                );
                p.rule = Some("concurrency");
                p
            }
            CommandError::Stale {
                aggregate_type,
                ref aggregate_id,
                position,
                ..
            } => {
                let mut p = Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition-failed",
                    "The record has changed since the version you acted on",
                )
                .detail(e.to_string());
                p.record = Some(Box::new(Record {
                    kind: aggregate_type,
                    id: aggregate_id.clone(),
                    position,
                }));
                p
            }
            CommandError::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                Problem::unavailable("the database is unavailable")
            }
            CommandError::Contended {
                aggregate_type,
                aggregate_id,
                message,
            } => {
                tracing::warn!(error = %message, aggregate_type, aggregate_id, "command contended");
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "contended",
                    "Other commands on this order kept changing what this one depends on",
                )
                .detail(message);
                p.record = Some(Box::new(Record {
                    kind: aggregate_type,
                    id: aggregate_id,
                    position: None,
                }));
                p.retry_after = Some(1);
                p
            }
            CommandError::OutcomeUnknown {
                aggregate_type,
                aggregate_id,
                message,
            } => {
                tracing::warn!(
                    error = %message,
                    aggregate_type,
                    aggregate_id,
                    "a command's write went out and its answer was lost"
                );
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome-unknown",
                    "The command may or may not have been stored",
                )
                .detail(
                    "a write reached the database but its answer was lost, or a part of the request was stored before the \
                     database stopped answering: retry with the same Idempotency-Key, or read the record before sending it again",
                );
                p.record = Some(Box::new(Record {
                    kind: aggregate_type,
                    id: aggregate_id,
                    position: None,
                }));
                p.retry_after = Some(2);
                p
            }
            CommandError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Problem::internal()
            }
        }
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Problem::from(CommandError::from(e))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after;
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contended_command_is_a_503_to_send_again_naming_its_record_not_an_outage() {
        let p = Problem::from(CommandError::Contended {
            aggregate_type: "Result",
            aggregate_id: "r-1".into(),
            message: "other commands on this order changed …".into(),
        });
        assert_eq!(p.status, 503);
        assert_eq!(p.kind, "contended");
        assert_eq!(p.retry_after, Some(1));
        let record = p.record.expect("the record is named");
        assert_eq!((record.kind, record.id.as_str()), ("Result", "r-1"));
        assert!(p
            .detail
            .is_some_and(|d| d.starts_with("other commands on this order")));
    }
}
