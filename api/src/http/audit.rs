//! Auditors' replay of history: every event of an order, specimen or result with who did
//! it, in what role, why and when, and a field-level diff of the aggregate's state before
//! and after; or the state as of any instant (`as_of=`). Read straight from the event
//! store — the audit trail itself, not a read model. Beside it, the other append-only
//! records an assessor asks for: break-glass reads of identity (`break_glass_log`) and
//! rotations of the key-encryption key (`kek_rotations`).

use super::auth::{Action, Caller};
use super::cursor::{self, Cursor};
use super::deadline;
use super::params::Params;
use super::problem::{pointer_token, Problem};
use super::settled;
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use lis_commands::connection::connection;
use lis_domain::actor::ActorId;
use lis_domain::order::Order;
use lis_domain::patient_record::PatientRecord;
use lis_domain::result::LabResult;
use lis_domain::sample::Sample;
use lis_domain::upcast::upcasters;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HistoryQuery {
    /// The state as it was at this instant.
    pub as_of: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    #[schemars(extend("enum" = ["json", "csv"]))]
    pub format: Option<String>,
}

/// The audited aggregates, by the name in the path, with their stored aggregate type.
const KINDS: [(&str, &str); 4] = [
    ("orders", "Order"),
    ("samples", "Sample"),
    ("results", "Result"),
    ("patients", "Patient"),
];

/// The audited aggregates' names, as the path takes them.
pub fn kind_names() -> [&'static str; 4] {
    KINDS.map(|(name, _)| name)
}

/// Field-level differences between two states, as JSON pointers.
pub fn diff(before: &Value, after: &Value, at: &str, out: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = format!("{at}/{}", pointer_token(k));
                diff(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(json!({ "pointer": at, "before": a, "after": b })),
        _ => {}
    }
}

fn replay<A: Aggregate>(rows: Vec<sqlx::postgres::PgRow>) -> Result<(Vec<Value>, Value), Problem> {
    let ups = upcasters();
    let mut state = A::default();
    let mut before = serde_json::to_value(&state).unwrap_or(Value::Null);
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let payload: Value = row.get("payload");
        let metadata: Value = row.get("metadata");
        let mut e = SerializedEvent::new(
            row.get("aggregate_id"),
            row.get::<i64, _>("sequence") as usize,
            row.get("aggregate_type"),
            row.get("event_type"),
            row.get("event_version"),
            payload.clone(),
            Value::Null,
        );
        for u in &ups {
            if u.can_upcast(&e.event_type, &e.event_version) {
                e = u.upcast(e);
            }
        }
        let event: A::Event = serde_json::from_value(e.payload).map_err(|err| {
            tracing::error!(error = %err, "unreadable event in history");
            Problem::internal()
        })?;
        state.apply(event);
        let after = serde_json::to_value(&state).unwrap_or(Value::Null);
        let mut changes = Vec::new();
        diff(&before, &after, "", &mut changes);
        before = after;
        let recorded_at: DateTime<Utc> = row.get("recorded_at");
        events.push(json!({
            "sequence": row.get::<i64, _>("sequence"),
            "position": row.get::<i64, _>("position"),
            "event_type": row.get::<String, _>("event_type"),
            "event_version": row.get::<String, _>("event_version"),
            "recorded_at": recorded_at,
            "actor": metadata.get("actor_id"),
            "role": metadata.get("actor_role"),
            "reason": metadata.get("reason"),
            "correlation_id": metadata.get("correlation_id"),
            "client_addr": metadata.get("client_addr"),
            "payload": payload,
            "hash": hex::encode(row.get::<Vec<u8>, _>("hash")),
            "changes": changes,
        }));
    }
    Ok((events, before))
}

