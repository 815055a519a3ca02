//! Results as the lab and clinicians see them: the current value, flags, interval
//! applied, status, who verified and released, amendment count (with the latest
//! amendment's time and the value it replaced), and the critical-value follow-up
//! (notified, acknowledged). A patient's cumulative report is the released rows
//! (amended ones marked); retracted results leave it.

use crate::envelope::Envelope;
use crate::projection::{
    aggregate_uuid, apply_folded, Fold, LabEvent, Pending, Projection, ProjectionError,
};
use chrono::{DateTime, Utc};
use lis_domain::flags::Flag;
use lis_domain::result::ResultEvent;
use lis_domain::value::ResultValue;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

pub struct Results {
    /// Patients per part when a rebuild builds the reports ([`BUILD_REPORTS`]).
    reports_per_part: i64,
}

impl Default for Results {
    fn default() -> Self {
        Self {
            reports_per_part: REPORTS_PER_PART,
        }
    }
}

impl Results {
    /// The model with a rebuild building `n` patients' reports a part (a test's few
    /// patients then take several parts).
    pub fn with_reports_per_part(n: i64) -> Self {
        Self {
            reports_per_part: n.max(1),
        }
    }
}

fn flags(f: &[Flag]) -> Vec<String> {
    f.iter().map(|f| f.as_str().to_string()).collect()
}

fn numeric(v: &ResultValue) -> (Option<f64>, Option<&str>) {
    match v {
        ResultValue::Numeric { value, unit } => (Some(*value), Some(unit.as_str())),
        ResultValue::Coded { .. } => (None, None),
    }
}

/// A value as the model stores it: the value's JSON, its number (numeric results), the
/// flags as a JSON array, and whether any flag is critical. Recorded, corrected and
/// amended values are all written from this.
struct StoredValue {
    value: String,
    numeric_value: Option<f64>,
    flags: String,
    critical: bool,
}

impl StoredValue {
    fn of(value: &ResultValue, f: &[Flag]) -> Self {
        Self {
            value: serde_json::to_string(value).unwrap_or_default(),
            numeric_value: numeric(value).0,
            flags: serde_json::to_string(&flags(f)).unwrap_or_default(),
            critical: f.iter().any(Flag::is_critical),
        }
    }
}

/// A patient's cumulative report, as JSON text, aggregated over rows `r` of
/// `cumulative_results`: what `GET /patients/{id}/results` answers.
macro_rules! report {
    () => {
        "json_agg(r ORDER BY r.test_code, r.collected_at, r.result_id)::text"
    };
}
pub const REPORT: &str = report!();

/// A patient's report (`$1`) aggregated from the rows, optionally of one test (`$2`)
/// and collected from `$3` and before `$4` (the first instants of the lab's days: the
/// caller works them out in the lab's time zone): what the endpoint answers for a
/// filtered request, or for a patient with no stored report.
pub const PATIENT_REPORT: &str = concat!(
    "SELECT ",
    report!(),
    " FROM proj_results.cumulative_results r
      WHERE r.patient_id = $1 AND ($2::text IS NULL OR r.test_code = $2)
        AND ($3::timestamptz IS NULL OR r.collected_at >= $3)
        AND ($4::timestamptz IS NULL OR r.collected_at < $4)"
);

/// The reports of the next [`REPORTS_PER_PART`] patients with released results after
/// patient `$1` (the nil id, which no patient has, to start), in id order; returns the
/// last patient's id, or no row when none was left. A range of ids, so that the rows are
/// read by an index range scan (joining the part's ids took 390 ms a part where the
/// range takes 220 ms). Written at the end of a rebuild's bulk phase, a part per
/// transaction ([`Projection::build_derived`]).
const BUILD_REPORTS: &str = concat!(
    "WITH upto AS (SELECT patient_id FROM (SELECT DISTINCT patient_id FROM cumulative_results
                                           WHERE patient_id > $1 ORDER BY patient_id LIMIT $2) p
                    ORDER BY patient_id DESC LIMIT 1),
          built AS (INSERT INTO cumulative_reports (patient_id, report)
                    SELECT r.patient_id, ",
    report!(),
    " FROM cumulative_results r
                     WHERE r.patient_id > $1 AND r.patient_id <= (SELECT patient_id FROM upto)
                     GROUP BY r.patient_id)
     SELECT patient_id FROM upto"
);

