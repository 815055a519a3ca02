//! Query endpoints (GET), served from the read models. `min_position=N` gives
//! read-your-writes: the query waits (up to 5 s) until the event at position N is in the
//! read model, else answers 503 with Retry-After.

use super::auth::{Action, Caller};
use super::commands::id;
use super::params::Params;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use lis_commands::connection::connection;
use lis_domain::ids::{AccessionNumber, OrderId, PatientId, ResultId, SampleId};
use lis_projections::models::results::PATIENT_REPORT;
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize, Default, schemars::JsonSchema)]
pub struct Consistency {
    /// Wait (up to 5 s) until the event at this position is in the read model.
    pub min_position: Option<i64>,
}

/// Waits until the event at `position` has been applied by `projection`.
async fn wait_for(
    state: &AppState,
    projection: &str,
    position: Option<i64>,
) -> Result<(), Problem> {
    let Some(position) = position else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let applied: Option<bool> = sqlx::query_scalar(&format!(
            "SELECT o.last_sequence >= e.sequence FROM events e
               LEFT JOIN proj_{projection}.offsets o
                 ON o.aggregate_type = e.aggregate_type AND o.aggregate_id = e.aggregate_id
              WHERE e.position = $1"
        ))
        .bind(position)
        .fetch_optional(&mut *connection(&state.pool).await?)
        .await?
        .flatten();
        match applied {
            Some(true) => return Ok(()),
            None if sqlx::query_scalar::<_, bool>(
                "SELECT NOT EXISTS (SELECT 1 FROM events WHERE position = $1)",
            )
            .bind(position)
            .fetch_one(&mut *connection(&state.pool).await?)
            .await? =>
            {
                return Err(Problem::not_found(format!(
                    "no event at position {position}"
                )))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Problem::unavailable(format!(
                "the {projection} read model has not reached position {position} yet"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a query that returns one JSON value (`json_agg` or `row_to_json`).
async fn json(state: &AppState, sql: &str, binds: &[&dyn ToBind]) -> Result<Value, Problem> {
    let mut q = sqlx::query_scalar::<_, Option<Value>>(sql);
    for b in binds {
        q = b.bind(q);
    }
    Ok(q.fetch_optional(&mut *connection(&state.pool).await?)
        .await?
        .flatten()
        .unwrap_or(Value::Null))
}

type Q<'q> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, Option<Value>, sqlx::postgres::PgArguments>;

trait ToBind: Sync {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q>;
}
impl ToBind for uuid::Uuid {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(*self)
    }
}
impl ToBind for String {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(self.as_str())
    }
}
impl ToBind for Option<String> {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(self.as_deref())
    }
}

/// One record as its read model holds it, with its `version` (the sequence of the last
/// event the model applied to it), to send back as `If-Match` with a command on it. Not
/// an `ETag`: the representation also shows other records (an order's tests' stages) and
/// depends on who asks, where a strong tag must name the bytes.
fn found(v: Value, what: String) -> Result<Json<Value>, Problem> {
    if v.is_null() {
        return Err(Problem::not_found(what));
    }
    Ok(Json(v))
}

/// The `version` column of a record: its last sequence in the model's offsets.
macro_rules! version_of {
    ($schema:literal, $kind:literal, $id:literal) => {
        concat!(
            "(SELECT v.last_sequence FROM ",
            $schema,
            ".offsets v WHERE v.aggregate_type = '",
            $kind,
            "' AND v.aggregate_id = ",
            $id,
            "::text) AS version"
        )
    };
}

pub async fn order(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(c): Params<Consistency>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadOrders)?;
    let id = id(&raw, OrderId::parse, "order")?;
    wait_for(&s, "orders", c.min_position).await?;
    let v = json(
        &s,
        concat!(
            "SELECT row_to_json(x) FROM (
           SELECT o.*, (SELECT coalesce(json_agg(t ORDER BY t.test_code), '[]')
                          FROM proj_orders.order_test_status t WHERE t.order_id = o.order_id) AS tests, ",
            version_of!("proj_orders", "Order", "o.order_id"),
            " FROM proj_orders.orders o WHERE o.order_id = $1) x"
        ),
        &[&id.as_uuid()],
    )
    .await?;
    found(v, format!("no order {raw}"))
}

pub async fn patient_orders(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(c): Params<Consistency>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadOrders)?;
    let id = id(&raw, PatientId::parse, "patient")?;
    wait_for(&s, "orders", c.min_position).await?;
    Ok(Json(
        json(
            &s,
            "SELECT coalesce(json_agg(o ORDER BY o.placed_at DESC), '[]') FROM proj_orders.orders o WHERE o.patient_id = $1",
            &[&id.as_uuid()],
        )
        .await?,
    ))
}

