//! Dashboard rollups over the analytics facts (see [`crate::models::analytics`]), for a
//! range of days: volumes per test, department and site; turnaround percentiles per
//! test and priority; rejections by reason and site; abnormal and critical rates per test.
//!
//! Joins across fact kinds (a result's order priority, a specimen's collection site) are
//! done here rather than with `$lookup`, keeping to operations every target server runs.

use crate::models::analytics::Analytics;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    pub day: String,
    pub test_code: String,
    pub department: String,
    pub collection_site: String,
    pub tests: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turnaround {
    pub test_code: String,
    pub priority: String,
    pub results: usize,
    /// Minutes from order to release.
    pub p50_minutes: f64,
    pub p90_minutes: f64,
    pub p95_minutes: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejections {
    pub reason: String,
    pub collection_site: String,
    pub specimens: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbnormalRate {
    pub test_code: String,
    pub results: i64,
    pub abnormal: i64,
    pub critical: i64,
    pub abnormal_rate: f64,
    pub critical_rate: f64,
}

type Result<T> = std::result::Result<T, mongodb::error::Error>;

fn day_range(from: &str, to: &str) -> Document {
    doc! { "day": { "$gte": from, "$lte": to } }
}

fn text(d: &Document, path: &[&str]) -> String {
    let mut cur = d;
    for (i, key) in path.iter().enumerate() {
        match cur.get(*key) {
            Some(Bson::Document(inner)) if i + 1 < path.len() => cur = inner,
            Some(Bson::String(s)) if i + 1 == path.len() => return s.clone(),
            _ => return String::new(),
        }
    }
    String::new()
}

fn int(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Orders' facts by id (priority, site, ordered_at).
async fn orders_by_id(a: &Analytics, ids: Vec<String>) -> Result<HashMap<String, Document>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut cursor = a
            .database()
            .collection::<Document>("order_facts")
            .find(doc! { "_id": { "$in": chunk } })
            .await?;
        while let Some(d) = cursor.try_next().await? {
            out.insert(text(&d, &["_id"]), d);
        }
    }
    Ok(out)
}

pub async fn volumes(a: &Analytics, from: &str, to: &str) -> Result<Vec<Volume>> {
    let pipeline = vec![
        doc! { "$match": day_range(from, to) },
        doc! { "$unwind": "$tests" },
        // Tests ordered and not cancelled since.
        doc! { "$match": { "$expr": { "$not": [
            { "$in": ["$tests.code", { "$ifNull": ["$cancelled", []] }] }
        ] } } },
        doc! { "$group": {
            "_id": { "day": "$day", "test": "$tests.code", "department": "$tests.department", "site": "$collection_site" },
            "tests": { "$sum": 1 },
        } },
        doc! { "$sort": { "_id.day": 1, "_id.test": 1, "_id.site": 1 } },
    ];
    let mut cursor = a
        .database()
        .collection::<Document>("order_facts")
        .aggregate(pipeline)
        .await?;
    let mut out = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        out.push(Volume {
            day: text(&d, &["_id", "day"]),
            test_code: text(&d, &["_id", "test"]),
            department: text(&d, &["_id", "department"]),
            collection_site: text(&d, &["_id", "site"]),
            tests: int(&d, "tests"),
        });
    }
    Ok(out)
}

pub async fn abnormal_rates(a: &Analytics, from: &str, to: &str) -> Result<Vec<AbnormalRate>> {
    let mut filter = day_range(from, to);
    filter.insert("retracted", doc! { "$ne": true });
    filter.insert("test_code", doc! { "$exists": true });
    let pipeline = vec![
        doc! { "$match": filter },
        doc! { "$group": {
            "_id": "$test_code",
            "results": { "$sum": 1 },
            "abnormal": { "$sum": { "$cond": ["$abnormal", 1, 0] } },
            "critical": { "$sum": { "$cond": ["$critical", 1, 0] } },
        } },
        doc! { "$sort": { "_id": 1 } },
    ];
    let mut cursor = a
        .database()
        .collection::<Document>("result_facts")
        .aggregate(pipeline)
        .await?;
    let mut out = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        let (results, abnormal, critical) =
            (int(&d, "results"), int(&d, "abnormal"), int(&d, "critical"));
        let rate = |n: i64| {
            if results > 0 {
                n as f64 / results as f64
            } else {
                0.0
            }
        };
        out.push(AbnormalRate {
            test_code: text(&d, &["_id"]),
            results,
            abnormal,
            critical,
            abnormal_rate: rate(abnormal),
            critical_rate: rate(critical),
        });
    }
    Ok(out)
}

pub async fn turnaround(a: &Analytics, from: &str, to: &str) -> Result<Vec<Turnaround>> {
    let mut filter = day_range(from, to);
    filter.insert("released_at", doc! { "$exists": true });
    filter.insert("retracted", doc! { "$ne": true });
    let mut cursor = a
        .database()
        .collection::<Document>("result_facts")
        .find(filter)
        .await?;
    let mut released = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        released.push(d);
    }
    let orders = orders_by_id(a, released.iter().map(|d| text(d, &["order_id"])).collect()).await?;
    let mut minutes: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in &released {
        let Some(order) = orders.get(&text(r, &["order_id"])) else {
            continue;
        };
        let (Ok(done), Ok(start)) = (
            r.get_datetime("released_at"),
            order.get_datetime("ordered_at"),
        ) else {
            continue;
        };
        let m = (done.timestamp_millis() - start.timestamp_millis()) as f64 / 60_000.0;
        minutes
            .entry((text(r, &["test_code"]), text(order, &["priority"])))
            .or_default()
            .push(m);
    }
    Ok(minutes
        .into_iter()
        .map(|((test_code, priority), mut v)| {
            v.sort_by(f64::total_cmp);
            Turnaround {
                test_code,
                priority,
                results: v.len(),
                p50_minutes: percentile(&v, 50.0),
                p90_minutes: percentile(&v, 90.0),
                p95_minutes: percentile(&v, 95.0),
            }
        })
        .collect())
}

pub async fn rejections(a: &Analytics, from: &str, to: &str) -> Result<Vec<Rejections>> {
    let mut filter = day_range(from, to);
    filter.insert("rejection_reason", doc! { "$exists": true });
    let mut cursor = a
        .database()
        .collection::<Document>("sample_facts")
        .find(filter)
        .await?;
    let mut rejected = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        rejected.push(d);
    }
    let orders = orders_by_id(a, rejected.iter().map(|d| text(d, &["order_id"])).collect()).await?;
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for s in &rejected {
        let site = orders
            .get(&text(s, &["order_id"]))
            .map(|o| text(o, &["collection_site"]))
            .unwrap_or_default();
        *counts
            .entry((text(s, &["rejection_reason"]), site))
            .or_default() += 1;
    }
    Ok(counts
        .into_iter()
        .map(|((reason, collection_site), specimens)| Rejections {
            reason,
            collection_site,
            specimens,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 95.0), 10.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
