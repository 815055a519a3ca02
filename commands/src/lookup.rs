//! The aggregates' look-ups, answered from the event store.
//!
//! What a command's rules read of its order's other records (an order, a tube, the
//! order's releases) is noted for its append to check again ([`crate::reads`]).
//!
//! Another aggregate's facts come from loading that aggregate through the same event
//! store (snapshots and upcasters included), so they are exactly what its own commands
//! see. Accession numbers and released results are found through partial expression
//! indexes on the `events` table (migration 0001), so no side table can drift from the
//! trail. The catalogue is cached per version and reloaded when a new version appears.

use crate::catalogue::{self, CatalogueError};
use crate::connection::{connection, Conn};
use crate::error::is_unavailable;
use crate::keys::{KeyError, Opened, PatientVault};
use crate::ledger::EventStoreOf;
use crate::reads::{note, Read};
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use lis_domain::catalogue::{Catalogue, CatalogueVersion};
use lis_domain::flags::PreviousResult;
use lis_domain::ids::{AccessionNumber, OrderId, PatientId, ResultId, SampleId, TestCode};
use lis_domain::order::{Order, OrderFacts};
use lis_domain::patient::{Age, PatientIdentity};
use lis_domain::result::LabResult;
use lis_domain::sample::{Sample, SampleFacts};
use lis_domain::sealed::Sealed;
use lis_domain::services::{LabLookup, LabPolicy, LookupError};
use lis_domain::validation::FieldError;
use lis_domain::value::ResultValue;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

pub struct PgLabLookup {
    pool: PgPool,
    orders: EventStoreOf<Order>,
    samples: EventStoreOf<Sample>,
    results: EventStoreOf<LabResult>,
    vault: Arc<PatientVault>,
    policy: LabPolicy,
    clock: fn() -> DateTime<Utc>,
    cached: RwLock<Option<Arc<Catalogue>>>,
}

/// Whether an error is the store being away (see [`is_unavailable`]) or a defect.
trait Outage: std::fmt::Display {
    fn is_outage(&self) -> bool {
        false
    }
}

impl Outage for sqlx::Error {
    fn is_outage(&self) -> bool {
        is_unavailable(self)
    }
}

impl<E: std::error::Error> Outage for AggregateError<E> {
    fn is_outage(&self) -> bool {
        matches!(self, AggregateError::DatabaseConnectionError(_))
    }
}

impl Outage for KeyError {
    fn is_outage(&self) -> bool {
        matches!(self, KeyError::Database(e) if is_unavailable(e))
    }
}

impl Outage for CatalogueError {
    fn is_outage(&self) -> bool {
        matches!(self, CatalogueError::Database(e) if is_unavailable(e))
    }
}

impl Outage for uuid::Error {}
impl Outage for FieldError {}

/// A failed look-up of `what`, sorted by its cause.
fn failed(what: &str, e: impl Outage) -> LookupError {
    let message = format!("{what}: {e}");
    if e.is_outage() {
        LookupError::unavailable(message)
    } else {
        LookupError::defect(message)
    }
}

impl PgLabLookup {
    pub(crate) fn new(
        pool: PgPool,
        orders: EventStoreOf<Order>,
        samples: EventStoreOf<Sample>,
        results: EventStoreOf<LabResult>,
        vault: Arc<PatientVault>,
        policy: LabPolicy,
        clock: fn() -> DateTime<Utc>,
    ) -> Self {
        Self {
            pool,
            orders,
            samples,
            results,
            vault,
            policy,
            clock,
            cached: RwLock::new(None),
        }
    }

