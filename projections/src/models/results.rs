//! Results as the lab and clinicians see them: the current value, flags, interval
//! applied, status, who verified and released, amendment count, and the critical-value
//! follow-up (notified, acknowledged). A patient's cumulative report is the released rows
//! (amended ones marked); retracted results leave it.

use crate::envelope::Envelope;
use crate::erasure::{purge_with, Erased};
use crate::projection::{aggregate_uuid, LabEvent, Projection, ProjectionError};
use lis_domain::flags::Flag;
use lis_domain::result::ResultEvent;
use lis_domain::value::ResultValue;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct Results;

fn flags(f: &[Flag]) -> Vec<String> {
    f.iter().map(|f| f.as_str().to_string()).collect()
}

fn numeric(v: &ResultValue) -> (Option<f64>, Option<&str>) {
    match v {
        ResultValue::Numeric { value, unit } => (Some(*value), Some(unit.as_str())),
        ResultValue::Coded { .. } => (None, None),
    }
}

async fn revalue(
    conn: &mut PgConnection,
    id: Uuid,
    value: &ResultValue,
    new_flags: &[Flag],
    at: chrono::DateTime<chrono::Utc>,
    status: Option<&str>,
    amended: bool,
) -> Result<(), ProjectionError> {
    let (n, _) = numeric(value);
    let critical = new_flags.iter().any(Flag::is_critical);
    sqlx::query(
        "UPDATE results SET value = $2, numeric_value = $3, flags = $4, critical = $5,
                notified = false, acknowledged = false, status = coalesce($6, status),
                amendments = amendments + $7, verified_by = CASE WHEN $6 IS NULL THEN verified_by ELSE NULL END,
                updated_at = $8
          WHERE result_id = $1",
    )
    .bind(id)
    .bind(serde_json::to_value(value).unwrap_or_default())
    .bind(n)
    .bind(flags(new_flags))
    .bind(critical)
    .bind(status)
    .bind(i32::from(amended))
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `UPDATE results SET <assignments>` where `$2` is the event time and `$3` the text.
async fn set(
    conn: &mut PgConnection,
    id: Uuid,
    assignments: &str,
    text: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let sql = format!("UPDATE results SET {assignments}, updated_at = $2 WHERE result_id = $1");
    let mut query = sqlx::query(&sql).bind(id).bind(at);
    if let Some(t) = text {
        query = query.bind(t);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

#[async_trait::async_trait]
impl Projection for Results {
    fn name(&self) -> &'static str {
        "results"
    }

    fn ddl(&self) -> &'static str {
        "
CREATE TABLE IF NOT EXISTS results (
    result_id         uuid PRIMARY KEY,
    sample_id         uuid NOT NULL,
    order_id          uuid NOT NULL,
    patient_id        uuid NOT NULL,
    test_code         text NOT NULL,
    loinc             text NOT NULL,
    collected_at      timestamptz NOT NULL,
    value             jsonb NOT NULL,
    numeric_value     double precision,
    unit              text,
    flags             text[] NOT NULL,
    reference_low     double precision,
    reference_high    double precision,
    reference_basis   text NOT NULL,
    catalogue_version integer NOT NULL,
    specimen_note     text,
    status            text NOT NULL,
    critical          bool NOT NULL,
    notified          bool NOT NULL DEFAULT false,
    acknowledged      bool NOT NULL DEFAULT false,
    amendments        integer NOT NULL DEFAULT 0,
    recorded_at       timestamptz NOT NULL,
    recorded_by       text,
    verified_by       text,
    released_by       text,
    released_at       timestamptz,
    retraction_reason text,
    updated_at        timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS results_cumulative ON results (patient_id, test_code, collected_at) WHERE status = 'released';
CREATE INDEX IF NOT EXISTS results_critical ON results (recorded_at) WHERE critical AND status <> 'retracted';
CREATE OR REPLACE VIEW cumulative_results AS
SELECT result_id, patient_id, order_id, sample_id, test_code, loinc, collected_at, value, numeric_value, unit,
       flags, reference_low, reference_high, reference_basis, catalogue_version, specimen_note,
       amendments, amendments > 0 AS amended, verified_by, released_by, released_at
  FROM results
 WHERE status = 'released';
CREATE OR REPLACE VIEW critical_pending AS
SELECT result_id, patient_id, order_id, test_code, value, unit, flags, status, notified, acknowledged,
       recorded_at, released_at,
       CASE WHEN NOT notified THEN 'notification' ELSE 'acknowledgement' END AS awaiting
  FROM results
 WHERE critical AND status <> 'retracted' AND (NOT notified OR (status = 'released' AND NOT acknowledged));"
    }

    async fn purge(&self, conn: &mut PgConnection, erased: &Erased) -> Result<(), ProjectionError> {
        purge_with(
            conn,
            "DELETE FROM results WHERE result_id = ANY ($4) OR order_id = ANY ($2) OR patient_id = ANY ($1)",
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
        let LabEvent::Result(event) = event else {
            return Ok(());
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
        match event {
            ResultEvent::ResultRecorded {
                sample_id,
                order_id,
                patient_id,
                test_code,
                loinc,
                value,
                catalogue_version,
                reference,
                flags: f,
                specimen_note,
                collected_at,
                ..
            } => {
                let (n, unit) = numeric(value);
                let interval = reference.interval.unwrap_or_default();
                // A rerun records again on the same result: the row is replaced.
                sqlx::query(
                    "INSERT INTO results (result_id, sample_id, order_id, patient_id, test_code, loinc, collected_at,
                         value, numeric_value, unit, flags, reference_low, reference_high, reference_basis,
                         catalogue_version, specimen_note, status, critical, recorded_at, recorded_by, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'recorded', $17, $18, $19, $18)
                     ON CONFLICT (result_id) DO UPDATE SET value = excluded.value, numeric_value = excluded.numeric_value,
                         flags = excluded.flags, critical = excluded.critical, status = 'recorded', notified = false,
                         acknowledged = false, verified_by = NULL, recorded_at = excluded.recorded_at,
                         recorded_by = excluded.recorded_by, catalogue_version = excluded.catalogue_version,
                         updated_at = excluded.updated_at",
                )
                .bind(id)
                .bind(sample_id.as_uuid())
                .bind(order_id.as_uuid())
                .bind(patient_id.as_uuid())
                .bind(test_code.as_str())
                .bind(loinc)
                .bind(collected_at)
                .bind(serde_json::to_value(value).unwrap_or_default())
                .bind(n)
                .bind(unit)
                .bind(flags(f))
                .bind(interval.low)
                .bind(interval.high)
                .bind(&reference.basis)
                .bind(catalogue_version.0)
                .bind(specimen_note.as_ref().map(|s| s.as_str()))
                .bind(f.iter().any(Flag::is_critical))
                .bind(at)
                .bind(env.actor.id.as_str())
                .execute(&mut *conn)
                .await?;
            }
            ResultEvent::ResultCorrected {
                value, flags: f, ..
            } => revalue(conn, id, value, f, at, Some("recorded"), false).await?,
            ResultEvent::ResultAmended {
                value, flags: f, ..
            } => revalue(conn, id, value, f, at, None, true).await?,
            ResultEvent::ResultVerified { verified_by } => {
                set(
                    conn,
                    id,
                    "status = 'verified', verified_by = $3",
                    Some(verified_by.as_str()),
                    at,
                )
                .await?
            }
            ResultEvent::ResultAuthorised { authorised_by, .. } => {
                set(
                    conn,
                    id,
                    "status = 'released', released_by = $3, released_at = $2",
                    Some(authorised_by.as_str()),
                    at,
                )
                .await?
            }
            ResultEvent::ResultRetracted { reason, .. } => {
                set(
                    conn,
                    id,
                    "status = 'retracted', retraction_reason = $3",
                    Some(reason.as_str()),
                    at,
                )
                .await?
            }
            ResultEvent::RerunRequested { .. } => {
                set(
                    conn,
                    id,
                    "status = 'rerun_requested', verified_by = NULL",
                    None,
                    at,
                )
                .await?
            }
            ResultEvent::CriticalValueNotified { notification, .. } => {
                if notification.read_back_confirmed {
                    set(conn, id, "notified = true", None, at).await?
                }
            }
            ResultEvent::ResultAcknowledged { .. } => {
                set(conn, id, "acknowledged = true", None, at).await?
            }
        }
        Ok(())
    }
}