pub async fn history(
    State(s): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Params(q): Params<HistoryQuery>,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(Problem::invalid(vec![super::problem::FieldProblem {
                pointer: "/format".into(),
                detail: format!("format `{other}` must be json or csv"),
            }]))
        }
    };
    if let Some(problem) = q.as_of.as_ref().and_then(|at| unstorable(at, "/as_of")) {
        return Err(Problem::invalid(vec![problem]));
    }
    // Whether every event up to `as_of` is committed (read before them): if not, one
    // still being written may yet join that state, and asking again may differ.
    // Unknown (null) where the horizon is (a prepared transaction open, or no sight of
    // other roles' sessions): the history is answered all the same.
    let settled = match q.as_of {
        Some(at) => Some(settled::horizon(&s.pool).await.ok().map(|h| at < h)),
        None => None,
    };
    let mut history = history_json(&s, &caller, &kind, &id, q.as_of).await?;
    if let Some(settled) = settled {
        history["as_of_settled"] = json!(settled);
    }
    let view =
        super::privacy::view_for(&s, &caller, &headers, &format!("audit/{kind}/{id}")).await?;
    super::privacy::reveal(&s, &mut history, view).await?;
    Ok(if csv {
        (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/csv; charset=utf-8".to_string(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{kind}-{id}.csv\""),
                ),
            ],
            history_csv(&history),
        )
            .into_response()
    } else {
        Json(history).into_response()
    })
}

