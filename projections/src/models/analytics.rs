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
use mongodb::Database;
use sqlx::PgConnection;
use std::collections::HashMap;

pub const DATABASE: &str = "lis_analytics";

pub struct Analytics {
    db: Database,
    /// Whose calendar days the facts' `day` is (the dashboards' days): the lab's.
    time_zone: chrono_tz::Tz,
}

impl Analytics {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            time_zone: chrono_tz::UTC,
        }
    }

    /// The same, counting days in the lab's time zone (`LIS_LAB_TIME_ZONE`). Facts
    /// written before a change of zone keep their days until `projections rebuild
    /// analytics`.
    pub fn in_time_zone(self, time_zone: chrono_tz::Tz) -> Self {
        Self { time_zone, ..self }
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

    /// Sends `writes` in order, one `update` command per collection (a batch of upserts
    /// in one round trip; MongoDB 7's and the test server's own command). Order matters
    /// only within a collection: a result's current value is set after its document is
    /// created, in the same command.
    async fn send(&self, writes: Vec<Write>) -> Result<(), ProjectionError> {
        let mut by_collection: Vec<(&'static str, Vec<Document>)> = Vec::new();
        for Write {
            collection,
            statement,
        } in writes
        {
            match by_collection.iter_mut().find(|(c, _)| *c == collection) {
                Some((_, statements)) => statements.push(statement),
                None => by_collection.push((collection, vec![statement])),
            }
        }
        for (collection, statements) in by_collection {
            let mut statements = statements.into_iter().peekable();
            while statements.peek().is_some() {
                let chunk: Vec<Document> = statements.by_ref().take(MAX_STATEMENTS).collect();
                let command = update_command(collection, chunk, self.db.write_concern())?;
                let reply = self.db.run_command(command).await.map_err(mongo_error)?;
                check_update_reply(collection, &reply)?;
            }
        }
        Ok(())
    }
}

/// An ordered `update` command of `statements` to `collection`. A command run as such
/// does not take the database's write concern (the driver's own writes do), so it is
/// put in the command: a `w=majority` in the URL still holds.
fn update_command(
    collection: &str,
    statements: Vec<Document>,
    write_concern: Option<&mongodb::options::WriteConcern>,
) -> Result<Document, ProjectionError> {
    let mut command = doc! { "update": collection, "updates": statements, "ordered": true };
    if let Some(concern) = write_concern {
        let concern = mongodb::bson::to_document(concern)
            .map_err(|e| ProjectionError::Sink(format!("mongodb write concern: {e}")))?;
        if !concern.is_empty() {
            command.insert("writeConcern", concern);
        }
    }
    Ok(command)
}

/// Fails unless every statement of an `update` command was written as its write concern
/// asks (an `ok: 0` reply is already an error from the driver).
fn check_update_reply(collection: &str, reply: &Document) -> Result<(), ProjectionError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        return Err(ProjectionError::Sink(format!(
            "mongodb: {} writes to {collection} failed: {errors:?}",
            errors.len()
        )));
    }
    if let Ok(error) = reply.get_document("writeConcernError") {
        return Err(ProjectionError::Sink(format!(
            "mongodb: writes to {collection} not confirmed as the write concern asks: {error:?}"
        )));
    }
    Ok(())
}

/// Statements per `update` command (MongoDB allows 100,000; the documents here are small).
const MAX_STATEMENTS: usize = 1000;

/// One statement of an `update` command, and its collection.
struct Write {
    collection: &'static str,
    statement: Document,
}

/// Creates or updates the fact document `id` of `collection`.
fn upsert(collection: &'static str, id: &str, update: Document) -> Write {
    Write {
        collection,
        statement: doc! { "q": { "_id": id }, "u": update, "upsert": true },
    }
}

/// Sets a result's current value facts unless a later event already did. (The result's
/// document exists: its `ResultRecorded` comes first in the aggregate's order.)
fn set_current(id: &str, sequence: i64, facts: Document) -> Write {
    let mut set = facts;
    set.insert("value_sequence", sequence);
    let older = doc! { "$or": [ { "value_sequence": { "$exists": false } }, { "value_sequence": { "$lt": sequence } } ] };
    let mut filter = doc! { "_id": id };
    filter.extend(older);
    Write {
        collection: "result_facts",
        statement: doc! { "q": filter, "u": { "$set": set } },
    }
}

fn mongo_error(e: mongodb::error::Error) -> ProjectionError {
    ProjectionError::Sink(format!("mongodb: {e}"))
}

