//! MongoDB analytics for dashboards (database `lis_analytics`): fact documents, one per
//! order, specimen and result, from which the dashboards' rollups are computed.
//!
//! Counters with `$inc` are not idempotent, and a per-document "last position" guard
//! would drop older events arriving later from another partition. So every write here is
//! idempotent and order-insensitive: `$set` of facts an event states, `$min` of first
//! times, `$max` of counts, `$addToSet` of members; and rollups are computed from the
//! facts ([`crate::analytics_queries`]). The one order-sensitive fact, a result's current
//! flags, is guarded by the event's sequence so that a replayed older event cannot
//! overwrite a newer value. Only operations that MongoDB 7 and the test server both
//! support are used.

use crate::envelope::Envelope;
use crate::erasure::Erased;
use crate::projection::{LabEvent, Projection, ProjectionError};
use lis_domain::flags::Flag;
use lis_domain::order::{OrderEvent, OrderedTest};
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use mongodb::bson::{doc, Bson, DateTime as BsonDateTime, Document};
use mongodb::options::UpdateOptions;
use mongodb::Database;
use sqlx::PgConnection;

pub const DATABASE: &str = "lis_analytics";

pub struct Analytics {
    db: Database,
}

impl Analytics {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Connects to `url` (e.g. `mongodb://127.0.0.1:27017/?directConnection=true`) and
    /// uses `database` (normally [`DATABASE`]).
    pub async fn connect(url: &str, database: &str) -> Result<Self, mongodb::error::Error> {
        let client = mongodb::Client::with_uri_str(url).await?;
        Ok(Self::new(client.database(database)))
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn upsert(
        &self,
        collection: &str,
        id: &str,
        update: Document,
    ) -> Result<(), ProjectionError> {
        self.db
            .collection::<Document>(collection)
            .update_one(doc! { "_id": id }, update)
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await
            .map_err(mongo_error)?;
        Ok(())
    }

    /// Sets a result's current value facts unless a later event already did. (The result's
    /// document exists: its `ResultRecorded` comes first in the aggregate's order.)
    async fn set_current(
        &self,
        id: &str,
        sequence: i64,
        facts: Document,
    ) -> Result<(), ProjectionError> {
        let mut set = facts;
        set.insert("value_sequence", sequence);
        let older = doc! { "$or": [ { "value_sequence": { "$exists": false } }, { "value_sequence": { "$lt": sequence } } ] };
        let mut filter = doc! { "_id": id };
        filter.extend(older);
        self.db
            .collection::<Document>("result_facts")
            .update_one(filter, doc! { "$set": set })
            .await
            .map_err(mongo_error)?;
        Ok(())
    }
}

fn mongo_error(e: mongodb::error::Error) -> ProjectionError {
    ProjectionError::Sink(format!("mongodb: {e}"))
}

fn date(t: chrono::DateTime<chrono::Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

fn day(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn value_facts(flags: &[Flag]) -> Document {
    let names: Vec<Bson> = flags
        .iter()
        .map(|f| Bson::String(f.as_str().into()))
        .collect();
    doc! {
        "flags": names,
        "abnormal": flags.iter().any(|f| !matches!(f, Flag::D)),
        "critical": flags.iter().any(Flag::is_critical),
    }
}

/// Departments of ordered tests, from the catalogue version each was ordered under.
async fn tests_with_departments(
    conn: &mut PgConnection,
    tests: &[OrderedTest],
) -> Result<Vec<Bson>, ProjectionError> {
    let mut out = Vec::with_capacity(tests.len());
    for t in tests {
        let department: Option<String> = sqlx::query_scalar(
            "SELECT department FROM catalogue_tests WHERE version = $1 AND code = $2",
        )
        .bind(t.catalogue_version.0)
        .bind(t.code.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        out.push(Bson::Document(
            doc! { "code": t.code.as_str(), "department": department.unwrap_or_default() },
        ));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Projection for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn ddl(&self) -> &'static str {
        ""
    }

    /// Nothing in PostgreSQL: the facts live in MongoDB ([`Projection::purge`] below).
    fn purge_sql(&self) -> &'static str {
        ""
    }

    async fn purge(
        &self,
        _conn: &mut PgConnection,
        erased: &Erased,
    ) -> Result<(), ProjectionError> {
        for (collection, ids) in [
            ("order_facts", &erased.orders),
            ("sample_facts", &erased.samples),
            ("result_facts", &erased.results),
        ] {
            if ids.is_empty() {
                continue;
            }
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            self.db
                .collection::<Document>(collection)
                .delete_many(doc! { "_id": { "$in": ids } })
                .await
                .map_err(mongo_error)?;
        }
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        let id = env.aggregate_id.as_str();
        let at = env.recorded_at;
        match event {
            LabEvent::Order(OrderEvent::OrderPlaced {
                priority: p,
                collection_site,
                tests,
                ..
            }) => {
                let tests = tests_with_departments(conn, tests).await?;
                self.upsert(
                    "order_facts",
                    id,
                    doc! {
                        "$set": { "priority": p.as_str(), "collection_site": collection_site.as_str(),
                                  "ordered_at": date(at), "day": day(at) },
                        "$addToSet": { "tests": { "$each": tests } },
                    },
                )
                .await?
            }
            LabEvent::Order(OrderEvent::TestsAdded { tests }) => {
                let tests = tests_with_departments(conn, tests).await?;
                self.upsert("order_facts", id, doc! { "$addToSet": { "tests": { "$each": tests } } }).await?
            }
            LabEvent::Order(OrderEvent::TestCancelled { test, .. }) => {
                self.upsert("order_facts", id, doc! { "$addToSet": { "cancelled": test.as_str() } }).await?
            }
            LabEvent::Order(OrderEvent::OrderCancelled { tests, .. }) => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                self.upsert("order_facts", id, doc! { "$addToSet": { "cancelled": { "$each": codes } } }).await?
            }
            LabEvent::Sample(SampleEvent::SampleCollected { order_id, collected_at, .. }) => {
                self.upsert(
                    "sample_facts",
                    id,
                    doc! { "$set": { "order_id": order_id.to_string(), "collected_at": date(*collected_at), "day": day(*collected_at) } },
                )
                .await?
            }
            LabEvent::Sample(SampleEvent::SampleReceived { received_at, .. }) => {
                self.upsert("sample_facts", id, doc! { "$min": { "received_at": date(*received_at) } }).await?
            }
            LabEvent::Sample(SampleEvent::SampleRejected { reason, .. }) => {
                let reason = reason.code();
                self.upsert(
                    "sample_facts",
                    id,
                    doc! { "$set": { "rejection_reason": reason }, "$min": { "rejected_at": date(at) } },
                )
                .await?
            }
            LabEvent::Result(ResultEvent::ResultRecorded {
                order_id,
                test_code,
                flags,
                collected_at,
                ..
            }) => {
                self.upsert(
                    "result_facts",
                    id,
                    doc! {
                        "$set": { "order_id": order_id.to_string(), "test_code": test_code.as_str(),
                                  "collected_at": date(*collected_at), "day": day(*collected_at) },
                        "$min": { "recorded_at": date(at) },
                    },
                )
                .await?;
                self.set_current(id, env.sequence, value_facts(flags)).await?
            }
            LabEvent::Result(ResultEvent::ResultCorrected { flags, .. }) => self.set_current(id, env.sequence, value_facts(flags)).await?,
            LabEvent::Result(ResultEvent::ResultAmended { flags, amendment, .. }) => {
                self.upsert("result_facts", id, doc! { "$max": { "amendments": i64::from(*amendment) } }).await?;
                self.set_current(id, env.sequence, value_facts(flags)).await?
            }
            LabEvent::Result(ResultEvent::ResultVerified { .. }) => {
                self.upsert("result_facts", id, doc! { "$min": { "verified_at": date(at) } }).await?
            }
            LabEvent::Result(ResultEvent::ResultAuthorised { .. }) => {
                self.upsert("result_facts", id, doc! { "$min": { "released_at": date(at) } }).await?
            }
            LabEvent::Result(ResultEvent::ResultRetracted { .. }) => {
                self.upsert("result_facts", id, doc! { "$set": { "retracted": true } }).await?
            }
            _ => {}
        }
        Ok(())
    }
}