async fn history_json(
    s: &AppState,
    caller: &Caller,
    kind: &str,
    id: &str,
    as_of: Option<DateTime<Utc>>,
) -> Result<Value, Problem> {
    caller.require(Action::ReadAudit)?;
    let Some(&(_, aggregate_type)) = KINDS.iter().find(|(name, _)| *name == kind) else {
        return Err(Problem::not_found(format!(
            "no audit history for `{kind}` ({})",
            kind_names().join(", ")
        )));
    };
    // Every aggregate id is a UUID, stored in its hyphenated lower-case form.
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| Problem::not_found(format!("no {kind} {id}")))?
        .to_string();
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, position, event_type, event_version, payload, metadata,
                recorded_at, hash
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND ($3::timestamptz IS NULL OR recorded_at <= $3)
          ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(&id)
    .bind(as_of)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    // Before its first event an aggregate has an empty history; one that never was has none.
    if rows.is_empty()
        && (as_of.is_none()
            || !sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)",
            )
            .bind(aggregate_type)
            .bind(&id)
            .fetch_one(&mut *connection(&s.pool).await?)
            .await?)
    {
        return Err(Problem::not_found(format!("no {kind} {id}")));
    }
    let (events, state) = match aggregate_type {
        "Order" => replay::<Order>(rows)?,
        "Sample" => replay::<Sample>(rows)?,
        "Patient" => replay::<PatientRecord>(rows)?,
        _ => replay::<LabResult>(rows)?,
    };
    Ok(json!({
        "aggregate_type": aggregate_type,
        "aggregate_id": id,
        "as_of": as_of,
        "state": state,
        "events": events,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_each_changed_field() {
        let a = json!({"status": "recorded", "value": {"value": 4.1, "unit": "mmol/L"}, "gone": 1});
        let b = json!({"status": "verified", "value": {"value": 4.1, "unit": "mmol/L"}, "new/key": true});
        let mut out = Vec::new();
        diff(&a, &b, "", &mut out);
        let pointers: Vec<&str> = out.iter().map(|c| c["pointer"].as_str().unwrap()).collect();
        assert_eq!(pointers, ["/gone", "/new~1key", "/status"]);
        assert_eq!(out[2]["before"], "recorded");
    }
}

/// A time range, `from` (inclusive) to `to` (exclusive), read a page at a time.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PagedRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Entries per page: 1 to 10,000 (default 1,000).
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: Option<u32>,
    /// Where the previous page ended: its `next_after`, as given (opaque).
    pub after: Option<String>,
}

impl PagedRange {
    /// The page size, or a problem naming what is wrong with the range or the limit.
    fn check(&self) -> Result<i64, Problem> {
        let mut errors: Vec<_> = [(&self.from, "/from"), (&self.to, "/to")]
            .into_iter()
            .filter_map(|(at, pointer)| unstorable(at, pointer))
            .collect();
        if self.from > self.to {
            errors.push(super::problem::FieldProblem {
                pointer: "/from".into(),
                detail: "from is after to".into(),
            });
        }
        let limit = super::params::limit(self.limit);
        match (limit, errors.is_empty()) {
            (Ok(limit), true) => Ok(limit),
            (limit, _) => {
                errors.extend(limit.err());
                Err(Problem::invalid(errors))
            }
        }
    }

    /// The cursor `after`, read by `parse`; a bad one is a problem at `/after`.
    fn cursor<T>(&self, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, Problem> {
        match &self.after {
            None => Ok(None),
            Some(text) => parse(text).map(Some).ok_or_else(|| {
                Problem::invalid(vec![super::problem::FieldProblem {
                    pointer: "/after".into(),
                    detail: "not a cursor this endpoint gave (use a page's next_after or resume_after as given)"
                        .into(),
                }])
            }),
        }
    }
}

/// What one page reads of a range: the entries before `end`, which is the range's end or,
/// if that is later, the horizon before which every entry is final
/// ([`settled::horizon`]), after the cursor `after`.
struct Window {
    limit: i64,
    end: DateTime<Utc>,
    after: Option<(DateTime<Utc>, i64)>,
    /// Whether the horizon cut the range short: entries at or after `end` may still be
    /// committing, and are read by a later page ([`Page::resume_after`]).
    cut: bool,
}

impl PagedRange {
    /// The page this request asks for, after a [`Cursor`], cut at the settled horizon
    /// (read now, before the page itself), or a problem naming what is wrong with the
    /// request.
    async fn window(&self, pool: &sqlx::PgPool) -> Result<Window, Problem> {
        let after = self.cursor(|text| Cursor::<i64>::parse(text).map(|c| (c.at, c.key)))?;
        self.window_after(pool, after).await
    }

    /// The page this request asks for after `after`, as [`PagedRange::window`] does.
    async fn window_after(
        &self,
        pool: &sqlx::PgPool,
        after: Option<(DateTime<Utc>, i64)>,
    ) -> Result<Window, Problem> {
        let limit = self.check()?;
        let horizon = settled::horizon(pool).await?;
        Ok(Window {
            limit,
            end: self.to.min(horizon),
            after,
            cut: horizon < self.to,
        })
    }
}

/// A page of entries, and where to read on.
struct Page {
    entries: Vec<Value>,
    /// The next page's cursor, when this one is full: there is more to read now.
    next_after: Option<String>,
    /// When the page is not full but the horizon cut the range short: the cursor to read
    /// on from once more of the range is final (the entries from the horizon on).
    resume_after: Option<String>,
}

/// The page of `rows` (read `window.limit` + 1 of them, keyed by time and unique number:
/// an event's position, a break-glass read's id): its first `limit` entries, and the
/// cursor of the next page if the extra row showed there is one, or of where to resume.
fn page(rows: Vec<(Value, DateTime<Utc>, i64)>, window: &Window) -> Page {
    let (rows, next) = cursor::page(rows, window.limit as usize, |(_, at, key)| Cursor {
        at: *at,
        key: *key,
    });
    // Every key is at least 1, so (end, 0) precedes every entry at the horizon.
    let resume = (next.is_none() && window.cut).then(|| {
        let given = window.after.unwrap_or((window.end, 0));
        let (at, key) = given.max((window.end, 0));
        Cursor { at, key }.text()
    });
    Page {
        entries: rows.into_iter().map(|(entry, _, _)| entry).collect(),
        next_after: next.map(|c| c.text()),
        resume_after: resume,
    }
}

/// A problem at `pointer` if `at` lies outside the years the ledger stores
/// ([`lis_domain::services::storable`]).
fn unstorable(at: &DateTime<Utc>, pointer: &str) -> Option<super::problem::FieldProblem> {
    (!lis_domain::services::storable(at)).then(|| super::problem::FieldProblem {
        pointer: pointer.into(),
        detail: "a time between the years 1 and 9999".into(),
    })
}

/// A statement over one of the append-only records keyed by (at, id): the entries in the
/// range $1..$2, oldest first, at most $3, as `json_build_object($object)` with their
/// time and id; `$filter` is appended to the condition.
macro_rules! by_time {
    ($object:literal, $table:literal, $filter:literal) => {
        concat!(
            "SELECT json_build_object(",
            $object,
            "), at, id FROM ",
            $table,
            " WHERE at >= $1 AND at < $2",
            $filter,
            " ORDER BY at, id LIMIT $3"
        )
    };
}

/// The statements of a record's first page and of a page after a cursor ($4, $5), for
/// [`page_of`].
macro_rules! pages {
    ($record:ident) => {
        [$record!(""), $record!(" AND (at, id) > ($4, $5)")]
    };
}

/// Break-glass reads of patient identity.
macro_rules! break_glass_reads {
    ($filter:literal) => {
        by_time!(
            "'at', at, 'actor', actor_id, 'role', actor_role, 'reason', reason,
             'resource', resource, 'request_id', request_id",
            "break_glass_log",
            $filter
        )
    };
}

/// Changes to user accounts.
macro_rules! user_changes {
    ($filter:literal) => {
        by_time!(
            "'at', at, 'user', username, 'change', change, 'role_before', role_before,
             'role_after', role_after, 'actor', actor_id, 'actor_role', actor_role,
             'reason', reason, 'request_id', request_id",
            "user_changes",
            $filter
        )
    };
}

/// Log-in attempts.
macro_rules! logins {
    ($filter:literal) => {
        by_time!(
            "'at', at, 'kind', kind, 'user', username, 'succeeded', succeeded,
             'locked', locked, 'client_addr', client_addr",
            "logins",
            $filter
        )
    };
}

/// Where a user's activity goes on: after an event (time and position, as [`Cursor`]
/// writes them), its lists of other records sent up to a time. Written `<event
/// cursor>.<microseconds>`.
type ActivityCursor = ((DateTime<Utc>, i64), DateTime<Utc>);

/// An [`ActivityCursor`] as a page wrote it.
fn activity_cursor(text: &str) -> Option<ActivityCursor> {
    let (events, lists) = text.rsplit_once('.')?;
    let events = Cursor::<i64>::parse(events)?;
    Some(((events.at, events.key), cursor::time(lists)?))
}

/// Everything one user did in a time range, oldest first, a page at a time: the events
/// they wrote, and with each page their break-glass reads of patient identity, the
/// changes to user accounts they made or that were made to theirs, and their log-ins,
/// from where the previous page's ended up to the page's horizon, so that following the
/// pages gives each once.
pub async fn activity(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Params(q): Params<PagedRange>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadAudit)?;
    let user = super::commands::id(&user, ActorId::parse, "user")?.to_string();
    let after = q.cursor(activity_cursor)?;
    let window = q
        .window_after(&s.pool, after.map(|(events, _)| events))
        .await?;
    macro_rules! events {
        ($after:literal) => {
            concat!(
                "SELECT json_build_object(
                   'position', position, 'aggregate_type', aggregate_type, 'aggregate_id', aggregate_id,
                   'sequence', sequence, 'event_type', event_type, 'recorded_at', recorded_at,
                   'role', metadata ->> 'actor_role', 'reason', metadata ->> 'reason',
                   'client_addr', metadata ->> 'client_addr', 'correlation_id', metadata ->> 'correlation_id'),
                        recorded_at, position
                   FROM events
                  WHERE metadata ->> 'actor_id' = $1 AND recorded_at >= $2 AND recorded_at < $3",
                $after,
                " ORDER BY recorded_at, position LIMIT $4"
            )
        };
    }
    let sql = match window.after {
        None => events!(""),
        Some(_) => events!(" AND (recorded_at, position) > ($5, $6)"),
    };
    let mut query = sqlx::query_as::<_, (Value, DateTime<Utc>, i64)>(sql)
        .bind(&user)
        .bind(q.from)
        .bind(window.end)
        .bind(window.limit + 1);
    if let Some((at, position)) = window.after {
        query = query.bind(at).bind(position);
    }
    let rows = query.fetch_all(&mut *connection(&s.pool).await?).await?;
    let last_event = rows[..rows.len().min(window.limit as usize)]
        .last()
        .map(|(_, at, key)| (*at, *key));
    let events = page(rows, &window);
    // The lists: from where the previous page's ended (the range's start on the first
    // page) up to this page's horizon, each up to MAX_LIMIT. Where one holds more, all
    // three stop at its first entry not sent, and go on from there on the next page.
    let most = super::params::MAX_LIMIT as usize;
    let lists_from = after.map_or(q.from, |(_, sent)| sent.max(q.from));
    let lists = Window {
        limit: most as i64,
        after: None,
        ..window
    };
    let mut found = Vec::new();
    for (key, sql) in [
        ("break_glass", break_glass_reads!(" AND actor_id = $4")),
        (
            "account_changes",
            user_changes!(" AND (username = $4 OR actor_id = $4)"),
        ),
        ("logins", logins!(" AND username = $4")),
    ] {
        found.push((
            key,
            rows_of(&s, sql, lists_from, &lists, Some(&user)).await?,
        ));
    }
    // (More than MAX_LIMIT in the microsecond the lists start at cannot go on by time:
    // those are cut, flagged, and the lists go on after them.)
    let cut = found
        .iter()
        .filter_map(|(_, rows)| rows.get(most).map(|(_, at, _)| *at))
        .min()
        .filter(|at| *at > lists_from);
    let lists_until = cut.unwrap_or(lists_from.max(window.end));
    let cursor = |at: DateTime<Utc>, key: i64| {
        format!(
            "{}.{}",
            Cursor { at, key }.text(),
            lists_until.timestamp_micros()
        )
    };
    let resumed = |events: Option<String>| {
        events.map(|text| format!("{text}.{}", lists_until.timestamp_micros()))
    };
    // A page whose lists were stopped short has a next page, its events or not.
    let next_after = match (events.next_after, cut) {
        (Some(text), _) => resumed(Some(text)),
        (None, Some(_)) => {
            let (at, key) = last_event.or(window.after).unwrap_or((q.from, 0));
            Some(cursor(at, key))
        }
        (None, None) => None,
    };
    let mut answer = json!({
        "actor": user, "from": q.from, "to": q.to, "settled_until": window.end,
        "events": events.entries, "next_after": next_after,
        "resume_after": resumed(events.resume_after),
    });
    for (key, rows) in found {
        let truncated = rows.len() > most && cut.is_none();
        let entries: Vec<Value> = rows
            .into_iter()
            .filter(|(_, at, _)| cut.is_none_or(|cut| *at < cut))
            .take(most)
            .map(|(entry, _, _)| entry)
            .collect();
        answer[key] = json!(entries);
        answer[format!("{key}_truncated")] = json!(truncated);
    }
    Ok(Json(answer))
}

