//! LIS Ledger's application edge: configuration and the HTTP API. The `lisledger`
//! binary (src/main.rs) wires them to the command line.

pub mod config;
pub mod fhir;
pub mod fhir_orders;
pub mod hl7;
pub mod http;
