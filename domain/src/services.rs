//! What the aggregates may ask of the rest of the lab, and the policies they follow.
//!
//! An aggregate decides from its own events plus the answers of [`LabLookup`]: the
//! catalogue in force, another aggregate's current facts, a patient's previous released
//! result. The `commands` crate answers from the event store; tests answer from memory.

use crate::catalogue::Catalogue;
use crate::flags::PreviousResult;
use crate::ids::{AccessionNumber, OrderId, PatientId, ResultId, SampleId, TestCode};
use crate::order::OrderFacts;
use crate::patient::Age;
use crate::sample::SampleFacts;
use crate::sealed::Sealed;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A lookup could not be answered: the store is away for now ([`LookupError::unavailable`],
/// worth trying again later) or what it holds is wrong ([`LookupError::defect`], a
/// person must look).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lookup failed: {message}")]
pub struct LookupError {
    pub message: String,
    /// Whether the store was away, rather than a defect.
    pub unavailable: bool,
}

impl LookupError {
    /// The store (or what it needs, such as an imported catalogue) is not there yet.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: true,
        }
    }

    /// The store answered, but with something that cannot be right.
    pub fn defect(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: false,
        }
    }
}

/// Per-lab rules that a lab may configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabPolicy {
    /// The same person may not both verify and authorise a result (on by default).
    pub four_eyes: bool,
    /// The lab's own clock, whose calendar days count: a patient's age on the day of
    /// collection, and whether a date of birth is in the future (UTC by default).
    pub time_zone: chrono_tz::Tz,
}

impl LabPolicy {
    /// The lab's calendar day at `at`.
    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.time_zone).date_naive()
    }
}

impl Default for LabPolicy {
    fn default() -> Self {
        Self {
            four_eyes: true,
            time_zone: chrono_tz::UTC,
        }
    }
}

/// The questions an aggregate may ask while deciding a command.
#[async_trait]
pub trait LabLookup: Send + Sync {
    /// The catalogue version in force now.
    async fn catalogue(&self) -> Result<Arc<Catalogue>, LookupError>;
    async fn order(&self, id: OrderId) -> Result<Option<OrderFacts>, LookupError>;
    async fn sample(&self, id: SampleId) -> Result<Option<SampleFacts>, LookupError>;
    /// Whether an accession number is already on a sample of this lab.
    async fn accession_in_use(&self, accession: &AccessionNumber) -> Result<bool, LookupError>;
    /// The patient's most recent released numeric result of `test` collected before
    /// `before`, if it is in `unit`: a value in another unit (the catalogue changed the
    /// test's unit since) is no comparison for a delta check.
    async fn previous_released(
        &self,
        patient: PatientId,
        test: &TestCode,
        unit: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<PreviousResult>, LookupError>;
    /// The patient's age at `at`, from their sealed identity; `None` once the patient has
    /// been erased (the key that opens the identity is gone).
    async fn age_at(
        &self,
        patient: PatientId,
        identity: &Sealed,
        at: DateTime<Utc>,
    ) -> Result<Option<Age>, LookupError>;
    /// Tests of an order that have (or had) a released result.
    async fn released_tests(&self, order: OrderId) -> Result<BTreeSet<TestCode>, LookupError>;
    /// When the result's current value was stored (its last recording, correction or
    /// amendment), by the store's clock; `None` if it has none.
    async fn value_stored_at(&self, result: ResultId)
        -> Result<Option<DateTime<Utc>>, LookupError>;
    /// The results of `test` on `order` released now (not retracted since).
    async fn released_results(
        &self,
        order: OrderId,
        test: &TestCode,
    ) -> Result<Vec<ResultId>, LookupError>;
    fn policy(&self) -> LabPolicy;
    fn now(&self) -> DateTime<Utc>;
}

/// The services every aggregate of this crate receives.
#[derive(Clone)]
pub struct LabServices(pub Arc<dyn LabLookup>);

impl LabServices {
    pub fn new(lookup: Arc<dyn LabLookup>) -> Self {
        Self(lookup)
    }
}

impl std::ops::Deref for LabServices {
    type Target = dyn LabLookup;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// How far in the future a stated time (collection, receipt, call) may be: clock skew
/// between a ward PC and the server, nothing more.
pub const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// The years a time may fall in: the read models and the audit queries keep times as
/// PostgreSQL timestamps, which end before 4713 BC, while JSON and chrono take any year
/// to ±262,143. A time outside them would be stored in an event that no read model
/// could then apply.
pub const STORABLE_YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// Whether `at` falls in [`STORABLE_YEARS`].
pub fn storable(at: &chrono::DateTime<chrono::Utc>) -> bool {
    use chrono::Datelike;
    STORABLE_YEARS.contains(&at.year())
}

/// What is wrong with a time the lab states (collection, hand-over, receipt, a call), if
/// anything: outside [`STORABLE_YEARS`], or later than now plus [`CLOCK_SKEW`].
pub fn stated_time_problem(
    at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if !storable(&at) {
        Some(format!("{at} is not a time between the years 1 and 9999"))
    } else if at > now + CLOCK_SKEW {
        Some(format!("{at} is in the future"))
    } else {
        None
    }
}
