//! Specimen tracking, by accession number: where a specimen is, who holds it, its chain
//! of custody, its condition on receipt, rejection and reason, lineage and storage.

use crate::envelope::Envelope;
use crate::projection::{
    aggregate_uuid, apply_folded, Fold, LabEvent, Pending, Projection, ProjectionError,
};
use chrono::{DateTime, Utc};
use lis_domain::sample::{SampleEvent, SpecimenCondition};
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub struct Specimens;

fn condition(c: &SpecimenCondition) -> String {
    match c {
        SpecimenCondition::Satisfactory {} => "satisfactory".into(),
        SpecimenCondition::Compromised { note } => format!("compromised: {note}"),
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[async_trait::async_trait]
impl Projection for Specimens {
    fn name(&self) -> &'static str {
        "specimens"
    }

    fn ddl(&self) -> &'static str {
        "
CREATE TABLE IF NOT EXISTS specimens (
    sample_id         uuid PRIMARY KEY,
    accession_number  text NOT NULL UNIQUE,
    order_id          uuid NOT NULL,
    specimen_type     text NOT NULL,
    container         text NOT NULL,
    tests             text[] NOT NULL,
    status            text NOT NULL,
    holder            text,
    location          text,
    collected_by      text,
    collected_at      timestamptz NOT NULL,
    received_by       text,
    received_at       timestamptz,
    condition         text,
    rejection_reason  text,
    rejection_detail  text,
    recollection_requested bool NOT NULL DEFAULT false,
    parent_id         uuid,
    children          uuid[] NOT NULL DEFAULT '{}',
    storage           jsonb,
    disposed_at       timestamptz,
    updated_at        timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS specimens_by_order ON specimens (order_id);
CREATE TABLE IF NOT EXISTS custody (
    sample_id   uuid NOT NULL,
    sequence    bigint NOT NULL,
    from_holder text NOT NULL,
    to_holder   text NOT NULL,
    location    text NOT NULL,
    handed_at   timestamptz NOT NULL,
    temperature_celsius double precision,
    recorded_by text,
    PRIMARY KEY (sample_id, sequence));"
    }

    fn purge_sql(&self) -> &'static str {
        "WITH c AS (DELETE FROM custody WHERE sample_id = ANY ($3))
             DELETE FROM specimens WHERE sample_id = ANY ($3) OR order_id = ANY ($2)"
    }

    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        apply_folded::<PendingSpecimens>(self, conn, events).await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        // The common events are written as a run of one.
        let mut one = PendingSpecimens::default();
        if one.fold(env, event)? == Fold::Taken {
            return one.flush(conn).await;
        }
        let LabEvent::Sample(event) = event else {
            return Ok(());
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
        match event {
            SampleEvent::AliquotCreated {
                parent_id,
                order_id,
                accession_number,
                specimen_type,
                container,
                tests,
                collected_at,
                received_at,
                condition: c,
                ..
            } => {
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "INSERT INTO specimens (sample_id, accession_number, order_id, specimen_type, container, tests,
                                            status, holder, collected_at, received_by, received_at, condition,
                                            parent_id, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'received', $7, $8, $7, $9, $10, $11, $12)",
                )
                .bind(id)
                .bind(accession_number.as_str())
                .bind(order_id.as_uuid())
                .bind(specimen_type)
                .bind(container)
                .bind(&codes)
                .bind(env.actor.id.as_str())
                .bind(collected_at)
                .bind(received_at)
                .bind(condition(c))
                .bind(parent_id.as_uuid())
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            SampleEvent::SampleHandedOver(h) => {
                sqlx::query(
                    "INSERT INTO custody (sample_id, sequence, from_holder, to_holder, location, handed_at,
                                          temperature_celsius, recorded_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(id)
                .bind(env.sequence)
                .bind(h.from.as_str())
                .bind(h.to.as_str())
                .bind(h.location.as_str())
                .bind(h.at)
                .bind(h.temperature_celsius)
                .bind(env.actor.id.as_str())
                .execute(&mut *conn)
                .await?;
                sqlx::query("UPDATE specimens SET holder = $2, location = $3, updated_at = $4 WHERE sample_id = $1")
                    .bind(id)
                    .bind(h.to.as_str())
                    .bind(h.location.as_str())
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
            }
            SampleEvent::SampleAliquoted { children } => {
                let ids: Vec<Uuid> = children.iter().map(|c| c.sample_id.as_uuid()).collect();
                sqlx::query("UPDATE specimens SET children = children || $2, updated_at = $3 WHERE sample_id = $1")
                    .bind(id)
                    .bind(&ids)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
            }
            SampleEvent::SampleStored { location } => {
                sqlx::query(
                    "UPDATE specimens SET storage = $2, location = $3, holder = 'storage', updated_at = $4 WHERE sample_id = $1",
                )
                .bind(id)
                .bind(json(location))
                .bind(location.room.as_str())
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            // Folded above.
            SampleEvent::SampleCollected { .. }
            | SampleEvent::SampleReceived { .. }
            | SampleEvent::SampleRejected { .. } => {}
            SampleEvent::SampleDisposed { .. } => {
                sqlx::query(
                    "UPDATE specimens SET status = 'disposed', disposed_at = $2, holder = NULL, updated_at = $2 WHERE sample_id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// (sample, received by, received at, condition, recorded at)
type Receipt = (Uuid, String, DateTime<Utc>, String, DateTime<Utc>);
/// (sample, reason, detail, recollection requested, recorded at)
type Rejection = (Uuid, &'static str, Option<String>, bool, DateTime<Utc>);

/// A run's collected specimens (one row each), then receipts and rejections (at most one
/// change per specimen in a run: a second one writes the first before it). A specimen
/// collected in the run takes its change into its own row, which is then inserted once
/// as the change left it, where an insert and an update would write it twice.
#[derive(Default)]
struct PendingSpecimens {
    collected: Vec<Collected>,
    /// Where each specimen collected in this run is in `collected`.
    collected_index: HashMap<Uuid, usize>,
    /// Specimens collected in this run.
    touched: HashSet<Uuid>,
    /// Specimens received or rejected in this run.
    changed: HashSet<Uuid>,
    received: Vec<Receipt>,
    rejected: Vec<Rejection>,
}

struct Collected {
    id: Uuid,
    accession_number: String,
    order_id: Uuid,
    specimen_type: String,
    container: String,
    tests: String,
    collected_by: String,
    collected_at: DateTime<Utc>,
    /// Its receipt in the same run: (received by, received at, condition).
    receipt: Option<(String, DateTime<Utc>, String)>,
    /// Its rejection in the same run: (reason, detail, recollection requested).
    rejection: Option<(&'static str, Option<String>, bool)>,
    /// The time of its last event in the run.
    at: DateTime<Utc>,
}

#[async_trait::async_trait]
impl Pending for PendingSpecimens {
    fn fold(&mut self, env: &Envelope, event: &LabEvent) -> Result<Fold, ProjectionError> {
        let LabEvent::Sample(event) = event else {
            return Ok(Fold::Taken);
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
        let first_change = |this: &mut Self| this.changed.insert(id);
        match event {
            SampleEvent::SampleCollected {
                order_id,
                accession_number,
                specimen_type,
                container,
                tests,
                collected_by,
                collected_at,
                ..
            } => {
                if !self.touched.insert(id) {
                    return Ok(Fold::FlushFirst);
                }
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                self.collected_index.insert(id, self.collected.len());
                self.collected.push(Collected {
                    id,
                    accession_number: accession_number.as_str().to_string(),
                    order_id: order_id.as_uuid(),
                    specimen_type: specimen_type.clone(),
                    container: container.clone(),
                    tests: serde_json::to_string(&codes).unwrap_or_default(),
                    collected_by: collected_by.as_str().to_string(),
                    collected_at: *collected_at,
                    receipt: None,
                    rejection: None,
                    at,
                });
            }
            SampleEvent::SampleReceived {
                received_by,
                received_at,
                condition: c,
            } => {
                if !first_change(self) {
                    return Ok(Fold::FlushFirst);
                }
                let by = received_by.as_str().to_string();
                match self.collected_index.get(&id) {
                    Some(&i) => {
                        let row = &mut self.collected[i];
                        row.receipt = Some((by, *received_at, condition(c)));
                        row.at = at;
                    }
                    None => self.received.push((id, by, *received_at, condition(c), at)),
                }
            }
            SampleEvent::SampleRejected {
                reason,
                detail,
                recollection_requested,
            } => {
                if !first_change(self) {
                    return Ok(Fold::FlushFirst);
                }
                let detail = detail.as_ref().map(|d| d.as_str().to_string());
                let rejection = (reason.code(), detail, *recollection_requested);
                match self.collected_index.get(&id) {
                    Some(&i) => {
                        let row = &mut self.collected[i];
                        row.rejection = Some(rejection);
                        row.at = at;
                    }
                    None => {
                        let (reason, detail, recollect) = rejection;
                        self.rejected.push((id, reason, detail, recollect, at));
                    }
                }
            }
            _ => return Ok(Fold::Alone),
        }
        Ok(Fold::Taken)
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let collected = std::mem::take(&mut self.collected);
        if !collected.is_empty() {
            let text = |f: fn(&Collected) -> &String| collected.iter().map(f).collect::<Vec<_>>();
            let receipt = |f: fn(&(String, DateTime<Utc>, String)) -> String| {
                collected
                    .iter()
                    .map(|r| r.receipt.as_ref().map(f))
                    .collect::<Vec<_>>()
            };
            sqlx::query(
                "INSERT INTO specimens (sample_id, accession_number, order_id, specimen_type, container, tests,
                                        status, holder, collected_by, collected_at, received_by, received_at,
                                        condition, rejection_reason, rejection_detail, recollection_requested,
                                        updated_at)
                 SELECT id, a, o, s, c, ARRAY(SELECT json_array_elements_text(t::json)),
                        CASE WHEN jr IS NOT NULL THEN 'rejected' WHEN rr IS NOT NULL THEN 'received'
                             ELSE 'collected' END,
                        coalesce(rb, b), b, ca, rb, rr, rc, jr, jd, coalesce(jq, false), at
                   FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[],
                               $11::timestamptz[], $12::text[], $13::text[], $14::text[], $15::bool[])
                     AS u(id, a, o, s, c, t, b, ca, at, rb, rr, rc, jr, jd, jq)",
            )
            .bind(collected.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(text(|r| &r.accession_number))
            .bind(collected.iter().map(|r| r.order_id).collect::<Vec<_>>())
            .bind(text(|r| &r.specimen_type))
            .bind(text(|r| &r.container))
            .bind(text(|r| &r.tests))
            .bind(text(|r| &r.collected_by))
            .bind(collected.iter().map(|r| r.collected_at).collect::<Vec<_>>())
            .bind(collected.iter().map(|r| r.at).collect::<Vec<_>>())
            .bind(receipt(|r| r.0.clone()))
            .bind(collected.iter().map(|r| r.receipt.as_ref().map(|r| r.1)).collect::<Vec<_>>())
            .bind(receipt(|r| r.2.clone()))
            .bind(collected.iter().map(|r| r.rejection.as_ref().map(|j| j.0)).collect::<Vec<_>>())
            .bind(collected.iter().map(|r| r.rejection.as_ref().and_then(|j| j.1.clone())).collect::<Vec<_>>())
            .bind(collected.iter().map(|r| r.rejection.as_ref().map(|j| j.2)).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let received = std::mem::take(&mut self.received);
        if !received.is_empty() {
            sqlx::query(
                "UPDATE specimens x SET status = 'received', received_by = u.b, received_at = u.r,
                        condition = u.c, holder = u.b, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[])
                     AS u(id, b, r, c, at)
                  WHERE x.sample_id = u.id",
            )
            .bind(received.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(received.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
            .bind(received.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(received.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
            .bind(received.iter().map(|r| r.4).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let rejected = std::mem::take(&mut self.rejected);
        if !rejected.is_empty() {
            sqlx::query(
                "UPDATE specimens x SET status = 'rejected', rejection_reason = u.r, rejection_detail = u.d,
                        recollection_requested = u.q, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[])
                     AS u(id, r, d, q, at)
                  WHERE x.sample_id = u.id",
            )
            .bind(rejected.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.4).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        self.touched.clear();
        self.changed.clear();
        self.collected_index.clear();
        Ok(())
    }
}
