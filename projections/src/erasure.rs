//! Erasure on the read side: when a patient is erased, every read model drops the rows of
//! their orders, specimens and results, and keeps them dropped whatever order the events
//! arrive in.
//!
//! Kafka delivers each aggregate's events in order but interleaves aggregates freely, so a
//! `PatientErased` may be projected before a late `SampleReceived` of that patient's
//! specimen. Each projection schema therefore keeps the links that tie aggregates to a
//! patient — order → patient, sample → order, result → order: pseudonymous ids only —
//! and the set of erased patients. At the end of every batch the engine works out which
//! ids the batch touched that belong to an erased patient (one query) and has the
//! projection purge them inside the batch's transaction, so a purged row is never visible
//! and never comes back; a rebuild reaches the same state.

use crate::projection::{LabEvent, ProjectionError};
use lis_domain::order::OrderEvent;
use lis_domain::patient_record::PatientEvent;
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use sqlx::PgConnection;
use uuid::Uuid;

/// The engine's tables for erasure (run in every projection's schema).
pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS erased_patients (
    patient_id uuid PRIMARY KEY);
CREATE TABLE IF NOT EXISTS order_patients (
    order_id   uuid PRIMARY KEY,
    patient_id uuid NOT NULL);
CREATE INDEX IF NOT EXISTS order_patients_by_patient ON order_patients (patient_id);
CREATE TABLE IF NOT EXISTS sample_orders (
    sample_id uuid PRIMARY KEY,
    order_id  uuid NOT NULL);
CREATE INDEX IF NOT EXISTS sample_orders_by_order ON sample_orders (order_id);
CREATE TABLE IF NOT EXISTS result_orders (
    result_id uuid PRIMARY KEY,
    order_id  uuid NOT NULL);
CREATE INDEX IF NOT EXISTS result_orders_by_order ON result_orders (order_id)";

/// What a batch taught about patients: links, erasures, and the ids it touched.
#[derive(Debug, Default)]
pub struct BatchLinks {
    orders: (Vec<Uuid>, Vec<Uuid>),
    samples: (Vec<Uuid>, Vec<Uuid>),
    results: (Vec<Uuid>, Vec<Uuid>),
    erased: Vec<Uuid>,
    touched: Vec<Uuid>,
}

/// Ids of an erased patient's records that a projection must purge.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    pub patients: Vec<Uuid>,
    pub orders: Vec<Uuid>,
    pub samples: Vec<Uuid>,
    pub results: Vec<Uuid>,
}

impl Erased {
    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
            && self.orders.is_empty()
            && self.samples.is_empty()
            && self.results.is_empty()
    }
}

impl BatchLinks {
    /// Notes what `event` says about patients.
    pub fn note(&mut self, id: Uuid, event: &LabEvent) {
        self.touched.push(id);
        match event {
            LabEvent::Order(OrderEvent::OrderPlaced { patient_id, .. }) => {
                self.orders.0.push(id);
                self.orders.1.push(patient_id.as_uuid());
            }
            LabEvent::Sample(SampleEvent::SampleCollected { order_id, .. })
            | LabEvent::Sample(SampleEvent::AliquotCreated { order_id, .. }) => {
                self.samples.0.push(id);
                self.samples.1.push(order_id.as_uuid());
            }
            LabEvent::Result(ResultEvent::ResultRecorded { order_id, .. }) => {
                self.results.0.push(id);
                self.results.1.push(order_id.as_uuid());
            }
            LabEvent::Patient(PatientEvent::PatientErased { .. }) => self.erased.push(id),
            _ => {}
        }
    }

    /// Records the links and erasures, then returns what the batch touched that belongs
    /// to an erased patient (empty on the usual batch: one query, no purge).
    pub async fn resolve(self, conn: &mut PgConnection) -> Result<Erased, ProjectionError> {
        if !self.orders.0.is_empty()
            || !self.samples.0.is_empty()
            || !self.results.0.is_empty()
            || !self.erased.is_empty()
        {
            sqlx::query(
                "WITH o AS (INSERT INTO order_patients SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING),
                      s AS (INSERT INTO sample_orders SELECT * FROM unnest($3::uuid[], $4::uuid[]) ON CONFLICT DO NOTHING),
                      r AS (INSERT INTO result_orders SELECT * FROM unnest($5::uuid[], $6::uuid[]) ON CONFLICT DO NOTHING)
                 INSERT INTO erased_patients SELECT * FROM unnest($7::uuid[]) ON CONFLICT DO NOTHING",
            )
            .bind(&self.orders.0)
            .bind(&self.orders.1)
            .bind(&self.samples.0)
            .bind(&self.samples.1)
            .bind(&self.results.0)
            .bind(&self.results.1)
            .bind(&self.erased)
            .execute(&mut *conn)
            .await?;
        }
        // Orders of erased patients that the batch touched (directly, through one of their
        // specimens or results, or by erasing the patient), then everything under them.
        let rows: Vec<(String, Uuid)> = sqlx::query_as(
            "WITH hit AS (
                 SELECT op.order_id, op.patient_id FROM order_patients op
                   JOIN erased_patients e USING (patient_id)
                  WHERE op.order_id = ANY ($1) OR op.patient_id = ANY ($2)
                     OR op.order_id IN (SELECT order_id FROM sample_orders WHERE sample_id = ANY ($1))
                     OR op.order_id IN (SELECT order_id FROM result_orders WHERE result_id = ANY ($1)))
             SELECT 'patient', patient_id FROM erased_patients WHERE patient_id = ANY ($2)
             UNION SELECT 'patient', patient_id FROM hit
             UNION SELECT 'order', order_id FROM hit
             UNION SELECT 'sample', sample_id FROM sample_orders WHERE order_id IN (SELECT order_id FROM hit)
             UNION SELECT 'result', result_id FROM result_orders WHERE order_id IN (SELECT order_id FROM hit)",
        )
        .bind(&self.touched)
        .bind(&self.erased)
        .fetch_all(&mut *conn)
        .await?;
        let mut erased = Erased::default();
        for (kind, id) in rows {
            match kind.as_str() {
                "patient" => erased.patients.push(id),
                "order" => erased.orders.push(id),
                "sample" => erased.samples.push(id),
                _ => erased.results.push(id),
            }
        }
        Ok(erased)
    }
}

/// Runs a projection's purge statement with `$1` = patients, `$2` = orders, `$3` = samples
/// and `$4` = results (uuid arrays).
pub async fn purge_with(
    conn: &mut PgConnection,
    statement: &str,
    erased: &Erased,
) -> Result<(), ProjectionError> {
    sqlx::query(statement)
        .bind(&erased.patients)
        .bind(&erased.orders)
        .bind(&erased.samples)
        .bind(&erased.results)
        .execute(conn)
        .await?;
    Ok(())
}
