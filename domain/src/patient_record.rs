//! The Patient aggregate: the ledger's record of what was done to a patient's personal
//! data as a whole — today, its erasure (DPDP Act 2023, right to erasure).
//!
//! Erasure is crypto-shredding: the command layer destroys the patient's data key, so the
//! sealed identity in every past event becomes unreadable while the events themselves,
//! and the hash chain over them, stay as they were (ISO 15189 keeps the history). This
//! aggregate makes the erasure itself an audited event — who, in what role, why, when —
//! and refuses a second one.

use crate::services::{LabServices, LookupError};
use crate::text::Reason;
use crate::validation::FieldErrors;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PatientCommand {
    /// Erase the patient's identity (the key is destroyed by the command layer).
    Erase { reason: Reason },
}

impl PatientCommand {
    pub fn reason(&self) -> Option<String> {
        match self {
            PatientCommand::Erase { reason } => Some(reason.to_string()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PatientCommand::Erase { .. } => "patient.erase",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PatientEvent {
    /// The patient's data key was destroyed: their sealed identity can no longer be read,
    /// and read models and analytics drop their rows.
    PatientErased { reason: Reason },
}

impl DomainEvent for PatientEvent {
    fn event_type(&self) -> String {
        match self {
            PatientEvent::PatientErased { .. } => "PatientErased".to_string(),
        }
    }
    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

crate::error::domain_error!(PatientError);

/// Why a patient command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatientError {
    #[error("invalid patient command: {0}")]
    Invalid(FieldErrors),
    #[error("the patient has already been erased")]
    AlreadyErased,
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

impl PatientError {
    fn rule_name(&self) -> &'static str {
        match self {
            PatientError::Invalid(_) => "patient.invalid",
            PatientError::AlreadyErased => "patient.already-erased",
            PatientError::Lookup(_) => "lookup-failed",
        }
    }
}

/// The Patient aggregate (aggregate type `Patient`, id = the pseudonymous patient id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PatientRecord {
    erased: bool,
}

impl PatientRecord {
    pub fn is_erased(&self) -> bool {
        self.erased
    }
}

impl Aggregate for PatientRecord {
    const TYPE: &'static str = "Patient";
    type Command = PatientCommand;
    type Event = PatientEvent;
    type Error = PatientError;
    type Services = LabServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            PatientCommand::Erase { reason } => {
                if self.erased {
                    return Err(PatientError::AlreadyErased);
                }
                sink.write(PatientEvent::PatientErased { reason }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PatientEvent::PatientErased { .. } => self.erased = true,
        }
    }
}