const SAMPLE: &str = concat!(
    "SELECT row_to_json(x) FROM (
   SELECT s.*, (SELECT coalesce(json_agg(c ORDER BY c.sequence), '[]') FROM proj_specimens.custody c
                 WHERE c.sample_id = s.sample_id) AS custody, ",
    version_of!("proj_specimens", "Sample", "s.sample_id"),
    " FROM proj_specimens.specimens s WHERE "
);

pub async fn sample(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(c): Params<Consistency>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadSamples)?;
    let id = id(&raw, SampleId::parse, "sample")?;
    wait_for(&s, "specimens", c.min_position).await?;
    let v = json(
        &s,
        &format!("{SAMPLE} s.sample_id = $1) x"),
        &[&id.as_uuid()],
    )
    .await?;
    found(v, format!("no sample {raw}"))
}

pub async fn sample_by_accession(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(c): Params<Consistency>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadSamples)?;
    let acc = AccessionNumber::parse(&raw)
        .map_err(|_| Problem::not_found(format!("no sample with accession number {raw}")))?;
    wait_for(&s, "specimens", c.min_position).await?;
    let v = json(
        &s,
        &format!("{SAMPLE} s.accession_number = $1) x"),
        &[&acc.as_str().to_string()],
    )
    .await?;
    found(v, format!("no sample with accession number {raw}"))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CumulativeQuery {
    /// One test code (any case).
    pub test: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// Wait (up to 5 s) until the event at this position is in the read model.
    pub min_position: Option<i64>,
}

/// A patient's released results, per test over time (amendments marked). The whole
/// report is kept ready by the results model (`cumulative_reports`, rewritten when one of
/// the patient's results is released, amended or retracted) and sent as stored; a
/// filtered one, or one the model has not written yet (a patient whose results were all
/// released before the model kept reports), is aggregated from the rows with the same
/// expression.
pub async fn cumulative(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(q): Params<CumulativeQuery>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let id = id(&raw, PatientId::parse, "patient")?;
    check_dates(q.from, q.to)?;
    wait_for(&s, "results", q.min_position).await?;
    let zone = s.ledger.policy().time_zone;
    let test = q.test.map(|t| t.trim().to_ascii_uppercase());
    let whole = test.is_none() && q.from.is_none() && q.to.is_none();
    let stored = if whole {
        sqlx::query_scalar::<_, String>(
            "SELECT report FROM proj_results.cumulative_reports WHERE patient_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *connection(&s.pool).await?)
        .await?
    } else {
        None
    };
    let report = match stored {
        Some(report) => report,
        None => sqlx::query_scalar::<_, Option<String>>(PATIENT_REPORT)
            .bind(id.as_uuid())
            .bind(test)
            .bind(q.from.map(|d| day_starts(d, zone)))
            .bind(q.to.and_then(|d| d.succ_opt()).map(|d| day_starts(d, zone)))
            .fetch_one(&mut *connection(&s.pool).await?)
            .await?
            .unwrap_or_else(|| "[]".to_string()),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], report).into_response())
}