    /// Every release (`ResultAuthorised`) of the order's results, as (result id, test
    /// code), retracted ones included. The caller notes how many it relied on, for the
    /// command's append to count again (migration 0016 counts them the same way).
    async fn releases(&self, order: OrderId) -> Result<Vec<(String, String)>, LookupError> {
        let releases: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregate_id, payload -> 'ResultAuthorised' ->> 'test_code' FROM events
              WHERE event_type = 'ResultAuthorised' AND aggregate_type = 'Result'
                AND payload -> 'ResultAuthorised' ->> 'order_id' = $1",
        )
        .bind(order.to_string())
        .fetch_all(&mut *self.connection().await?)
        .await
        .map_err(|e| failed("released results", e))?;
        Ok(releases)
    }

    /// The running command's connection, or one of the pool's (`connection`).
    async fn connection(&self) -> Result<Conn, LookupError> {
        connection(&self.pool)
            .await
            .map_err(|e| failed("connection", e))
    }

    fn cached(&self, version: CatalogueVersion) -> Option<Arc<Catalogue>> {
        let guard = self.cached.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|c| c.version == version).cloned()
    }
}

#[async_trait::async_trait]
impl LabLookup for PgLabLookup {
    async fn catalogue(&self) -> Result<Arc<Catalogue>, LookupError> {
        let version = catalogue::current_version(&self.pool)
            .await
            .map_err(|e| failed("catalogue version", e))?
            .ok_or_else(|| {
                LookupError::unavailable(
                    "no catalogue has been imported (run `lisledger catalogue import`)",
                )
            })?;
        if let Some(c) = self.cached(version) {
            return Ok(c);
        }
        let loaded = Arc::new(
            catalogue::load(&self.pool, version)
                .await
                .map_err(|e| failed("catalogue", e))?,
        );
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        Ok(loaded)
    }

    async fn order(&self, id: OrderId) -> Result<Option<OrderFacts>, LookupError> {
        let mut ctx = self
            .orders
            .load_aggregate(&id.to_string())
            .await
            .map_err(|e| failed("order", e))?;
        note(Read::Record {
            aggregate_type: Order::TYPE,
            id: id.to_string(),
            version: ctx.current_sequence as i64,
        });
        Ok(ctx.aggregate().facts())
    }

    async fn sample(&self, id: SampleId) -> Result<Option<SampleFacts>, LookupError> {
        let mut ctx = self
            .samples
            .load_aggregate(&id.to_string())
            .await
            .map_err(|e| failed("sample", e))?;
        note(Read::Record {
            aggregate_type: Sample::TYPE,
            id: id.to_string(),
            version: ctx.current_sequence as i64,
        });
        Ok(ctx.aggregate().facts().cloned())
    }