fn date(t: chrono::DateTime<chrono::Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

/// The lab's calendar day of `t`.
fn day(t: chrono::DateTime<chrono::Utc>, zone: chrono_tz::Tz) -> String {
    t.with_timezone(&zone).format("%Y-%m-%d").to_string()
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

/// Each ordered test's department, by (catalogue version, code).
type Departments = HashMap<(i32, String), String>;

/// The tests an event orders (none for most events).
fn ordered_tests(event: &LabEvent) -> &[OrderedTest] {
    match event {
        LabEvent::Order(
            OrderEvent::OrderPlaced { tests, .. } | OrderEvent::TestsAdded { tests },
        ) => tests,
        _ => &[],
    }
}

/// The departments of `tests` from the catalogue version each was ordered under, in one
/// statement for a whole batch (none when nothing in it orders a test).
async fn departments<'t>(
    conn: &mut PgConnection,
    tests: impl Iterator<Item = &'t OrderedTest>,
) -> Result<Departments, ProjectionError> {
    let mut keys: Vec<(i32, &str)> = tests
        .map(|t| (t.catalogue_version.0, t.code.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Departments::new());
    }
    let (versions, codes): (Vec<i32>, Vec<&str>) = keys.into_iter().unzip();
    let rows: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT c.version, c.code, c.department
           FROM catalogue_tests c JOIN unnest($1::int4[], $2::text[]) AS u(version, code)
             ON c.version = u.version AND c.code = u.code",
    )
    .bind(&versions)
    .bind(&codes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(v, c, d)| ((v, c), d)).collect())
}

/// `tests` as fact sub-documents, in their order, each with its department (empty if
/// the catalogue has none for it).
fn with_departments(tests: &[OrderedTest], departments: &Departments) -> Vec<Bson> {
    tests
        .iter()
        .map(|t| {
            let key = (t.catalogue_version.0, t.code.as_str().to_string());
            let department = departments.get(&key).cloned().unwrap_or_default();
            Bson::Document(doc! { "code": t.code.as_str(), "department": department })
        })
        .collect()
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

    fn writes_elsewhere(&self) -> bool {
        true
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
        let departments = departments(conn, ordered_tests(event).iter()).await?;
        self.send(writes(env, event, &departments, self.time_zone))
            .await
    }

    /// A batch's writes, in event order, in one command per collection, after one
    /// catalogue look-up for every test the batch orders.
    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        let ordered = events.iter().flat_map(|(_, event)| ordered_tests(event));
        let departments = departments(conn, ordered).await?;
        let all = events
            .iter()
            .flat_map(|(env, event)| writes(env, event, &departments, self.time_zone))
            .collect();
        self.send(all).await
    }
}