/// Every break-glass read of patient identity in a time range, oldest first, a page at a
/// time: who, in what role, why, what was read, and the request (`break_glass_log`,
/// append-only).
pub async fn break_glass(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<PagedRange>,
) -> Result<Json<Value>, Problem> {
    audit_page(&s, &caller, &q, pages!(break_glass_reads), "reads").await
}

/// One page of a table keyed by (time, id): read by `sql[0]` for the first page, by
/// `sql[1]` after the window's cursor. $1 and $2 are the range (`from`, to the window's
/// end), $3 the page size plus the look-ahead row, then the cursor ($4, $5) if given,
/// then `filter` if given.
async fn page_of(
    s: &AppState,
    sql: [&'static str; 2],
    from: DateTime<Utc>,
    window: &Window,
    filter: Option<&str>,
) -> Result<Page, Problem> {
    let rows = rows_of(
        s,
        sql[window.after.is_some() as usize],
        from,
        window,
        filter,
    )
    .await?;
    Ok(page(rows, window))
}

/// The rows of one statement of [`page_of`]: `limit` + 1 of them at most.
async fn rows_of(
    s: &AppState,
    sql: &'static str,
    from: DateTime<Utc>,
    window: &Window,
    filter: Option<&str>,
) -> Result<Vec<(Value, DateTime<Utc>, i64)>, Problem> {
    let mut query = sqlx::query_as::<_, (Value, DateTime<Utc>, i64)>(sql)
        .bind(from)
        .bind(window.end)
        .bind(window.limit + 1);
    if let Some((at, id)) = window.after {
        query = query.bind(at).bind(id);
    }
    if let Some(filter) = filter {
        query = query.bind(filter);
    }
    Ok(query.fetch_all(&mut *connection(&s.pool).await?).await?)
}

/// Every run of `lisledger keys rotate`, oldest first: when it started and finished (no
/// `finished_at`: it stopped part-way), by whom, why, from which KEK to which
/// (fingerprints, never keys) and how many keys it re-wrapped (`kek_rotations`, one row
/// per step, each written with the keys it re-wrapped).
pub async fn key_rotations(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadAudit)?;
    let rotations: Value = sqlx::query_scalar(
        "SELECT coalesce(json_agg(json_build_object(
                   'run', run_id, 'started_at', started_at, 'finished_at', finished_at,
                   'from_kek_id', from_kek_id, 'to_kek_id', to_kek_id,
                   'ledger_keys', ledger_keys, 'patient_keys', patient_keys,
                   'actor', actor_id, 'reason', reason) ORDER BY started_at, run_id), '[]')
           FROM (SELECT run_id, from_kek_id, to_kek_id, actor_id, reason,
                        min(at) AS started_at,
                        max(at) FILTER (WHERE step = 'finished') AS finished_at,
                        coalesce(sum(keys) FILTER (WHERE step = 'ledger-keys'), 0) AS ledger_keys,
                        coalesce(sum(keys) FILTER (WHERE step = 'patient-keys'), 0) AS patient_keys
                   FROM kek_rotations
                  GROUP BY run_id, from_kek_id, to_kek_id, actor_id, reason) runs",
    )
    .fetch_one(&mut *connection(&s.pool).await?)
    .await?;
    Ok(Json(json!({ "rotations": rotations })))
}

