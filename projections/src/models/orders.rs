//! Order status: every test of every order and the stage it is at, with the time it
//! entered each stage. Stages follow the lab's worklists: `to_collect`, `to_receive`,
//! `to_result`, `to_verify`, `to_authorise`, then `released`, `cancelled` or `retracted`.

use crate::envelope::Envelope;
use crate::projection::{LabEvent, Projection, ProjectionError};
use lis_domain::order::{OrderEvent, Priority};
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct Orders;

fn uuid(env: &Envelope) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&env.aggregate_id).map_err(|e| ProjectionError::Undecodable {
        aggregate_type: env.aggregate_type.clone(),
        aggregate_id: env.aggregate_id.clone(),
        sequence: env.sequence,
        message: format!("aggregate id: {e}"),
    })
}

fn priority(p: Priority) -> &'static str {
    match p {
        Priority::Routine => "routine",
        Priority::Urgent => "urgent",
        Priority::Stat => "stat",
    }
}

async fn add_tests(
    conn: &mut PgConnection,
    order_id: Uuid,
    tests: &[lis_domain::order::OrderedTest],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    for t in tests {
        sqlx::query(
            "INSERT INTO order_tests (order_id, test_code, department, stage, ordered_at, stage_since)
             VALUES ($1, $2, (SELECT department FROM catalogue_tests WHERE version = $3 AND code = $2), 'to_collect', $4, $4)
             ON CONFLICT (order_id, test_code) DO UPDATE SET stage = 'to_collect', stage_since = $4, cancelled_reason = NULL",
        )
        .bind(order_id)
        .bind(t.code.as_str())
        .bind(t.catalogue_version.0)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Moves the tests of a sample to `stage`, from the stages it may come from.
async fn move_sample_tests(
    conn: &mut PgConnection,
    sample_id: Uuid,
    from: &[&str],
    stage: &str,
    time_column: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let set_time = time_column
        .map(|c| format!(", {c} = $3"))
        .unwrap_or_default();
    sqlx::query(&format!(
        "UPDATE order_tests t SET stage = $2, stage_since = $3{set_time}
           FROM sample_tests s
          WHERE s.sample_id = $1 AND t.order_id = s.order_id AND t.test_code = ANY (s.tests)
            AND t.sample_id = $1 AND t.stage = ANY ($4)"
    ))
    .bind(sample_id)
    .bind(stage)
    .bind(at)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the test of a result to `stage`.
async fn move_result_test(
    conn: &mut PgConnection,
    result_id: Uuid,
    stage: &str,
    time_column: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let set_time = time_column
        .map(|c| format!(", {c} = coalesce(t.{c}, $3)"))
        .unwrap_or_default();
    sqlx::query(&format!(
        "UPDATE order_tests t SET stage = $2, stage_since = $3{set_time}, result_id = r.result_id
           FROM result_tests r
          WHERE r.result_id = $1 AND t.order_id = r.order_id AND t.test_code = r.test_code
            AND t.stage <> 'cancelled'"
    ))
    .bind(result_id)
    .bind(stage)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Projection for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn ddl(&self) -> &'static str {
        "
CREATE TABLE IF NOT EXISTS orders (
    order_id           uuid PRIMARY KEY,
    order_number       text NOT NULL,
    patient_id         uuid NOT NULL,
    priority           text NOT NULL,
    collection_site    text NOT NULL,
    ordering_clinician text NOT NULL,
    status             text NOT NULL,
    placed_at          timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_patient ON orders (patient_id, placed_at DESC);
CREATE TABLE IF NOT EXISTS order_tests (
    order_id         uuid NOT NULL,
    test_code        text NOT NULL,
    department       text,
    stage            text NOT NULL,
    sample_id        uuid,
    result_id        uuid,
    cancelled_reason text,
    recollection     bool NOT NULL DEFAULT false,
    ordered_at       timestamptz NOT NULL,
    collected_at     timestamptz,
    received_at      timestamptz,
    resulted_at      timestamptz,
    verified_at      timestamptz,
    released_at      timestamptz,
    stage_since      timestamptz NOT NULL,
    PRIMARY KEY (order_id, test_code));
CREATE INDEX IF NOT EXISTS order_tests_worklist ON order_tests (department, stage, stage_since);
CREATE TABLE IF NOT EXISTS sample_tests (
    sample_id uuid PRIMARY KEY,
    order_id  uuid NOT NULL,
    tests     text[] NOT NULL);
CREATE TABLE IF NOT EXISTS result_tests (
    result_id uuid PRIMARY KEY,
    order_id  uuid NOT NULL,
    test_code text NOT NULL);"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        let at = env.recorded_at;
        let id = uuid(env)?;
        match event {
            LabEvent::Order(OrderEvent::OrderPlaced {
                order_number,
                patient_id,
                priority: p,
                collection_site,
                ordering_clinician,
                tests,
                ..
            }) => {
                sqlx::query(
                    "INSERT INTO orders (order_id, order_number, patient_id, priority, collection_site,
                                         ordering_clinician, status, placed_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $7)",
                )
                .bind(id)
                .bind(order_number.as_str())
                .bind(patient_id.as_uuid())
                .bind(priority(*p))
                .bind(collection_site.as_str())
                .bind(ordering_clinician.as_str())
                .bind(at)
                .execute(&mut *conn)
                .await?;
                add_tests(conn, id, tests, at).await?;
            }
            LabEvent::Order(OrderEvent::TestsAdded { tests }) => {
                add_tests(conn, id, tests, at).await?
            }
            LabEvent::Order(OrderEvent::TestCancelled { test, reason }) => {
                sqlx::query(
                    "UPDATE order_tests SET stage = 'cancelled', stage_since = $3, cancelled_reason = $4
                      WHERE order_id = $1 AND test_code = $2",
                )
                .bind(id)
                .bind(test.as_str())
                .bind(at)
                .bind(reason.as_str())
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Order(OrderEvent::OrderCancelled { reason, tests }) => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "UPDATE order_tests SET stage = 'cancelled', stage_since = $3, cancelled_reason = $4
                      WHERE order_id = $1 AND test_code = ANY ($2)",
                )
                .bind(id)
                .bind(&codes)
                .bind(at)
                .bind(reason.as_str())
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "UPDATE orders SET status = 'cancelled', updated_at = $2 WHERE order_id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Sample(SampleEvent::SampleCollected {
                order_id,
                tests,
                collected_at,
                ..
            }) => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "INSERT INTO sample_tests (sample_id, order_id, tests) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(order_id.as_uuid())
                .bind(&codes)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "UPDATE order_tests SET stage = 'to_receive', stage_since = $4, collected_at = $4, sample_id = $3
                      WHERE order_id = $1 AND test_code = ANY ($2) AND stage = 'to_collect'",
                )
                .bind(order_id.as_uuid())
                .bind(&codes)
                .bind(id)
                .bind(collected_at)
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Sample(SampleEvent::AliquotCreated {
                order_id, tests, ..
            }) => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "INSERT INTO sample_tests (sample_id, order_id, tests) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(order_id.as_uuid())
                .bind(&codes)
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Sample(SampleEvent::SampleReceived { received_at, .. }) => {
                move_sample_tests(
                    conn,
                    id,
                    &["to_receive"],
                    "to_result",
                    Some("received_at"),
                    *received_at,
                )
                .await?;
            }
            LabEvent::Sample(SampleEvent::SampleRejected { .. }) => {
                move_sample_tests(
                    conn,
                    id,
                    &["to_receive", "to_result"],
                    "to_collect",
                    None,
                    at,
                )
                .await?;
                sqlx::query(
                    "UPDATE order_tests t SET recollection = true, sample_id = NULL FROM sample_tests s
                      WHERE s.sample_id = $1 AND t.order_id = s.order_id AND t.test_code = ANY (s.tests)
                        AND t.sample_id = $1",
                )
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Result(ResultEvent::ResultRecorded {
                order_id,
                test_code,
                ..
            }) => {
                sqlx::query(
                    "INSERT INTO result_tests (result_id, order_id, test_code) VALUES ($1, $2, $3)
                     ON CONFLICT (result_id) DO NOTHING",
                )
                .bind(id)
                .bind(order_id.as_uuid())
                .bind(test_code.as_str())
                .execute(&mut *conn)
                .await?;
                move_result_test(conn, id, "to_verify", Some("resulted_at"), at).await?;
            }
            LabEvent::Result(ResultEvent::ResultCorrected { .. }) => {
                move_result_test(conn, id, "to_verify", None, at).await?
            }
            LabEvent::Result(ResultEvent::RerunRequested { .. }) => {
                move_result_test(conn, id, "to_result", None, at).await?
            }
            LabEvent::Result(ResultEvent::ResultVerified { .. }) => {
                move_result_test(conn, id, "to_authorise", Some("verified_at"), at).await?
            }
            LabEvent::Result(ResultEvent::ResultAuthorised { .. }) => {
                move_result_test(conn, id, "released", Some("released_at"), at).await?
            }
            LabEvent::Result(ResultEvent::ResultRetracted { .. }) => {
                move_result_test(conn, id, "retracted", None, at).await?
            }
            _ => {}
        }
        Ok(())
    }
}
