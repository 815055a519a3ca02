//! Specimen tracking, by accession number: where a specimen is, who holds it, its chain
//! of custody, its condition on receipt, rejection and reason, lineage and storage.

use crate::envelope::Envelope;
use crate::erasure::{purge_with, Erased};
use crate::projection::{aggregate_uuid, LabEvent, Projection, ProjectionError};
use lis_domain::sample::{SampleEvent, SpecimenCondition};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct Specimens;

fn condition(c: &SpecimenCondition) -> String {
    match c {
        SpecimenCondition::Satisfactory => "satisfactory".into(),
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

    async fn purge(&self, conn: &mut PgConnection, erased: &Erased) -> Result<(), ProjectionError> {
        purge_with(
            conn,
            "WITH c AS (DELETE FROM custody WHERE sample_id = ANY ($3))
             DELETE FROM specimens WHERE sample_id = ANY ($3) OR order_id = ANY ($2)",
            erased,
        )
        .await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        let LabEvent::Sample(event) = event else {
            return Ok(());
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
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
                let codes: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "INSERT INTO specimens (sample_id, accession_number, order_id, specimen_type, container, tests,
                                            status, holder, collected_by, collected_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'collected', $7, $7, $8, $9)",
                )
                .bind(id)
                .bind(accession_number.as_str())
                .bind(order_id.as_uuid())
                .bind(specimen_type)
                .bind(container)
                .bind(&codes)
                .bind(collected_by.as_str())
                .bind(collected_at)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
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
            SampleEvent::SampleReceived {
                received_by,
                received_at,
                condition: c,
            } => {
                sqlx::query(
                    "UPDATE specimens SET status = 'received', received_by = $2, received_at = $3, condition = $4,
                            holder = $2, updated_at = $5 WHERE sample_id = $1",
                )
                .bind(id)
                .bind(received_by.as_str())
                .bind(received_at)
                .bind(condition(c))
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            SampleEvent::SampleRejected {
                reason,
                detail,
                recollection_requested,
            } => {
                let reason = reason.code();
                sqlx::query(
                    "UPDATE specimens SET status = 'rejected', rejection_reason = $2, rejection_detail = $3,
                            recollection_requested = $4, updated_at = $5 WHERE sample_id = $1",
                )
                .bind(id)
                .bind(reason)
                .bind(detail.as_ref().map(|d| d.as_str()))
                .bind(recollection_requested)
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
