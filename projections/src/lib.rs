//! The read side of LIS Ledger.
//!
//! - [`feed`]: the event store's gap-free ordered feed (what the relay and single-node
//!   projections read).
//! - [`poll`]: how often an idle reader of the feed looks again.
//! - [`envelope`]: the JSON envelope events travel in.
//! - [`merkle`]: RFC 6962 Merkle trees; [`seal`]: signed checkpoints of the log.
//! - [`relay`]: publishes the feed to Kafka in order and seals it.
//! - [`projection`]: the exactly-once engine; [`models`]: the read models;
//!   [`worker`]: runs projections from the feed or from Kafka, and rebuilds them;
//!   [`membership`]: notices a Kafka consumer left outside its group.

pub mod analytics_queries;
pub mod envelope;
pub mod erasure;
pub mod feed;
pub mod kafka_health;
pub mod membership;
pub mod merkle;
pub mod models;
pub mod poll;
pub mod projection;
pub mod relay;
pub mod seal;
pub mod seal_audit;
pub mod worker;