/// The first instant of `day` in `zone`: its midnight, the earlier of two where the
/// clocks went back onto it, or the first minute after a gap that skipped it.
fn day_starts(day: NaiveDate, zone: chrono_tz::Tz) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=24 * 60)
        .find_map(|minutes| {
            zone.from_local_datetime(&(midnight + chrono::Duration::minutes(minutes)))
                .earliest()
        })
        .map(|t| t.to_utc())
        // A day with no valid minute at all does not exist in any time zone database.
        .unwrap_or_else(|| midnight.and_utc())
}

/// A range of days the results model can compare with (the years 1 to 9999, as stored
/// times), and in order.
fn check_dates(from: Option<NaiveDate>, to: Option<NaiveDate>) -> Result<(), Problem> {
    use chrono::Datelike;
    let mut errors = Vec::new();
    for (date, pointer) in [(from, "/from"), (to, "/to")] {
        if date.is_some_and(|d| !(1..=9999).contains(&d.year())) {
            errors.push(super::problem::FieldProblem {
                pointer: pointer.into(),
                detail: "a date between the years 1 and 9999".into(),
            });
        }
    }
    if errors.is_empty() && from.zip(to).is_some_and(|(f, t)| f > t) {
        errors.push(super::problem::FieldProblem {
            pointer: "/from".into(),
            detail: "from is after to".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// One result. Clinicians see released results only.
pub async fn result(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Params(c): Params<Consistency>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadResults)?;
    let id = id(&raw, ResultId::parse, "result")?;
    wait_for(&s, "results", c.min_position).await?;
    let released_only = caller.released_only();
    let v = json(
        &s,
        concat!(
            "SELECT row_to_json(x) FROM (SELECT r.*, ",
            version_of!("proj_results", "Result", "r.result_id"),
            " FROM proj_results.results r
          WHERE r.result_id = $1 AND ($2::text IS NULL OR r.status = 'released')) x"
        ),
        &[
            &id.as_uuid(),
            &released_only.then(|| "released".to_string()),
        ],
    )
    .await?;
    found(v, format!("no result {raw}"))
}

/// The worklist stages.
const STAGES: [&str; 5] = [
    "to_collect",
    "to_receive",
    "to_result",
    "to_verify",
    "to_authorise",
];

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WorklistQuery {
    pub department: Option<String>,
    #[schemars(extend("enum" = STAGES))]
    pub stage: Option<String>,
    /// Rows to send, the most urgent first (the earliest due: ordered plus the test's
    /// turnaround target for its priority, so overdue tests lead): 1 to 10,000 (default
    /// 1,000). The `X-Total-Count` header says how many are waiting in all.
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: Option<u32>,
}

/// What waits at each stage, per department: the most urgent first (the earliest due,
/// so a STAT test ordered a minute ago comes before a routine one ordered an hour ago
/// that is not yet due, and overdue tests lead), at most `limit` rows, with the whole
/// count in `X-Total-Count` (a busy lab's backlog need not travel whole to every bench's
/// screen). A test with no target (not in the catalogue) comes last.
pub async fn worklist(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<WorklistQuery>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadWorklists)?;
    let mut errors = Vec::new();
    if let Some(stage) = &q.stage {
        if !STAGES.contains(&stage.as_str()) {
            errors.push(super::problem::FieldProblem {
                pointer: "/stage".into(),
                detail: format!("stage must be one of {}", STAGES.join(", ")),
            });
        }
    }
    let limit = match super::params::limit(q.limit) {
        Ok(limit) if errors.is_empty() => limit,
        limit => {
            errors.extend(limit.err());
            return Err(Problem::invalid(errors));
        }
    };
    let department = q.department.map(|d| d.trim().to_ascii_uppercase());
    let (rows, total): (Value, i64) = sqlx::query_as(
        "WITH w AS (
           SELECT department, stage, order_id, order_number, test_code, priority, sample_id, result_id,
                  recollection, ordered_at, stage_since, extract(epoch FROM age)::bigint / 60 AS age_minutes,
                  extract(epoch FROM target)::bigint / 60 AS target_minutes, ordered_at + target AS due,
                  overdue
             FROM proj_orders.worklist
            WHERE ($1::text IS NULL OR department = $1) AND ($2::text IS NULL OR stage = $2))
         SELECT coalesce((SELECT json_agg(p ORDER BY p.due NULLS LAST, p.ordered_at, p.order_id, p.test_code)
                            FROM (SELECT * FROM w ORDER BY due NULLS LAST, ordered_at, order_id, test_code
                                   LIMIT $3) p), '[]'),
                (SELECT count(*) FROM w)",
    )
    .bind(&department)
    .bind(&q.stage)
    .bind(limit)
    .fetch_one(&mut *connection(&s.pool).await?)
    .await?;
    Ok(counted(&rows, total))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CriticalQuery {
    /// Rows to send, the longest waiting first: 1 to 10,000 (default 1,000). The
    /// `X-Total-Count` header says how many are waiting in all.
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: Option<u32>,
}

/// Critical results awaiting a call to the clinician (a lab list: the value is not yet
/// released) or the clinician's acknowledgement of the released value, the longest
/// waiting first. Clinicians see only the second kind: what was released to them.
pub async fn critical(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<CriticalQuery>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let limit = super::params::limit(q.limit).map_err(|e| Problem::invalid(vec![e]))?;
    let released_only = caller.released_only();
    // A clinician's list: released values they have not acknowledged, which is what each
    // awaits from them (an amended one may await the lab's call as well: the lab's list
    // says so).
    let (rows, total): (Value, i64) = sqlx::query_as(
        "WITH c AS (SELECT p.result_id, p.patient_id, p.order_id, p.test_code, p.value, p.unit,
                           p.flags, p.status, p.notified, p.acknowledged, p.recorded_at, p.released_at,
                           CASE WHEN $1 THEN 'acknowledgement' ELSE p.awaiting END AS awaiting
                      FROM proj_results.critical_pending p
                     WHERE NOT $1 OR (p.status = 'released' AND NOT p.acknowledged))
         SELECT coalesce((SELECT json_agg(p ORDER BY p.recorded_at, p.result_id)
                            FROM (SELECT * FROM c ORDER BY recorded_at, result_id LIMIT $2) p), '[]'),
                (SELECT count(*) FROM c)",
    )
    .bind(released_only)
    .bind(limit)
    .fetch_one(&mut *connection(&s.pool).await?)
    .await?;
    Ok(counted(&rows, total))
}

