//! What a command's rules read of the other records of its order, checked again at its
//! append.
//!
//! An order, its tubes and their results are separate records, each with its own
//! sequence: two commands on one record collide on the store's primary key, but a
//! cancellation of a test (which looks for a release of its results) and the release of
//! its result (which looks for a cancellation of its test) touch two records, and each
//! could read the other's before it was written, so that both passed. While a command is
//! decided, each look-up of an order or a tube notes the version it found, and a look-up
//! of an order's releases their number (of the test it asked about, or of all). The
//! append then takes the order's turn (an advisory lock held until it commits, class
//! [`ORDER_TURN_LOCK`], key `hashtext(order id)`: migration 0016) and looks again at
//! each: if one changed, it writes nothing ([`ReadChanged`]) and the ledger decides the
//! command again on what is now stored. So the rules across an order's records hold in
//! the order of the log.

use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static READS: Reads;
}

/// The advisory-lock class of an order's turn to append (second key: `hashtext` of the
/// order id).
pub const ORDER_TURN_LOCK: i32 = 7_302_423;

/// One thing a command's rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A record (`Order`, `Sample`) at a version (0: not there).
    Record {
        aggregate_type: &'static str,
        id: String,
        version: i64,
    },
    /// How many releases (`ResultAuthorised`) of an order's results there were, of one
    /// test or (`None`) of all.
    Releases {
        order: String,
        test: Option<String>,
        count: i64,
    },
}

/// The reads of one attempt at a command.
#[derive(Debug, Default, Clone)]
pub struct Reads(Arc<Mutex<Vec<Read>>>);

impl Reads {
    /// Runs `decide` noting what it reads here.
    pub async fn during<F: Future>(&self, decide: F) -> F::Output {
        READS.scope(self.clone(), decide).await
    }

    /// What was noted, in the order it was read.
    pub fn taken(&self) -> Vec<Read> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Notes `read` for the running command (nothing outside one).
pub fn note(read: Read) {
    let _ = READS.try_with(|r| r.0.lock().unwrap_or_else(|p| p.into_inner()).push(read));
}

/// A command's append in its order's turn, with what its rules read.
#[derive(Debug, Clone)]
pub struct InTurn {
    pub order: String,
    pub reads: Vec<Read>,
}

impl InTurn {
    /// The reads as the store's function takes them: kinds, ids, tests, versions.
    pub(crate) fn columns(&self) -> Columns<'_> {
        let mut columns = Columns::default();
        for read in &self.reads {
            let (kind, id, test, version) = match read {
                Read::Record {
                    aggregate_type,
                    id,
                    version,
                } => (*aggregate_type, id.as_str(), None, *version),
                Read::Releases { order, test, count } => {
                    ("releases", order.as_str(), test.as_deref(), *count)
                }
            };
            columns.0.push(kind);
            columns.1.push(id);
            columns.2.push(test);
            columns.3.push(version);
        }
        columns
    }
}

/// [`InTurn::columns`]: kinds, ids, tests (of releases), versions.
#[derive(Debug, Default)]
pub(crate) struct Columns<'a>(
    pub Vec<&'a str>,
    pub Vec<&'a str>,
    pub Vec<Option<&'a str>>,
    pub Vec<i64>,
);

/// A record a command's rules read changed before its append (SQLSTATE `LIS01`): the
/// append wrote nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadChanged(pub String);

/// The SQLSTATE of [`ReadChanged`].
pub(crate) const READ_CHANGED: &str = "LIS01";
