//! Order status: every test of every order and the stage it is at — `to_collect`,
//! `to_receive`, `to_result`, `to_verify`, `to_authorise`, then `released`, `cancelled`
//! or `retracted` — with the time it reached each stage.
//!
//! Events of different aggregates travel on different Kafka partitions, so a specimen's
//! receipt may be projected before the order that asked for it. Each table here is
//! therefore written by the events of one aggregate type only (orders by order events,
//! specimens' tests by sample events, results by result events), each in its own
//! aggregate's order, and the stage is derived when read, by the `order_test_status`
//! view. The model is the same whatever order the aggregates' streams interleave in.

use crate::envelope::Envelope;
use crate::projection::{
    aggregate_uuid, apply_folded, Fold, LabEvent, Pending, Projection, ProjectionError,
};
use chrono::{DateTime, Utc};
use lis_domain::order::{OrderEvent, OrderedTest};
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub struct Orders;

async fn add_tests(
    conn: &mut PgConnection,
    order_id: Uuid,
    tests: &[OrderedTest],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    for t in tests {
        sqlx::query(
            "INSERT INTO order_tests (order_id, test_code, department, catalogue_version, ordered_at)
             VALUES ($1, $2, (SELECT department FROM catalogue_tests WHERE version = $3 AND code = $2), $3, $4)
             ON CONFLICT (order_id, test_code) DO UPDATE
                SET ordered_at = excluded.ordered_at, catalogue_version = excluded.catalogue_version,
                    cancelled_at = NULL, cancelled_reason = NULL",
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

async fn cancel_tests(
    conn: &mut PgConnection,
    order_id: Uuid,
    tests: &[&str],
    reason: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE order_tests SET cancelled_at = $3, cancelled_reason = $4 WHERE order_id = $1 AND test_code = ANY ($2)",
    )
    .bind(order_id)
    .bind(tests)
    .bind(at)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves a result to `status`; `first` names a time column kept at its first value.
async fn result_status(
    conn: &mut PgConnection,
    result_id: Uuid,
    status: &str,
    first: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let set_first = first
        .map(|c| format!(", {c} = coalesce({c}, $3)"))
        .unwrap_or_default();
    sqlx::query(&format!(
        "UPDATE result_tests SET status = $2, status_since = $3{set_first} WHERE result_id = $1"
    ))
    .bind(result_id)
    .bind(status)
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
    catalogue_version integer NOT NULL,
    ordered_at       timestamptz NOT NULL,
    cancelled_at     timestamptz,
    cancelled_reason text,
    PRIMARY KEY (order_id, test_code));
CREATE TABLE IF NOT EXISTS specimen_tests (
    sample_id    uuid NOT NULL,
    test_code    text NOT NULL,
    order_id     uuid NOT NULL,
    collected_at timestamptz NOT NULL,
    received_at  timestamptz,
    rejected_at  timestamptz,
    PRIMARY KEY (sample_id, test_code));
CREATE INDEX IF NOT EXISTS specimen_tests_by_order ON specimen_tests (order_id, test_code);
CREATE TABLE IF NOT EXISTS result_tests (
    result_id    uuid PRIMARY KEY,
    order_id     uuid NOT NULL,
    test_code    text NOT NULL,
    status       text NOT NULL,
    resulted_at  timestamptz NOT NULL,
    verified_at  timestamptz,
    released_at  timestamptz,
    status_since timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS result_tests_by_order ON result_tests (order_id, test_code);
CREATE OR REPLACE VIEW order_test_status AS
SELECT t.order_id, t.test_code, t.department, t.catalogue_version, o.priority, o.order_number, o.patient_id,
       CASE
         WHEN t.cancelled_at IS NOT NULL THEN 'cancelled'
         WHEN r.status = 'recorded' THEN 'to_verify'
         WHEN r.status = 'verified' THEN 'to_authorise'
         WHEN r.status = 'released' THEN 'released'
         WHEN r.status = 'retracted' THEN 'retracted'
         WHEN r.status = 'rerun_requested' THEN 'to_result'
         WHEN s.sample_id IS NULL OR s.rejected_at IS NOT NULL THEN 'to_collect'
         WHEN s.received_at IS NULL THEN 'to_receive'
         ELSE 'to_result'
       END AS stage,
       CASE
         WHEN t.cancelled_at IS NOT NULL THEN t.cancelled_at
         WHEN r.result_id IS NOT NULL THEN r.status_since
         WHEN s.sample_id IS NULL THEN t.ordered_at
         WHEN s.rejected_at IS NOT NULL THEN s.rejected_at
         ELSE coalesce(s.received_at, s.collected_at)
       END AS stage_since,
       EXISTS (SELECT 1 FROM specimen_tests x
                WHERE x.order_id = t.order_id AND x.test_code = t.test_code AND x.rejected_at IS NOT NULL) AS recollection,
       t.cancelled_reason, s.sample_id, r.result_id,
       t.ordered_at, s.collected_at, s.received_at, r.resulted_at, r.verified_at, r.released_at
  FROM order_tests t
  JOIN orders o ON o.order_id = t.order_id
  LEFT JOIN LATERAL (SELECT * FROM specimen_tests x
                      WHERE x.order_id = t.order_id AND x.test_code = t.test_code
                      ORDER BY (x.rejected_at IS NULL) DESC, x.collected_at DESC LIMIT 1) s ON true
  LEFT JOIN LATERAL (SELECT * FROM result_tests y
                      WHERE y.order_id = t.order_id AND y.test_code = t.test_code
                      ORDER BY (y.status <> 'retracted') DESC, y.resulted_at DESC LIMIT 1) r ON true;
CREATE OR REPLACE VIEW worklist AS
SELECT s.department, s.stage, s.order_id, s.order_number, s.patient_id, s.test_code, s.priority,
       s.sample_id, s.result_id, s.recollection, s.ordered_at, s.stage_since,
       now() - s.stage_since AS age,
       make_interval(mins => CASE WHEN s.priority = 'routine' THEN c.tat_routine ELSE c.tat_stat END) AS target,
       now() - s.ordered_at > make_interval(mins => CASE WHEN s.priority = 'routine' THEN c.tat_routine ELSE c.tat_stat END)
           AS overdue
  FROM order_test_status s
  LEFT JOIN LATERAL (SELECT (definition ->> 'tat_routine_min')::int AS tat_routine,
                            (definition ->> 'tat_stat_min')::int AS tat_stat
                       FROM catalogue_tests k WHERE k.version = s.catalogue_version AND k.code = s.test_code) c ON true
 WHERE s.stage IN ('to_collect', 'to_receive', 'to_result', 'to_verify', 'to_authorise');
CREATE OR REPLACE VIEW turnaround AS
SELECT test_code, priority, count(*) AS released,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM collected_at - ordered_at) / 60) AS order_to_collect_p50_min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - collected_at) / 60) AS collect_to_receive_p50_min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM resulted_at - received_at) / 60) AS receive_to_result_p50_min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM verified_at - resulted_at) / 60) AS result_to_verify_p50_min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM released_at - verified_at) / 60) AS verify_to_release_p50_min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM released_at - ordered_at) / 60) AS order_to_release_p50_min,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM released_at - ordered_at) / 60) AS order_to_release_p90_min
  FROM order_test_status
 WHERE stage = 'released'
 GROUP BY test_code, priority"
    }

    fn purge_sql(&self) -> &'static str {
        "WITH t AS (DELETE FROM order_tests WHERE order_id = ANY ($2)),
                  s AS (DELETE FROM specimen_tests WHERE sample_id = ANY ($3) OR order_id = ANY ($2)),
                  r AS (DELETE FROM result_tests WHERE result_id = ANY ($4) OR order_id = ANY ($2))
             DELETE FROM orders WHERE order_id = ANY ($2) OR patient_id = ANY ($1)"
    }

    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        apply_folded::<PendingOrders>(self, conn, events).await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        // The common events are written as a run of one.
        let mut one = PendingOrders::default();
        if one.fold(env, event)? == Fold::Taken {
            return one.flush(conn).await;
        }
        let at = env.recorded_at;
        let id = aggregate_uuid(env)?;
        match event {
            LabEvent::Order(OrderEvent::TestsAdded { tests }) => {
                add_tests(conn, id, tests, at).await?
            }
            LabEvent::Order(OrderEvent::TestCancelled { test, reason }) => {
                cancel_tests(conn, id, &[test.as_str()], reason.as_str(), at).await?
            }
            LabEvent::Order(OrderEvent::OrderCancelled { reason, tests }) => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                cancel_tests(conn, id, &codes, reason.as_str(), at).await?;
                sqlx::query(
                    "UPDATE orders SET status = 'cancelled', updated_at = $2 WHERE order_id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            // A correction voids the verification: the stage's time is the next one's.
            LabEvent::Result(ResultEvent::ResultCorrected { .. }) => {
                sqlx::query(
                    "UPDATE result_tests SET status = 'recorded', status_since = $2, verified_at = NULL
                      WHERE result_id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            LabEvent::Result(ResultEvent::RerunRequested { .. }) => {
                result_status(conn, id, "rerun_requested", None, at).await?
            }
            LabEvent::Result(ResultEvent::ResultRetracted { .. }) => {
                result_status(conn, id, "retracted", None, at).await?
            }
            _ => {}
        }
        Ok(())
    }
}

/// (order, number, patient, priority, site, clinician, placed at)
type NewOrder = (
    Uuid,
    String,
    Uuid,
    &'static str,
    String,
    String,
    DateTime<Utc>,
);
/// (received at, rejected at) of a specimen's tests.
type SpecimenTimes = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A run's new orders, their tests, specimens' tests and results (one row each), and the
/// stage times folded over them (written with the new rows) or over stored rows
/// (written as updates).
#[derive(Default)]
struct PendingOrders {
    orders: Vec<NewOrder>,
    order_ids: HashSet<Uuid>,
    /// (order, test, catalogue version, ordered at)
    order_tests: Vec<(Uuid, String, i32, DateTime<Utc>)>,
    order_test_keys: HashSet<(Uuid, String)>,
    /// (sample, test, order, collected at)
    specimen_tests: Vec<(Uuid, String, Uuid, DateTime<Utc>)>,
    specimen_test_keys: HashSet<(Uuid, String)>,
    /// sample → (received at, rejected at), the last of each winning.
    specimen_times: HashMap<Uuid, SpecimenTimes>,
    /// (result, order, test, recorded at)
    results: Vec<(Uuid, Uuid, String, DateTime<Utc>)>,
    result_ids: HashSet<Uuid>,
    result_status: HashMap<Uuid, ResultStage>,
}

/// Status and its time (the last wins); verified and released times (the first wins,
/// as `coalesce(column, time)` keeps it). A result recorded again after a rerun starts a
/// new cycle: its row takes the new recording's time and drops the earlier
/// verification's, as a correction (which voids the verification) drops it too, so the
/// turnaround's stages follow the value that was released.
struct ResultStage {
    status: &'static str,
    since: DateTime<Utc>,
    verified_at: Option<DateTime<Utc>>,
    released_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
impl Pending for PendingOrders {
    fn fold(&mut self, env: &Envelope, event: &LabEvent) -> Result<Fold, ProjectionError> {
        let at = env.recorded_at;
        let id = aggregate_uuid(env)?;
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
                if self.order_ids.contains(&id)
                    || tests.iter().any(|t| {
                        self.order_test_keys
                            .contains(&(id, t.code.as_str().to_string()))
                    })
                {
                    return Ok(Fold::FlushFirst);
                }
                self.order_ids.insert(id);
                self.orders.push((
                    id,
                    order_number.as_str().to_string(),
                    patient_id.as_uuid(),
                    p.as_str(),
                    collection_site.as_str().to_string(),
                    ordering_clinician.as_str().to_string(),
                    at,
                ));
                for t in tests {
                    let code = t.code.as_str().to_string();
                    if !self.order_test_keys.insert((id, code.clone())) {
                        // The same test twice in one order: the row is the last one.
                        self.order_tests.retain(|r| !(r.0 == id && r.1 == code));
                    }
                    self.order_tests.push((id, code, t.catalogue_version.0, at));
                }
            }
            LabEvent::Sample(SampleEvent::SampleCollected {
                order_id,
                tests,
                collected_at,
                ..
            }) => {
                if self.specimen_times.contains_key(&id)
                    || tests.iter().any(|t| {
                        self.specimen_test_keys
                            .contains(&(id, t.as_str().to_string()))
                    })
                {
                    return Ok(Fold::FlushFirst);
                }
                for t in tests {
                    self.specimen_test_keys.insert((id, t.as_str().to_string()));
                    self.specimen_tests.push((
                        id,
                        t.as_str().to_string(),
                        order_id.as_uuid(),
                        *collected_at,
                    ));
                }
            }
            LabEvent::Sample(SampleEvent::SampleReceived { received_at, .. }) => {
                self.specimen_times.entry(id).or_default().0 = Some(*received_at);
            }
            LabEvent::Sample(SampleEvent::SampleRejected { .. }) => {
                self.specimen_times.entry(id).or_default().1 = Some(at);
            }
            LabEvent::Result(ResultEvent::ResultRecorded {
                order_id,
                test_code,
                ..
            }) => {
                if self.result_ids.contains(&id) || self.result_status.contains_key(&id) {
                    return Ok(Fold::FlushFirst);
                }
                self.result_ids.insert(id);
                self.results
                    .push((id, order_id.as_uuid(), test_code.as_str().to_string(), at));
            }
            LabEvent::Result(ResultEvent::ResultVerified { .. }) => {
                let s = self.stage(id, "verified", at);
                s.verified_at = s.verified_at.or(Some(at));
            }
            LabEvent::Result(ResultEvent::ResultAuthorised { .. }) => {
                let s = self.stage(id, "released", at);
                s.released_at = s.released_at.or(Some(at));
            }
            LabEvent::Order(_) | LabEvent::Sample(_) | LabEvent::Result(_)
                if changes_nothing(event) => {}
            // Erasure is the engine's purge, not a write of this model.
            LabEvent::Patient(_) => {}
            _ => return Ok(Fold::Alone),
        }
        Ok(Fold::Taken)
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let orders = std::mem::take(&mut self.orders);
        if !orders.is_empty() {
            sqlx::query(
                "INSERT INTO orders (order_id, order_number, patient_id, priority, collection_site,
                                     ordering_clinician, status, placed_at, updated_at)
                 SELECT o, n, p, pr, s, c, 'active', t, t
                   FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                               $7::timestamptz[]) AS u(o, n, p, pr, s, c, t)",
            )
            .bind(orders.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.4.clone()).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.5.clone()).collect::<Vec<_>>())
            .bind(orders.iter().map(|r| r.6).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let tests = std::mem::take(&mut self.order_tests);
        if !tests.is_empty() {
            sqlx::query(
                "INSERT INTO order_tests (order_id, test_code, department, catalogue_version, ordered_at)
                 SELECT o, c, (SELECT department FROM catalogue_tests WHERE version = v AND code = c), v, t
                   FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[]) AS u(o, c, v, t)
                 ON CONFLICT (order_id, test_code) DO UPDATE
                    SET ordered_at = excluded.ordered_at, catalogue_version = excluded.catalogue_version,
                        cancelled_at = NULL, cancelled_reason = NULL",
            )
            .bind(tests.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(tests.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
            .bind(tests.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(tests.iter().map(|r| r.3).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        // Rows new in this run are inserted with the times and stages the run gave them:
        // one write each, where an insert and an update would write them twice.
        let specimen_tests = std::mem::take(&mut self.specimen_tests);
        if !specimen_tests.is_empty() {
            let times = |r: &(Uuid, String, Uuid, DateTime<Utc>)| {
                self.specimen_times.get(&r.0).copied().unwrap_or_default()
            };
            sqlx::query(
                "INSERT INTO specimen_tests (sample_id, test_code, order_id, collected_at, received_at, rejected_at)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[],
                                      $5::timestamptz[], $6::timestamptz[])",
            )
            .bind(specimen_tests.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(
                specimen_tests
                    .iter()
                    .map(|r| r.1.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(specimen_tests.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(specimen_tests.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(specimen_tests.iter().map(|r| times(r).0).collect::<Vec<_>>())
            .bind(specimen_tests.iter().map(|r| times(r).1).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
            for r in &specimen_tests {
                self.specimen_times.remove(&r.0);
            }
        }
        let times: Vec<_> = self.specimen_times.drain().collect();
        if !times.is_empty() {
            sqlx::query(
                "UPDATE specimen_tests s SET received_at = coalesce(u.r, s.received_at),
                        rejected_at = coalesce(u.j, s.rejected_at)
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS u(id, r, j)
                  WHERE s.sample_id = u.id",
            )
            .bind(times.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(times.iter().map(|(_, t)| t.0).collect::<Vec<_>>())
            .bind(times.iter().map(|(_, t)| t.1).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let results = std::mem::take(&mut self.results);
        if !results.is_empty() {
            let stages: Vec<Option<ResultStage>> = results
                .iter()
                .map(|r| self.result_status.remove(&r.0))
                .collect();
            sqlx::query(
                "INSERT INTO result_tests (result_id, order_id, test_code, status, resulted_at, status_since,
                                           verified_at, released_at)
                 SELECT r, o, c, coalesce(s, 'recorded'), t, coalesce(st, t), v, l
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
                               $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
                     AS u(r, o, c, t, s, st, v, l)
                 ON CONFLICT (result_id) DO UPDATE SET status = excluded.status,
                    status_since = excluded.status_since, resulted_at = excluded.resulted_at,
                    verified_at = excluded.verified_at,
                    released_at = coalesce(result_tests.released_at, excluded.released_at)",
            )
            .bind(results.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(results.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(results.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
            .bind(results.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(stages.iter().map(|s| s.as_ref().map(|s| s.status)).collect::<Vec<_>>())
            .bind(stages.iter().map(|s| s.as_ref().map(|s| s.since)).collect::<Vec<_>>())
            .bind(stages.iter().map(|s| s.as_ref().and_then(|s| s.verified_at)).collect::<Vec<_>>())
            .bind(stages.iter().map(|s| s.as_ref().and_then(|s| s.released_at)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let stages: Vec<_> = self.result_status.drain().collect();
        if !stages.is_empty() {
            sqlx::query(
                "UPDATE result_tests r SET status = u.s, status_since = u.t,
                        verified_at = coalesce(r.verified_at, u.v), released_at = coalesce(r.released_at, u.l)
                   FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[])
                     AS u(id, s, t, v, l)
                  WHERE r.result_id = u.id",
            )
            .bind(stages.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(stages.iter().map(|(_, s)| s.status).collect::<Vec<_>>())
            .bind(stages.iter().map(|(_, s)| s.since).collect::<Vec<_>>())
            .bind(stages.iter().map(|(_, s)| s.verified_at).collect::<Vec<_>>())
            .bind(stages.iter().map(|(_, s)| s.released_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        self.order_ids.clear();
        self.order_test_keys.clear();
        self.specimen_test_keys.clear();
        self.result_ids.clear();
        Ok(())
    }
}

impl PendingOrders {
    fn stage(&mut self, id: Uuid, status: &'static str, at: DateTime<Utc>) -> &mut ResultStage {
        let s = self.result_status.entry(id).or_insert(ResultStage {
            status,
            since: at,
            verified_at: None,
            released_at: None,
        });
        s.status = status;
        s.since = at;
        s
    }
}

/// Events this model does not write.
fn changes_nothing(event: &LabEvent) -> bool {
    !matches!(
        event,
        LabEvent::Order(
            OrderEvent::OrderPlaced { .. }
                | OrderEvent::TestsAdded { .. }
                | OrderEvent::TestCancelled { .. }
                | OrderEvent::OrderCancelled { .. }
        ) | LabEvent::Sample(
            SampleEvent::SampleCollected { .. }
                | SampleEvent::SampleReceived { .. }
                | SampleEvent::SampleRejected { .. }
        ) | LabEvent::Result(
            ResultEvent::ResultRecorded { .. }
                | ResultEvent::ResultCorrected { .. }
                | ResultEvent::RerunRequested { .. }
                | ResultEvent::ResultVerified { .. }
                | ResultEvent::ResultAuthorised { .. }
                | ResultEvent::ResultRetracted { .. }
        )
    )
}