/// Every change to a user account in a time range, oldest first, a page at a time:
/// added, disabled, enabled, role changed or password reset, by whom, in what role, why
/// and in which request (`user_changes`, append-only, written by a trigger on `users`).
pub async fn user_changes(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<PagedRange>,
) -> Result<Json<Value>, Problem> {
    audit_page(&s, &caller, &q, pages!(user_changes), "changes").await
}

/// Every log-in attempt in a time range, oldest first, a page at a time: when, which
/// account (none for a name that is no account), whether it succeeded, from where
/// (`logins`, append-only).
pub async fn logins(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<PagedRange>,
) -> Result<Json<Value>, Problem> {
    audit_page(&s, &caller, &q, pages!(logins), "logins").await
}

/// An auditor's page of one of the append-only records keyed by (time, id), read by
/// `sql` ([`page_of`]), its entries under `key`.
async fn audit_page(
    s: &AppState,
    caller: &Caller,
    q: &PagedRange,
    sql: [&'static str; 2],
    key: &str,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadAudit)?;
    let window = q.window(&s.pool).await?;
    let found = page_of(s, sql, q.from, &window, None).await?;
    Ok(Json(json!({
        "from": q.from, "to": q.to, "settled_until": window.end, key: found.entries,
        "next_after": found.next_after, "resume_after": found.resume_after,
    })))
}

