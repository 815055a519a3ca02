//! Command handling for LIS Ledger: the cqrs-es framework wired to the PostgreSQL event
//! store (in postgres-es's layout), the look-ups the aggregates make, the catalogue
//! import and the audit-trail verifier.
//!
//! - [`ledger`]: the entry point; runs a command for an actor and says where it landed.
//! - [`context`]: who is acting, and the audit metadata every event carries.
//! - [`lookup`]: [`lis_domain::services::LabLookup`] answered from the event store.
//! - [`catalogue`]: versioned catalogue import and loading.
//! - [`store`]: the event store (postgres-es's tables), snapshots and upcasters.
//! - [`connection`]: one database connection for the whole of a command.
//! - [`reads`]: what a command's rules read of its order's other records, checked
//!   again at its append (the records of one order append in turn).
//! - [`audit`]: recomputes every hash chain and reports the first broken link.
//! - [`snapshot_audit`]: compares every snapshot with the state of its events.
//! - [`keys`]: patient data keys, sealing and erasure (crypto-shredding).
//! - [`error`]: the one error type of this boundary.

pub mod audit;
pub mod catalogue;
pub mod connection;
pub mod context;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod lookup;
pub mod reads;
pub mod snapshot_audit;
pub mod store;

pub use context::CommandContext;
pub use error::CommandError;
pub use ledger::{CommandOutcome, Ledger, LedgerConfig};
