//! The one error type of the command boundary.
//!
//! It sorts every failure into what the caller should do about it: fix the input
//! ([`CommandError::Invalid`], HTTP 422), respect a rule of the lab
//! ([`CommandError::Rejected`], 409), name something that exists
//! ([`CommandError::NotFound`], 404), retry on fresh state ([`CommandError::Conflict`],
//! 409), read the record again ([`CommandError::Stale`], 412), wait for a dependency
//! ([`CommandError::Unavailable`], 503), send it again shortly
//! ([`CommandError::Contended`], 503), or report a defect ([`CommandError::Internal`],
//! 500).

use cqrs_es::AggregateError;
use lis_domain::error::DomainError;
use lis_domain::validation::FieldErrors;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{rule}: {errors}")]
    Invalid {
        rule: &'static str,
        errors: FieldErrors,
    },
    #[error("{rule}: {message}")]
    Rejected { rule: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("concurrent change to {aggregate_type} {aggregate_id}: reload and retry")]
    Conflict {
        aggregate_type: &'static str,
        aggregate_id: String,
    },
    /// The record has changed since the version the caller acted on: it was at another
    /// version when the command looked (`current`), or another command changed it while
    /// this one ran (`None`).
    #[error("{aggregate_type} {aggregate_id} {}, not at version {expected} as the command expected: read it again", match current { Some(v) => format!("is at version {v}"), None => "was changed while the command ran".to_string() })]
    Stale {
        aggregate_type: &'static str,
        aggregate_id: String,
        expected: i64,
        current: Option<i64>,
        /// Where the record's latest event landed, when it could be read: a read model
        /// asked for it (`min_position`) shows the record as it is now.
        position: Option<i64>,
    },
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    /// Other commands on the record's order kept changing what this one's rules read
    /// before each of its attempts to append: nothing was stored; send it again shortly.
    #[error("{message}")]
    Contended {
        aggregate_type: &'static str,
        aggregate_id: String,
        message: String,
    },
    /// The command's write went out and its answer was lost (the database fell silent,
    /// or the connection broke), or a request of several commands stopped part-way
    /// (aliquots): some or all of it may be stored.
    #[error("the command on {aggregate_type} {aggregate_id} may or may not be stored: {message}")]
    OutcomeUnknown {
        aggregate_type: &'static str,
        aggregate_id: String,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl CommandError {
    pub(crate) fn from_aggregate<E: DomainError>(
        err: AggregateError<E>,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Self {
        match err {
            AggregateError::UserError(e) => {
                if let Some(errors) = e.field_errors() {
                    CommandError::Invalid {
                        rule: e.rule(),
                        errors: errors.clone(),
                    }
                } else if let Some(l) = e.lookup_failure() {
                    if l.unavailable {
                        CommandError::Unavailable(l.to_string())
                    } else {
                        CommandError::Internal(l.to_string())
                    }
                } else {
                    CommandError::Rejected {
                        rule: e.rule(),
                        message: e.to_string(),
                    }
                }
            }
            AggregateError::AggregateConflict => CommandError::Conflict {
                aggregate_type,
                aggregate_id: aggregate_id.to_string(),
            },
            AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e.to_string()),
            AggregateError::DeserializationError(e) => {
                CommandError::Internal(format!("unreadable event: {e}"))
            }
            AggregateError::UnexpectedError(e) => CommandError::Internal(e.to_string()),
        }
    }
}

/// Whether `e` is the database being away (unreachable, shutting down or starting up,
/// out of connections, the statement cancelled) rather than a defect: the caller should
/// come back later. Told by error kind and SQLSTATE class (08 connection exception, 53
/// insufficient resources, 57 operator intervention), never by message text. Class 57
/// includes 57014, a statement cancelled by `statement_timeout`: deliberately a 503, as
/// a database too busy to answer in time is overload, not a defect of the request.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| ["08", "53", "57"].iter().any(|class| c.starts_with(class))),
        _ => false,
    }
}

impl From<sqlx::Error> for CommandError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            CommandError::Unavailable(e.to_string())
        } else {
            CommandError::Internal(e.to_string())
        }
    }
}

impl From<crate::keys::KeyError> for CommandError {
    fn from(e: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError;
        match e {
            KeyError::Database(e) => e.into(),
            KeyError::Erased(_) => CommandError::Rejected {
                rule: "patient.erased",
                message: e.to_string(),
            },
            other => CommandError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lis_domain::result::ResultError;
    use lis_domain::services::LookupError;

    fn from_lookup(e: LookupError) -> CommandError {
        CommandError::from_aggregate(
            AggregateError::UserError(ResultError::Lookup(e)),
            "Result",
            "r-1",
        )
    }

    #[test]
    fn a_lookup_the_store_could_not_answer_is_unavailable_and_a_wrong_answer_a_defect() {
        let away = from_lookup(LookupError::unavailable(
            "catalogue version: pool timed out",
        ));
        assert!(matches!(away, CommandError::Unavailable(_)), "{away:?}");
        let wrong = from_lookup(LookupError::defect("order o-1 of sample s-1 not found"));
        assert!(matches!(wrong, CommandError::Internal(_)), "{wrong:?}");
    }
}
