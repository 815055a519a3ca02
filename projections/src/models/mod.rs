//! The PostgreSQL read models.
//!
//! - [`orders`]: order status — each test and its stage, with stage times (worklists and
//!   turnaround times are queries over it);
//! - [`specimens`]: specimen tracking by accession number — status, holder, custody chain,
//!   rejection;
//! - [`results`]: every result's current state — a patient's cumulative released results
//!   and the critical results awaiting notification or acknowledgement are queries over it;
//! - [`analytics`]: MongoDB fact documents for dashboards (needs a MongoDB URL, so it is
//!   not among [`all`]).

pub mod analytics;
pub mod orders;
pub mod results;
pub mod specimens;

use crate::projection::{Projection, ProjectionError};
use std::sync::Arc;

/// Every projection, by name.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(orders::Orders),
        Arc::new(specimens::Specimens),
        Arc::new(results::Results::default()),
    ]
}

pub fn by_name(name: &str) -> Result<Arc<dyn Projection>, ProjectionError> {
    all()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| ProjectionError::Unknown(name.to_string()))
}