/// Patients per part of [`BUILD_REPORTS`]: 2,000 patients of the 1M-event benchmark
/// (~12,000 released results) took ~0.22 s a part.
const REPORTS_PER_PART: i64 = 2_000;

/// The advisory-lock class of a patient's report (the second key is a hash of the
/// patient id): see [`LOCK_REPORTS`].
const REPORT_LOCK: i32 = 7_302_419;

/// Locks the reports of the patients of results `$1`, in one order (no deadlock), until
/// the batch commits. Two workers of the model (Kafka consumers of different partitions)
/// may release two results of one patient at once: each computes the report from its
/// own snapshot, which lacks the other's uncommitted row, and the later commit would
/// keep a report missing the other's change. Holding the lock before
/// [`REFRESH_REPORTS`] takes its snapshot (read committed: a snapshot per statement)
/// means the second one computes after the first has committed, and sees it.
const LOCK_REPORTS: &str = "
SELECT count(pg_advisory_xact_lock($2, k))
  FROM (SELECT DISTINCT hashtext(patient_id::text) AS k FROM results
         WHERE result_id = ANY ($1) ORDER BY k) keys";

/// Recomputes the reports of the patients of results `$1` (released, amended or
/// retracted in the batch), and deletes those left with no released result.
const REFRESH_REPORTS: &str = concat!(
    "WITH patients AS (SELECT DISTINCT patient_id FROM results WHERE result_id = ANY ($1)),
          fresh AS (SELECT r.patient_id, ",
    report!(),
    " AS report FROM cumulative_results r JOIN patients p ON p.patient_id = r.patient_id
                     GROUP BY r.patient_id),
          emptied AS (DELETE FROM cumulative_reports c USING patients p
                       WHERE c.patient_id = p.patient_id
                         AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.patient_id = c.patient_id))
     INSERT INTO cumulative_reports (patient_id, report) SELECT patient_id, report FROM fresh
     ON CONFLICT (patient_id) DO UPDATE SET report = excluded.report"
);

/// Whether `event` can change a patient's released results: a release, an amendment
/// or a retraction. The domain allows no other change to a released result (a
/// correction or a rerun request is refused once released), so the rest leave the
/// report as it is.
fn changes_the_report(event: &LabEvent) -> bool {
    matches!(
        event,
        LabEvent::Result(
            ResultEvent::ResultAuthorised { .. }
                | ResultEvent::ResultAmended { .. }
                | ResultEvent::ResultRetracted { .. }
        )
    )
}

/// A corrected result: its new value and flags, back to `recorded` for verification again.
async fn correct(
    conn: &mut PgConnection,
    id: Uuid,
    value: StoredValue,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE results SET value = $2::jsonb, numeric_value = $3,
                flags = ARRAY(SELECT json_array_elements_text($4::json)), critical = $5,
                notified = false, acknowledged = false, status = 'recorded',
                verified_by = NULL, updated_at = $6
          WHERE result_id = $1",
    )
    .bind(id)
    .bind(value.value)
    .bind(value.numeric_value)
    .bind(value.flags)
    .bind(value.critical)
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
    updated_at        timestamptz NOT NULL,
    amended_at        timestamptz,
    previous_value    jsonb);