/// What one event writes to the fact documents (`departments` holds those of the tests
/// it orders).
fn writes(
    env: &Envelope,
    event: &LabEvent,
    departments: &Departments,
    zone: chrono_tz::Tz,
) -> Vec<Write> {
    let id = env.aggregate_id.as_str();
    let at = env.recorded_at;
    match event {
        LabEvent::Order(OrderEvent::OrderPlaced {
            priority: p,
            collection_site,
            tests,
            ..
        }) => {
            let tests = with_departments(tests, departments);
            vec![upsert(
                "order_facts",
                id,
                doc! {
                    "$set": { "priority": p.as_str(), "collection_site": collection_site.as_str(),
                              "ordered_at": date(at), "day": day(at, zone) },
                    "$addToSet": { "tests": { "$each": tests } },
                },
            )]
        }
        LabEvent::Order(OrderEvent::TestsAdded { tests }) => {
            // A test cancelled and then ordered again counts again.
            let codes: Vec<&str> = tests.iter().map(|t| t.code.as_str()).collect();
            let tests = with_departments(tests, departments);
            vec![upsert(
                "order_facts",
                id,
                doc! { "$addToSet": { "tests": { "$each": tests } },
                "$pull": { "cancelled": { "$in": codes } } },
            )]
        }
        LabEvent::Order(OrderEvent::TestCancelled { test, .. }) => {
            vec![upsert(
                "order_facts",
                id,
                doc! { "$addToSet": { "cancelled": test.as_str() } },
            )]
        }
        LabEvent::Order(OrderEvent::OrderCancelled { tests, .. }) => {
            let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
            vec![upsert(
                "order_facts",
                id,
                doc! { "$addToSet": { "cancelled": { "$each": codes } } },
            )]
        }
        LabEvent::Sample(SampleEvent::SampleCollected {
            order_id,
            collected_at,
            ..
        }) => {
            vec![upsert(
                "sample_facts",
                id,
                doc! { "$set": { "order_id": order_id.to_string(), "collected_at": date(*collected_at), "day": day(*collected_at, zone) } },
            )]
        }
        LabEvent::Sample(SampleEvent::SampleReceived { received_at, .. }) => {
            vec![upsert(
                "sample_facts",
                id,
                doc! { "$min": { "received_at": date(*received_at) } },
            )]
        }
        LabEvent::Sample(SampleEvent::SampleRejected { reason, .. }) => {
            vec![upsert(
                "sample_facts",
                id,
                doc! { "$set": { "rejection_reason": reason.code() }, "$min": { "rejected_at": date(at) } },
            )]
        }
        LabEvent::Result(ResultEvent::ResultRecorded {
            order_id,
            test_code,
            flags,
            collected_at,
            ..
        }) => vec![
            upsert(
                "result_facts",
                id,
                doc! {
                    "$set": { "order_id": order_id.to_string(), "test_code": test_code.as_str(),
                              "collected_at": date(*collected_at), "day": day(*collected_at, zone) },
                    "$min": { "recorded_at": date(at) },
                },
            ),
            set_current(id, env.sequence, value_facts(flags)),
        ],
        LabEvent::Result(ResultEvent::ResultCorrected { flags, .. }) => {
            vec![set_current(id, env.sequence, value_facts(flags))]
        }
        LabEvent::Result(ResultEvent::ResultAmended {
            flags, amendment, ..
        }) => vec![
            upsert(
                "result_facts",
                id,
                doc! { "$max": { "amendments": i64::from(*amendment) } },
            ),
            set_current(id, env.sequence, value_facts(flags)),
        ],
        LabEvent::Result(ResultEvent::ResultVerified { .. }) => {
            vec![upsert(
                "result_facts",
                id,
                doc! { "$min": { "verified_at": date(at) } },
            )]
        }
        LabEvent::Result(ResultEvent::ResultAuthorised { .. }) => {
            vec![upsert(
                "result_facts",
                id,
                doc! { "$min": { "released_at": date(at) } },
            )]
        }
        LabEvent::Result(ResultEvent::ResultRetracted { .. }) => {
            vec![upsert(
                "result_facts",
                id,
                doc! { "$set": { "retracted": true } },
            )]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::{Acknowledgment, WriteConcern};

    #[test]
    fn each_test_takes_the_department_of_the_catalogue_version_it_was_ordered_under() {
        use lis_domain::catalogue::CatalogueVersion;
        use lis_domain::ids::TestCode;
        let ordered = |code: &str, version: i32| OrderedTest {
            code: TestCode::parse(code).unwrap(),
            catalogue_version: CatalogueVersion(version),
        };
        let tests = [ordered("K", 2), ordered("K", 1), ordered("HB", 1)];
        let departments = Departments::from([
            ((1, "K".to_string()), "CHEMISTRY".to_string()),
            ((2, "K".to_string()), "BIOCHEMISTRY".to_string()),
        ]);
        assert_eq!(
            with_departments(&tests, &departments),
            vec![
                Bson::Document(doc! { "code": "K", "department": "BIOCHEMISTRY" }),
                Bson::Document(doc! { "code": "K", "department": "CHEMISTRY" }),
                // Not in the catalogue version named: no department, the test still counted.
                Bson::Document(doc! { "code": "HB", "department": "" }),
            ]
        );
        let added = LabEvent::Order(OrderEvent::TestsAdded {
            tests: tests.to_vec(),
        });
        assert_eq!(ordered_tests(&added), &tests);
        let other = LabEvent::Order(OrderEvent::TestCancelled {
            test: TestCode::parse("K").unwrap(),
            reason: lis_domain::text::Reason::parse("duplicate").unwrap(),
        });
        assert!(ordered_tests(&other).is_empty());
    }

    #[test]
    fn an_update_command_carries_the_write_concern_of_the_database() {
        let majority = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build();
        let statements = vec![doc! { "q": { "_id": "r1" }, "u": { "$set": { "a": 1 } } }];
        let command = update_command("result_facts", statements.clone(), Some(&majority)).unwrap();
        assert_eq!(command.get_str("update").unwrap(), "result_facts");
        assert!(command.get_bool("ordered").unwrap());
        assert_eq!(command.get_array("updates").unwrap().len(), 1);
        let concern = command.get_document("writeConcern").unwrap();
        assert_eq!(concern.get_str("w").unwrap(), "majority");
        assert!(concern.get_bool("j").unwrap());
        // None set, none sent: the server's default applies.
        let plain = update_command("result_facts", statements.clone(), None).unwrap();
        assert!(!plain.contains_key("writeConcern"));
        let empty = WriteConcern::default();
        let plain = update_command("result_facts", statements, Some(&empty)).unwrap();
        assert!(!plain.contains_key("writeConcern"));
    }

    #[test]
    fn a_reply_with_write_errors_or_an_unmet_write_concern_is_a_failure() {
        assert!(
            check_update_reply("order_facts", &doc! { "ok": 1, "n": 2, "nModified": 1 }).is_ok()
        );
        let failed = doc! { "ok": 1, "n": 1, "writeErrors": [ { "index": 1, "code": 11000, "errmsg": "dup" } ] };
        assert!(check_update_reply("order_facts", &failed).is_err());
        let unconfirmed = doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } };
        let error = check_update_reply("order_facts", &unconfirmed).unwrap_err();
        assert!(error.to_string().contains("write concern"), "{error}");
    }
}