/// One CSV field, quoted when it needs to be.
fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The history as CSV: one line per changed field of each event (or one line for an
/// event that changed nothing), for spreadsheets and assessors.
pub fn history_csv(history: &Value) -> String {
    let mut out = String::from(
        "sequence,position,recorded_at,event_type,actor,role,reason,field,before,after\n",
    );
    for e in history["events"].as_array().into_iter().flatten() {
        let head: Vec<String> = [
            "sequence",
            "position",
            "recorded_at",
            "event_type",
            "actor",
            "role",
            "reason",
        ]
        .iter()
        .map(|k| csv_field(&e[*k]))
        .collect();
        let changes = e["changes"].as_array().cloned().unwrap_or_default();
        if changes.is_empty() {
            out.push_str(&format!("{},,,\n", head.join(",")));
        }
        for c in changes {
            out.push_str(&format!(
                "{},{},{},{}\n",
                head.join(","),
                csv_field(&c["pointer"]),
                csv_field(&c["before"]),
                csv_field(&c["after"])
            ));
        }
    }
    out
}

/// Chain, snapshot and seal verification, run now: every hash chain recomputed, every
/// snapshot compared with its events, every seal checked (when the API knows the seal
/// public key). It has no deadline, as it reads the whole
/// store; it is given up, and answered 503, when it has read nothing for the request
/// deadline ([`deadline::while_progressing`]).
pub async fn verification(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadAudit)?;
    let limit = s.request_timeout;
    deadline::while_progressing(limit, |progress| verify_now(&s, progress))
        .await
        .unwrap_or_else(|| {
            tracing::warn!(
                limit_secs = limit.as_secs_f64(),
                "audit verification given up: it read nothing for the request deadline"
            );
            Err(Problem::unavailable(format!(
                "the verification read nothing for {} s (the database may be slow or unreachable); retry shortly",
                limit.as_secs_f64()
            )))
        })
}

