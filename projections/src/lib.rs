//! The read side of LIS Ledger.
//!
//! - [`feed`]: the event store's gap-free ordered feed (what the relay and single-node
//!   projections read).
//! - [`merkle`]: RFC 6962 Merkle trees for the audit seals.

pub mod feed;
pub mod merkle;
