//! `GET /analytics/{report}?from=YYYY-MM-DD&to=YYYY-MM-DD`: the MongoDB dashboards'
//! rollups (volumes, turnaround, rejections, rates) over a range of days.

use super::auth::{Action, Caller};
use super::params::Params;
use super::problem::{FieldProblem, Problem};
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::NaiveDate;
use lis_projections::analytics_queries as q;
use serde::Deserialize;
use serde_json::Value;

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "analytics query failed");
    Problem::unavailable("MongoDB is not answering")
}

/// A dashboard report.
#[derive(Debug, Clone, Copy)]
enum Report {
    Volumes,
    Turnaround,
    Rejections,
    Rates,
}

/// The reports, by the name in their path.
const REPORTS: [(&str, Report); 4] = [
    ("volumes", Report::Volumes),
    ("turnaround", Report::Turnaround),
    ("rejections", Report::Rejections),
    ("rates", Report::Rates),
];

/// The reports' names, as the path takes them.
pub fn report_names() -> [&'static str; 4] {
    REPORTS.map(|(name, _)| name)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

pub async fn report(
    State(s): State<AppState>,
    caller: Caller,
    Path(report): Path<String>,
    Params(r): Params<Range>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadAnalytics)?;
    if r.from > r.to {
        return Err(Problem::invalid(vec![FieldProblem {
            pointer: "/from".into(),
            detail: "from is after to".into(),
        }]));
    }
    let Some(&(_, report)) = REPORTS.iter().find(|(name, _)| *name == report) else {
        return Err(Problem::not_found(format!(
            "no report `{report}` ({})",
            report_names().join(", ")
        )));
    };
    // A server without MongoDB has no analytics at all: not a passing outage (503).
    let a = s.analytics.as_ref().ok_or_else(|| {
        Problem::not_found("analytics are not configured on this server (LIS_MONGO_URL)")
    })?;
    let (from, to) = (r.from.to_string(), r.to.to_string());
    let value = match report {
        Report::Volumes => {
            serde_json::to_value(q::volumes(a, &from, &to).await.map_err(unavailable)?)
        }
        Report::Turnaround => {
            serde_json::to_value(q::turnaround(a, &from, &to).await.map_err(unavailable)?)
        }
        Report::Rejections => {
            serde_json::to_value(q::rejections(a, &from, &to).await.map_err(unavailable)?)
        }
        Report::Rates => serde_json::to_value(
            q::abnormal_rates(a, &from, &to)
                .await
                .map_err(unavailable)?,
        ),
    };
    Ok(Json(value.unwrap_or_default()))
}