    async fn accession_in_use(&self, accession: &AccessionNumber) -> Result<bool, LookupError> {
        // The expression must match the unique index events_accession_unique.
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events
               WHERE event_type IN ('SampleCollected', 'AliquotCreated')
                 AND coalesce(payload -> 'SampleCollected' ->> 'accession_number',
                              payload -> 'AliquotCreated' ->> 'accession_number') = $1)",
        )
        .bind(accession.as_str())
        .fetch_one(&mut *self.connection().await?)
        .await
        .map_err(|e| failed("accession number", e))
    }

    async fn previous_released(
        &self,
        patient: PatientId,
        test: &TestCode,
        unit: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<PreviousResult>, LookupError> {
        // Newest first; the first one still released (not retracted since) is the one.
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events
              WHERE event_type = 'ResultAuthorised' AND aggregate_type = 'Result'
                AND payload -> 'ResultAuthorised' ->> 'patient_id' = $1
                AND payload -> 'ResultAuthorised' ->> 'test_code' = $2
                AND (payload -> 'ResultAuthorised' ->> 'collected_at')::timestamptz < $3
              ORDER BY (payload -> 'ResultAuthorised' ->> 'collected_at')::timestamptz DESC",
        )
        .bind(patient.to_string())
        .bind(test.as_str())
        .bind(before)
        .fetch_all(&mut *self.connection().await?)
        .await
        .map_err(|e| failed("previous results", e))?;
        for id in candidates {
            let mut ctx = self
                .results
                .load_aggregate(&id)
                .await
                .map_err(|e| failed("previous result", e))?;
            if let Some((value, collected_at)) = ctx.aggregate().released_value() {
                return match value {
                    ResultValue::Numeric { value, unit: u } if u == unit => {
                        let uuid = Uuid::parse_str(&id).map_err(|e| failed("result id", e))?;
                        Ok(Some(PreviousResult {
                            result_id: ResultId::from_uuid(uuid),
                            value: *value,
                            collected_at,
                        }))
                    }
                    // The latest released value is in another unit, or coded: there is
                    // nothing to compare with (an older value would not be the previous).
                    _ => Ok(None),
                };
            }
        }
        Ok(None)
    }

    async fn age_at(
        &self,
        patient: PatientId,
        identity: &Sealed,
        at: DateTime<Utc>,
    ) -> Result<Option<Age>, LookupError> {
        match self
            .vault
            .open::<PatientIdentity>(patient, identity)
            .await
            .map_err(|e| failed("patient identity", e))?
        {
            Opened::Clear(identity) => Ok(Some(Age::on(
                identity.date_of_birth,
                self.policy.day_of(at),
            ))),
            Opened::Erased => Ok(None),
        }
    }

    async fn released_tests(&self, order: OrderId) -> Result<BTreeSet<TestCode>, LookupError> {
        let releases = self.releases(order).await?;
        note(Read::Releases {
            order: order.to_string(),
            test: None,
            count: releases.len() as i64,
        });
        releases
            .iter()
            .map(|(_, c)| TestCode::parse(c).map_err(|e| failed("stored test code", e)))
            .collect()
    }

    async fn value_stored_at(
        &self,
        result: ResultId,
    ) -> Result<Option<DateTime<Utc>>, LookupError> {
        sqlx::query_scalar(
            "SELECT recorded_at FROM events
              WHERE aggregate_type = 'Result' AND aggregate_id = $1
                AND event_type IN ('ResultRecorded', 'ResultCorrected', 'ResultAmended')
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(result.to_string())
        .fetch_optional(&mut *self.connection().await?)
        .await
        .map_err(|e| failed("value stored at", e))
    }

    async fn released_results(
        &self,
        order: OrderId,
        test: &TestCode,
    ) -> Result<Vec<ResultId>, LookupError> {
        let releases = self.releases(order).await?;
        let of_test: Vec<&str> = releases
            .iter()
            .filter(|(_, code)| code == test.as_str())
            .map(|(id, _)| id.as_str())
            .collect();
        // Only this test's: releasing a panel's other tests at once does not make a
        // release decide again.
        note(Read::Releases {
            order: order.to_string(),
            test: Some(test.as_str().to_string()),
            count: of_test.len() as i64,
        });
        let mut released = Vec::new();
        for id in of_test.into_iter().collect::<BTreeSet<_>>() {
            let mut ctx = self
                .results
                .load_aggregate(id)
                .await
                .map_err(|e| failed("released result", e))?;
            if ctx.aggregate().released_value().is_some() {
                let uuid = Uuid::parse_str(id).map_err(|e| failed("result id", e))?;
                released.push(ResultId::from_uuid(uuid));
            }
        }
        Ok(released)
    }

    fn policy(&self) -> LabPolicy {
        self.policy
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_look_up_is_sorted_by_its_cause() {
        assert!(failed("order", sqlx::Error::PoolTimedOut).unavailable);
        let away: AggregateError<std::io::Error> =
            AggregateError::DatabaseConnectionError(Box::new(sqlx::Error::PoolClosed));
        assert!(failed("order", away).unavailable);
        let defect: AggregateError<std::io::Error> =
            AggregateError::UnexpectedError(Box::new(sqlx::Error::RowNotFound));
        assert!(!failed("order", defect).unavailable);
        assert!(!failed("stored test code", TestCode::parse("").unwrap_err()).unavailable);
        let unreadable = Uuid::parse_str("not a uuid").unwrap_err();
        let e = failed("result id", unreadable);
        assert!(!e.unavailable);
        assert!(e.message.starts_with("result id: "), "{}", e.message);
    }
}