async fn verify_now(s: &AppState, progress: deadline::Progress) -> Result<Json<Value>, Problem> {
    let started = std::time::Instant::now();
    let chains = lis_commands::audit::verify_chains(&s.pool, &mut |_| progress.tick()).await?;
    let broken: Vec<String> = chains.broken.iter().map(ToString::to_string).collect();
    let snapshots =
        lis_commands::snapshot_audit::verify_snapshots(&s.pool, &mut |_| progress.tick())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "snapshot verification failed to run");
                Problem::unavailable("the snapshots could not be checked")
            })?;
    let differing: Vec<String> = snapshots
        .differing
        .iter()
        .map(ToString::to_string)
        .collect();
    let seals = match &s.seal_verifier {
        Some(v) => {
            let r = lis_projections::seal_audit::verify_seals(&s.pool, v, &mut |_| progress.tick())
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "seal verification failed to run");
                    Problem::unavailable("the seals could not be checked")
                })?;
            json!({ "checked": true, "leaves": r.leaves, "checkpoints": r.checkpoints, "sound": r.problems.is_empty(), "problems": r.problems })
        }
        None => {
            json!({ "checked": false, "detail": "set LIS_SEAL_PUBLIC_KEY (or the seal key) for the API to check seals" })
        }
    };
    Ok(Json(json!({
        "chains": { "events": chains.events, "aggregates": chains.aggregates, "intact": broken.is_empty(), "broken": broken },
        "snapshots": { "checked": snapshots.checked, "unused": snapshots.unused, "sound": differing.is_empty(), "differing": differing },
        "seals": seals,
        "seconds": started.elapsed().as_secs_f64(),
    })))
}
