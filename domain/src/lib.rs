//! The laboratory domain of LIS Ledger.
//!
//! Three event-sourced aggregates of the lab's work — [`order::Order`], [`sample::Sample`]
//! (the specimen) and [`result::LabResult`] — and one of privacy,
//! [`patient_record::PatientRecord`] (erasure), with their commands, events and typed
//! errors, plus the pure logic they share: the versioned test catalogue, result values
//! and flagging. Patient identity travels only sealed ([`sealed`]).
//!
//! This crate is pure: it performs no I/O and starts no runtime. What an aggregate needs
//! to know about the rest of the lab (the catalogue in force, another aggregate's state,
//! a patient's previous result) it asks through [`services::LabLookup`], which the
//! `commands` crate implements against the event store.

pub mod actor;
pub mod catalogue;
pub mod error;
pub mod family;
pub mod flags;
pub mod ids;
pub mod order;
pub mod patient;
pub mod patient_record;
pub mod result;
pub mod sample;
pub mod sealed;
pub mod services;
pub mod text;
pub mod upcast;
pub mod validation;
pub mod value;

#[cfg(test)]
mod tests;