/// `rows` as a JSON answer, with how many there are in all in `X-Total-Count`.
fn counted(rows: &Value, total: i64) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::HeaderName::from_static("x-total-count"),
                total.to_string(),
            ),
        ],
        rows.to_string(),
    )
        .into_response()
}

pub async fn turnaround(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadWorklists)?;
    Ok(Json(
        json(&s, "SELECT coalesce(json_agg(t ORDER BY t.test_code, t.priority), '[]') FROM proj_orders.turnaround t", &[]).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::day_starts;
    use chrono::NaiveDate;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_lab_s_day_starts_at_its_first_instant() {
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        assert_eq!(
            day_starts(day(2026, 3, 4), chrono_tz::Asia::Kolkata),
            at("2026-03-03T18:30:00Z")
        );
        // Cuba moves its clocks at midnight: on 9 March 2025 from 00:00 to 01:00 (no
        // midnight: the day starts at 01:00, UTC-4), on 2 November 2025 from 01:00 back
        // to 00:00 (two midnights: the earlier, UTC-4).
        let havana = chrono_tz::America::Havana;
        assert_eq!(
            day_starts(day(2025, 3, 9), havana),
            at("2025-03-09T05:00:00Z")
        );
        assert_eq!(
            day_starts(day(2025, 11, 2), havana),
            at("2025-11-02T04:00:00Z")
        );
        assert_eq!(
            day_starts(day(2026, 3, 4), chrono_tz::UTC),
            at("2026-03-04T00:00:00Z")
        );
    }
}