ALTER TABLE results ADD COLUMN IF NOT EXISTS amended_at timestamptz;
ALTER TABLE results ADD COLUMN IF NOT EXISTS previous_value jsonb;
CREATE INDEX IF NOT EXISTS results_cumulative ON results (patient_id, test_code, collected_at) WHERE status = 'released';
CREATE INDEX IF NOT EXISTS results_critical ON results (recorded_at) WHERE critical AND status <> 'retracted';
CREATE INDEX IF NOT EXISTS results_by_patient ON results (patient_id, collected_at DESC, result_id DESC);
CREATE OR REPLACE VIEW cumulative_results AS
SELECT result_id, patient_id, order_id, sample_id, test_code, loinc, collected_at, value, numeric_value, unit,
       flags, reference_low, reference_high, reference_basis, catalogue_version, specimen_note,
       amendments, amendments > 0 AS amended, verified_by, released_by, released_at
  FROM results
 WHERE status = 'released';
CREATE TABLE IF NOT EXISTS cumulative_reports (
    patient_id uuid PRIMARY KEY,
    report     text NOT NULL);
CREATE OR REPLACE VIEW critical_pending AS
SELECT result_id, patient_id, order_id, test_code, value, unit, flags, status, notified, acknowledged,
       recorded_at, released_at,
       CASE WHEN NOT notified THEN 'notification' ELSE 'acknowledgement' END AS awaiting
  FROM results
 WHERE critical AND status <> 'retracted' AND (NOT notified OR (status = 'released' AND NOT acknowledged));"
    }

    fn purge_sql(&self) -> &'static str {
        "WITH purged AS (
             DELETE FROM results WHERE result_id = ANY ($4) OR order_id = ANY ($2) OR patient_id = ANY ($1)
             RETURNING patient_id)
         DELETE FROM cumulative_reports
          WHERE patient_id = ANY ($1) OR patient_id IN (SELECT patient_id FROM purged)"
    }

    async fn refresh_derived(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        let mut released = Vec::new();
        for (env, event) in events {
            if changes_the_report(event) {
                released.push(aggregate_uuid(env)?);
            }
        }
        if released.is_empty() {
            return Ok(());
        }
        sqlx::query(LOCK_REPORTS)
            .bind(&released)
            .bind(REPORT_LOCK)
            .execute(&mut *conn)
            .await?;
        sqlx::query(REFRESH_REPORTS)
            .bind(released)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn build_derived(
        &self,
        conn: &mut PgConnection,
        after: Option<Uuid>,
    ) -> Result<Option<Uuid>, ProjectionError> {
        Ok(sqlx::query_scalar(BUILD_REPORTS)
            .bind(after.unwrap_or_else(Uuid::nil))
            .bind(self.reports_per_part)
            .fetch_optional(&mut *conn)
            .await?)
    }

    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        apply_folded::<PendingResults>(self, conn, events).await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError> {
        // The common events are written as a run of one.
        let mut one = PendingResults::default();
        if one.fold(env, event)? == Fold::Taken {
            return one.flush(conn).await;
        }
        let LabEvent::Result(event) = event else {
            return Ok(());
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
        match event {
            ResultEvent::ResultCorrected {
                value, flags: f, ..
            } => correct(conn, id, StoredValue::of(value, f), at).await?,
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
            // Folded above.
            ResultEvent::ResultAmended { .. }
            | ResultEvent::ResultAcknowledged { .. }
            | ResultEvent::ResultRecorded { .. }
            | ResultEvent::ResultVerified { .. }
            | ResultEvent::ResultAuthorised { .. }
            | ResultEvent::CriticalValueNotified { .. } => {}
        }
        Ok(())
    }
}

/// A run's recorded results (one row each) and the status changes folded over them or
/// over stored rows: verification, release, a read-back critical call, a clinician's
/// acknowledgement, an amendment. A result recorded in the run carries its own changes
/// and is inserted as they left it (one write, where an insert and an update would be
/// two); the changes to stored rows are one update.
#[derive(Default)]
struct PendingResults {
    recorded: Vec<Recorded>,
    /// Where each result recorded in this run is in `recorded`.
    recorded_index: HashMap<Uuid, usize>,
    patches: HashMap<Uuid, Patch>,
}

struct Recorded {
    id: Uuid,
    sample_id: Uuid,
    order_id: Uuid,
    patient_id: Uuid,
    test_code: String,
    loinc: String,
    collected_at: DateTime<Utc>,
    value: StoredValue,
    unit: Option<String>,
    reference_low: Option<f64>,
    reference_high: Option<f64>,
    reference_basis: String,
    catalogue_version: i32,
    specimen_note: Option<String>,
    recorded_at: DateTime<Utc>,
    recorded_by: String,
    /// Its changes later in the same run.
    patch: Patch,
}

/// Plain assignments, the last of each column winning, as in sequential application.
#[derive(Default)]
struct Patch {
    status: Option<&'static str>,
    verified_by: Option<String>,
    released_by: Option<String>,
    released_at: Option<DateTime<Utc>>,
    /// `Some(false)` after an amendment (the new value needs a new call), `Some(true)`
    /// after a read-back call.
    notified: Option<bool>,
    /// `Some(false)` after an amendment, `Some(true)` after a clinician's acknowledgement.
    acknowledged: Option<bool>,
    /// The latest amended value.
    amended: Option<StoredValue>,
    /// The latest amendment's number: the result's amendments so far.
    amendment: Option<i32>,
    /// The latest amendment's time, and the value it replaced (JSON).
    amended_at: Option<DateTime<Utc>>,
    previous_value: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

impl PendingResults {
    /// Where a change to result `id` goes: onto its row if it was recorded in this run,
    /// else into the update of stored rows.
    fn patch(&mut self, id: Uuid) -> &mut Patch {
        match self.recorded_index.get(&id) {
            Some(&i) => &mut self.recorded[i].patch,
            None => self.patches.entry(id).or_default(),
        }
    }
}

#[async_trait::async_trait]
impl Pending for PendingResults {
    fn fold(&mut self, env: &Envelope, event: &LabEvent) -> Result<Fold, ProjectionError> {
        let LabEvent::Result(event) = event else {
            return Ok(Fold::Taken);
        };
        let id = aggregate_uuid(env)?;
        let at = env.recorded_at;
        let patch = match event {
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
                if self.recorded_index.contains_key(&id) || self.patches.contains_key(&id) {
                    return Ok(Fold::FlushFirst);
                }
                let unit = numeric(value).1;
                let interval = reference.interval.unwrap_or_default();
                self.recorded_index.insert(id, self.recorded.len());
                self.recorded.push(Recorded {
                    id,
                    sample_id: sample_id.as_uuid(),
                    order_id: order_id.as_uuid(),
                    patient_id: patient_id.as_uuid(),
                    test_code: test_code.as_str().to_string(),
                    loinc: loinc.clone(),
                    collected_at: *collected_at,
                    value: StoredValue::of(value, f),
                    unit: unit.map(str::to_string),
                    reference_low: interval.low,
                    reference_high: interval.high,
                    reference_basis: reference.basis.clone(),
                    catalogue_version: catalogue_version.0,
                    specimen_note: specimen_note.as_ref().map(|s| s.as_str().to_string()),
                    recorded_at: at,
                    recorded_by: env.actor.id.clone(),
                    patch: Patch::default(),
                });
                return Ok(Fold::Taken);
            }
            ResultEvent::ResultVerified { verified_by } => {
                let p = self.patch(id);
                p.status = Some("verified");
                p.verified_by = Some(verified_by.as_str().to_string());
                p
            }
            ResultEvent::ResultAuthorised { authorised_by, .. } => {
                let p = self.patch(id);
                p.status = Some("released");
                p.released_by = Some(authorised_by.as_str().to_string());
                p.released_at = Some(at);
                p
            }
            ResultEvent::CriticalValueNotified { notification, .. } => {
                if !notification.read_back_confirmed {
                    return Ok(Fold::Taken);
                }
                let p = self.patch(id);
                p.notified = Some(true);
                p
            }
            ResultEvent::ResultAcknowledged { .. } => {
                let p = self.patch(id);
                p.acknowledged = Some(true);
                p
            }
            ResultEvent::ResultAmended {
                amendment,
                previous,
                value,
                flags: f,
                ..
            } => {
                let p = self.patch(id);
                p.amended = Some(StoredValue::of(value, f));
                p.amended_at = Some(at);
                p.previous_value = Some(serde_json::to_string(previous).unwrap_or_default());
                p.amendment = Some(i32::try_from(*amendment).unwrap_or(i32::MAX));
                p.notified = Some(false);
                p.acknowledged = Some(false);
                p
            }
            _ => return Ok(Fold::Alone),
        };
        patch.updated_at = Some(at);
        Ok(Fold::Taken)
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let recorded = std::mem::take(&mut self.recorded);
        self.recorded_index.clear();
        if !recorded.is_empty() {
            let col = |f: fn(&Recorded) -> String| recorded.iter().map(f).collect::<Vec<_>>();
            // The value as the run left it: the latest amendment's, else the recorded one.
            let values: Vec<&StoredValue> = recorded
                .iter()
                .map(|r| r.patch.amended.as_ref().unwrap_or(&r.value))
                .collect();
            sqlx::query(
                "INSERT INTO results (result_id, sample_id, order_id, patient_id, test_code, loinc, collected_at,
                     value, numeric_value, unit, flags, reference_low, reference_high, reference_basis,
                     catalogue_version, specimen_note, status, critical, recorded_at, recorded_by, verified_by,
                     released_by, released_at, notified, acknowledged, amendments, updated_at, amended_at,
                     previous_value)
                 SELECT id, sample_id, order_id, patient_id, test_code, loinc, collected_at, value::jsonb,
                        numeric_value, unit, ARRAY(SELECT json_array_elements_text(flags::json)),
                        reference_low, reference_high, reference_basis, catalogue_version, specimen_note,
                        coalesce(status, 'recorded'), critical, recorded_at, recorded_by, verified_by,
                        released_by, released_at, coalesce(notified, false), coalesce(acknowledged, false),
                        coalesce(amendment, 0), coalesce(updated_at, recorded_at), amended_at,
                        previous_value::jsonb
                   FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                               $7::timestamptz[], $8::text[], $9::float8[], $10::text[], $11::text[],
                               $12::float8[], $13::float8[], $14::text[], $15::int4[], $16::text[],
                               $17::bool[], $18::timestamptz[], $19::text[], $20::text[], $21::text[],
                               $22::text[], $23::timestamptz[], $24::bool[], $25::bool[], $26::int4[],
                               $27::timestamptz[], $28::timestamptz[], $29::text[])
                     AS u(id, sample_id, order_id, patient_id, test_code, loinc, collected_at, value,
                          numeric_value, unit, flags, reference_low, reference_high, reference_basis,
                          catalogue_version, specimen_note, critical, recorded_at, recorded_by, status,
                          verified_by, released_by, released_at, notified, acknowledged, amendment, updated_at,
                          amended_at, previous_value)
                 ON CONFLICT (result_id) DO UPDATE SET value = excluded.value, numeric_value = excluded.numeric_value,
                     flags = excluded.flags, critical = excluded.critical, status = excluded.status,
                     notified = excluded.notified, acknowledged = excluded.acknowledged,
                     verified_by = excluded.verified_by,
                     released_by = coalesce(excluded.released_by, results.released_by),
                     released_at = coalesce(excluded.released_at, results.released_at),
                     -- Recorded again (after a rerun): the count starts over, as in the aggregate.
                     amendments = excluded.amendments, recorded_at = excluded.recorded_at,
                     recorded_by = excluded.recorded_by, catalogue_version = excluded.catalogue_version,
                     loinc = excluded.loinc, unit = excluded.unit, reference_low = excluded.reference_low,
                     reference_high = excluded.reference_high, reference_basis = excluded.reference_basis,
                     specimen_note = excluded.specimen_note, updated_at = excluded.updated_at,
                     amended_at = excluded.amended_at, previous_value = excluded.previous_value",
            )
            .bind(recorded.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.sample_id).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.order_id).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patient_id).collect::<Vec<_>>())
            .bind(col(|r| r.test_code.clone()))
            .bind(col(|r| r.loinc.clone()))
            .bind(recorded.iter().map(|r| r.collected_at).collect::<Vec<_>>())
            .bind(values.iter().map(|v| v.value.clone()).collect::<Vec<_>>())
            .bind(values.iter().map(|v| v.numeric_value).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.unit.clone()).collect::<Vec<_>>())
            .bind(values.iter().map(|v| v.flags.clone()).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.reference_low).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.reference_high).collect::<Vec<_>>())
            .bind(col(|r| r.reference_basis.clone()))
            .bind(recorded.iter().map(|r| r.catalogue_version).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.specimen_note.clone()).collect::<Vec<_>>())
            .bind(values.iter().map(|v| v.critical).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
            .bind(col(|r| r.recorded_by.clone()))
            .bind(recorded.iter().map(|r| r.patch.status).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.verified_by.clone()).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.released_by.clone()).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.released_at).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.notified).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.acknowledged).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.amendment).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.updated_at).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.amended_at).collect::<Vec<_>>())
            .bind(recorded.iter().map(|r| r.patch.previous_value.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let patches: Vec<(Uuid, Patch)> = self.patches.drain().collect();
        if !patches.is_empty() {
            sqlx::query(
                "UPDATE results r SET status = coalesce(u.status, r.status),
                        verified_by = coalesce(u.verified_by, r.verified_by),
                        released_by = coalesce(u.released_by, r.released_by),
                        released_at = coalesce(u.released_at, r.released_at),
                        notified = coalesce(u.notified, r.notified),
                        acknowledged = coalesce(u.acknowledged, r.acknowledged),
                        value = CASE WHEN u.amended THEN u.value::jsonb ELSE r.value END,
                        numeric_value = CASE WHEN u.amended THEN u.numeric_value ELSE r.numeric_value END,
                        flags = CASE WHEN u.amended THEN ARRAY(SELECT json_array_elements_text(u.flags::json))
                                     ELSE r.flags END,
                        critical = CASE WHEN u.amended THEN u.critical ELSE r.critical END,
                        amendments = coalesce(u.amendment, r.amendments), updated_at = u.updated_at,
                        amended_at = coalesce(u.amended_at, r.amended_at),
                        previous_value = CASE WHEN u.amended THEN u.previous_value::jsonb ELSE r.previous_value END
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bool[],
                               $7::timestamptz[], $8::bool[], $9::bool[], $10::text[], $11::float8[],
                               $12::text[], $13::bool[], $14::int4[], $15::timestamptz[], $16::text[])
                     AS u(id, status, verified_by, released_by, released_at, notified, updated_at, acknowledged,
                          amended, value, numeric_value, flags, critical, amendment, amended_at, previous_value)
                  WHERE r.result_id = u.id",
            )
            .bind(patches.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.status).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.verified_by.clone()).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.released_by.clone()).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.released_at).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.notified).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.updated_at).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.acknowledged).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended.is_some()).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended.as_ref().map(|a| a.value.clone())).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended.as_ref().and_then(|a| a.numeric_value)).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended.as_ref().map(|a| a.flags.clone())).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended.as_ref().map(|a| a.critical)).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amendment).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.amended_at).collect::<Vec<_>>())
            .bind(patches.iter().map(|(_, p)| p.previous_value.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
