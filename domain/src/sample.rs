//! The Sample aggregate: one specimen (tube), from collection to disposal.
//!
//! It keeps the chain of custody (every hand-over), receipt and its condition, rejection
//! (terminal for testing; recollection is requested), aliquots (lineage both ways: the
//! parent lists its children, each child names its parent), storage and disposal.

use crate::actor::ActorId;
use crate::ids::{AccessionNumber, OrderId, SampleId, TestCode};
use crate::services::{stated_time_problem, LabServices, LookupError};
use crate::text::{Label, Note, PersonName, Place};
use crate::validation::{FieldError, FieldErrors};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Why a specimen is rejected (the lab's fixed list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionReason {
    Haemolysed,
    Clotted,
    InsufficientVolume,
    WrongContainer,
    Unlabelled,
    Mislabelled,
    Leaked,
    StabilityExceeded,
    Lipaemic,
    Icteric,
    Other,
}

impl RejectionReason {
    /// The reason's code, as written in events and read models (`insufficient_volume`).
    pub fn code(&self) -> &'static str {
        match self {
            RejectionReason::Haemolysed => "haemolysed",
            RejectionReason::Clotted => "clotted",
            RejectionReason::InsufficientVolume => "insufficient_volume",
            RejectionReason::WrongContainer => "wrong_container",
            RejectionReason::Unlabelled => "unlabelled",
            RejectionReason::Mislabelled => "mislabelled",
            RejectionReason::Leaked => "leaked",
            RejectionReason::StabilityExceeded => "stability_exceeded",
            RejectionReason::Lipaemic => "lipaemic",
            RejectionReason::Icteric => "icteric",
            RejectionReason::Other => "other",
        }
    }
}

/// The specimen's condition as found on receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "status", deny_unknown_fields)]
pub enum SpecimenCondition {
    /// Fit for testing as received.
    // A struct variant, not a unit one: serde lets an internally tagged unit variant
    // take any other field, and a receipt naming one must be refused.
    Satisfactory {},
    /// Accepted for testing despite a problem; results on it carry a note (ISO 15189
    /// 7.2.6.2).
    Compromised { note: Note },
}

/// Where a specimen is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageLocation {
    pub room: Place,
    pub device: Option<Label>,
    pub rack: Option<Label>,
    pub position: Option<Label>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CollectSample {
    pub sample_id: SampleId,
    pub order_id: OrderId,
    pub accession_number: AccessionNumber,
    pub specimen_type: String,
    pub container: String,
    pub tests: Vec<TestCode>,
    pub collected_by: ActorId,
    pub collected_at: DateTime<Utc>,
}

/// The plausible transport temperatures, °C.
const TRANSPORT_CELSIUS: std::ops::RangeInclusive<f64> = -200.0..=100.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandOver {
    pub from: PersonName,
    pub to: PersonName,
    pub location: Place,
    pub at: DateTime<Utc>,
    #[schemars(range(min = *TRANSPORT_CELSIUS.start(), max = *TRANSPORT_CELSIUS.end()))]
    pub temperature_celsius: Option<f64>,
}

/// A child aliquot to be split off a parent specimen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AliquotSpec {
    pub sample_id: SampleId,
    pub accession_number: AccessionNumber,
    pub tests: Vec<TestCode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SampleCommand {
    Collect(CollectSample),
    HandOver(HandOver),
    Receive {
        received_by: ActorId,
        received_at: DateTime<Utc>,
        condition: SpecimenCondition,
    },
    Reject {
        reason: RejectionReason,
        detail: Option<Note>,
    },
    /// On the parent: split off child aliquots.
    Aliquot {
        children: Vec<AliquotSpec>,
    },
    /// On a child: create it from the parent's aliquot record.
    CreateAliquot {
        sample_id: SampleId,
        parent_id: SampleId,
    },
    Store {
        location: StorageLocation,
    },
    Dispose {
        method: Option<Note>,
    },
}

impl SampleCommand {
    /// The reason the command gives, for the event's audit metadata.
    pub fn reason(&self) -> Option<String> {
        match self {
            SampleCommand::Reject { reason, detail } => {
                let code = reason.code();
                Some(match detail {
                    Some(d) => format!("{code}: {d}"),
                    None => code.to_string(),
                })
            }
            _ => None,
        }
    }

    /// A short name of the command (logs, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            SampleCommand::Collect(_) => "sample.collect",
            SampleCommand::HandOver(_) => "sample.hand-over",
            SampleCommand::Receive { .. } => "sample.receive",
            SampleCommand::Reject { .. } => "sample.reject",
            SampleCommand::Aliquot { .. } => "sample.aliquot",
            SampleCommand::CreateAliquot { .. } => "sample.create-aliquot",
            SampleCommand::Store { .. } => "sample.store",
            SampleCommand::Dispose { .. } => "sample.dispose",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SampleEvent {
    SampleCollected {
        sample_id: SampleId,
        order_id: OrderId,
        accession_number: AccessionNumber,
        specimen_type: String,
        container: String,
        tests: Vec<TestCode>,
        collected_by: ActorId,
        collected_at: DateTime<Utc>,
    },
    SampleHandedOver(HandOver),
    SampleReceived {
        received_by: ActorId,
        received_at: DateTime<Utc>,
        condition: SpecimenCondition,
    },
    SampleRejected {
        reason: RejectionReason,
        detail: Option<Note>,
        recollection_requested: bool,
    },
    SampleAliquoted {
        children: Vec<AliquotSpec>,
    },
    AliquotCreated {
        sample_id: SampleId,
        parent_id: SampleId,
        order_id: OrderId,
        accession_number: AccessionNumber,
        specimen_type: String,
        container: String,
        tests: Vec<TestCode>,
        collected_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
        condition: SpecimenCondition,
    },
    SampleStored {
        location: StorageLocation,
    },
    SampleDisposed {
        method: Option<Note>,
    },
}

impl DomainEvent for SampleEvent {
    fn event_type(&self) -> String {
        match self {
            SampleEvent::SampleCollected { .. } => "SampleCollected",
            SampleEvent::SampleHandedOver(_) => "SampleHandedOver",
            SampleEvent::SampleReceived { .. } => "SampleReceived",
            SampleEvent::SampleRejected { .. } => "SampleRejected",
            SampleEvent::SampleAliquoted { .. } => "SampleAliquoted",
            SampleEvent::AliquotCreated { .. } => "AliquotCreated",
            SampleEvent::SampleStored { .. } => "SampleStored",
            SampleEvent::SampleDisposed { .. } => "SampleDisposed",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        match self {
            // 2.0: `temperature_celsius` replaced the free-text `temperature` of 1.0
            // (see crate::upcast).
            SampleEvent::SampleHandedOver(_) => "2.0.0",
            _ => "1.0.0",
        }
        .to_string()
    }
}

/// Where a specimen is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SampleStatus {
    Collected,
    Received,
    Rejected,
    Disposed,
}

crate::error::domain_error!(SampleError);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("invalid sample command: {0}")]
    Invalid(FieldErrors),
    #[error("the sample has not been collected")]
    NotCollected,
    #[error("the sample already exists")]
    AlreadyExists,
    #[error("order {0} does not exist")]
    UnknownOrder(OrderId),
    #[error("order {0} is cancelled")]
    OrderCancelled(OrderId),
    #[error("accession number {0} is already in use")]
    AccessionInUse(AccessionNumber),
    #[error("the sample is {0:?}; this needs a sample that is {1}")]
    WrongStatus(SampleStatus, &'static str),
    #[error("parent sample {0} does not list this aliquot")]
    NotAnAliquotOf(SampleId),
    #[error("parent sample {0} is {1:?}: an aliquot needs a received parent")]
    ParentNotReceived(SampleId, SampleStatus),
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

impl SampleError {
    fn rule_name(&self) -> &'static str {
        match self {
            SampleError::Invalid(_) => "sample.invalid",
            SampleError::NotCollected => "sample.not-collected",
            SampleError::AlreadyExists => "sample.already-exists",
            SampleError::UnknownOrder(_) => "sample.unknown-order",
            SampleError::OrderCancelled(_) => "sample.order-cancelled",
            SampleError::AccessionInUse(_) => "sample.accession-in-use",
            SampleError::WrongStatus(..) => "sample.wrong-status",
            SampleError::NotAnAliquotOf(_) => "sample.not-an-aliquot",
            SampleError::ParentNotReceived(..) => "sample.parent-not-received",
            SampleError::Lookup(_) => "lookup-failed",
        }
    }
}

/// What other aggregates need to know about a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SampleFacts {
    pub sample_id: SampleId,
    pub order_id: OrderId,
    pub accession_number: AccessionNumber,
    pub specimen_type: String,
    pub container: String,
    pub tests: Vec<TestCode>,
    pub status: SampleStatus,
    pub collected_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    pub condition: Option<SpecimenCondition>,
    pub parent: Option<SampleId>,
    pub children: Vec<AliquotSpec>,
}

/// The Sample aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sample {
    facts: Option<SampleFacts>,
    custody: Vec<HandOver>,
    location: Option<StorageLocation>,
}

impl Sample {
    pub fn facts(&self) -> Option<&SampleFacts> {
        self.facts.as_ref()
    }

    pub fn custody_chain(&self) -> &[HandOver] {
        &self.custody
    }

    fn existing(&self) -> Result<&SampleFacts, SampleError> {
        self.facts.as_ref().ok_or(SampleError::NotCollected)
    }

    fn require(
        &self,
        allowed: &[SampleStatus],
        what: &'static str,
    ) -> Result<&SampleFacts, SampleError> {
        let f = self.existing()?;
        if allowed.contains(&f.status) {
            Ok(f)
        } else {
            Err(SampleError::WrongStatus(f.status, what))
        }
    }
}

/// A stated time: storable, and not in the future ([`stated_time_problem`]).
fn not_in_future(field: &str, at: DateTime<Utc>, now: DateTime<Utc>, errors: &mut Vec<FieldError>) {
    if let Some(problem) = stated_time_problem(at, now) {
        errors.push(FieldError::new(field, problem));
    }
}

async fn collect(c: CollectSample, services: &LabServices) -> Result<SampleEvent, SampleError> {
    let mut errors = Vec::new();
    if c.tests.is_empty() {
        errors.push(FieldError::new("tests", "a sample needs at least one test"));
    }
    not_in_future("collected_at", c.collected_at, services.now(), &mut errors);
    let order = services
        .order(c.order_id)
        .await?
        .ok_or(SampleError::UnknownOrder(c.order_id))?;
    if order.cancelled {
        return Err(SampleError::OrderCancelled(c.order_id));
    }
    let catalogue = services.catalogue().await?;
    let mut seen = BTreeSet::new();
    for (i, code) in c.tests.iter().enumerate() {
        let field = format!("tests/{i}");
        if !seen.insert(code) {
            errors.push(FieldError::new(
                field,
                format!("test {code} is listed twice"),
            ));
            continue;
        }
        if !order.is_active(code) {
            errors.push(FieldError::new(
                field,
                format!(
                    "test {code} is not an active test of order {}",
                    order.order_number
                ),
            ));
            continue;
        }
        match catalogue.get(code) {
            None => errors.push(FieldError::new(
                field,
                format!("test {code} is not in the catalogue"),
            )),
            Some(def) => {
                if def.specimen != c.specimen_type
                    || !def.container.eq_ignore_ascii_case(c.container.trim())
                {
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "test {code} needs {} in a {} container, not {} in {}",
                            def.specimen, def.container, c.specimen_type, c.container
                        ),
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(SampleError::Invalid(FieldErrors(errors)));
    }
    if services.accession_in_use(&c.accession_number).await? {
        return Err(SampleError::AccessionInUse(c.accession_number));
    }
    Ok(SampleEvent::SampleCollected {
        sample_id: c.sample_id,
        order_id: c.order_id,
        accession_number: c.accession_number,
        specimen_type: c.specimen_type,
        container: c.container.trim().to_string(),
        tests: c.tests,
        collected_by: c.collected_by,
        collected_at: c.collected_at,
    })
}

async fn check_aliquots(
    parent: &SampleFacts,
    children: &[AliquotSpec],
    services: &LabServices,
) -> Result<(), SampleError> {
    let mut errors = Vec::new();
    if children.is_empty() {
        errors.push(FieldError::new(
            "children",
            "at least one aliquot is required",
        ));
    }
    let mut ids = BTreeSet::new();
    let mut accessions = BTreeSet::new();
    for (i, child) in children.iter().enumerate() {
        let at = |f: &str| format!("children/{i}/{f}");
        // Already split off this sample (a split sent again: the ledger finishes it).
        let listed_id = parent
            .children
            .iter()
            .any(|c| c.sample_id == child.sample_id);
        let listed_accession = parent
            .children
            .iter()
            .any(|c| c.accession_number == child.accession_number);
        let bad_accession = child.accession_number == parent.accession_number
            || !accessions.insert(&child.accession_number)
            || listed_accession;
        let bad_id =
            child.sample_id == parent.sample_id || !ids.insert(child.sample_id) || listed_id;
        if bad_accession {
            errors.push(FieldError::new(
                at("accession_number"),
                "aliquot accession numbers must be new and distinct",
            ));
        } else if bad_id {
            // Named only when the accession number is not at fault: the API gives each
            // child the id of its parent and accession number, so a repeated number
            // repeats the id, and the number is what the caller sent.
            errors.push(FieldError::new(
                at("sample_id"),
                "aliquot ids must be new and distinct",
            ));
        }
        if child.tests.is_empty() {
            errors.push(FieldError::new(
                at("tests"),
                "an aliquot needs at least one test",
            ));
        }
        for (j, t) in child.tests.iter().enumerate() {
            if !parent.tests.contains(t) {
                errors.push(FieldError::new(
                    format!("children/{i}/tests/{j}"),
                    format!("test {t} is not assigned to the parent sample"),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(SampleError::Invalid(FieldErrors(errors)));
    }
    for child in children {
        if services.accession_in_use(&child.accession_number).await? {
            return Err(SampleError::AccessionInUse(child.accession_number.clone()));
        }
    }
    Ok(())
}

impl Aggregate for Sample {
    const TYPE: &'static str = "Sample";
    type Command = SampleCommand;
    type Event = SampleEvent;
    type Error = SampleError;
    type Services = LabServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use SampleStatus::*;
        let event = match command {
            SampleCommand::Collect(c) => {
                if self.facts.is_some() {
                    return Err(SampleError::AlreadyExists);
                }
                collect(c, services).await?
            }
            SampleCommand::HandOver(h) => {
                self.require(&[Collected, Received, Rejected], "not disposed")?;
                let mut errors = Vec::new();
                not_in_future("at", h.at, services.now(), &mut errors);
                if let Some(t) = h.temperature_celsius {
                    if !t.is_finite() || !TRANSPORT_CELSIUS.contains(&t) {
                        errors.push(FieldError::new(
                            "temperature_celsius",
                            format!(
                                "{t} is not a plausible transport temperature (−200 to 100 °C)"
                            ),
                        ));
                    }
                }
                if !errors.is_empty() {
                    return Err(SampleError::Invalid(FieldErrors(errors)));
                }
                SampleEvent::SampleHandedOver(h)
            }
            SampleCommand::Receive {
                received_by,
                received_at,
                condition,
            } => {
                let f = self.require(&[Collected], "collected and not yet received")?;
                let mut errors = Vec::new();
                not_in_future("received_at", received_at, services.now(), &mut errors);
                if received_at < f.collected_at {
                    errors.push(FieldError::new(
                        "received_at",
                        "receipt cannot precede collection",
                    ));
                }
                if !errors.is_empty() {
                    return Err(SampleError::Invalid(FieldErrors(errors)));
                }
                SampleEvent::SampleReceived {
                    received_by,
                    received_at,
                    condition,
                }
            }
            SampleCommand::Reject { reason, detail } => {
                self.require(&[Collected, Received], "collected or received")?;
                if reason == RejectionReason::Other && detail.is_none() {
                    return Err(SampleError::Invalid(
                        FieldError::new(
                            "detail",
                            "a rejection for `other` reasons needs a description",
                        )
                        .into(),
                    ));
                }
                SampleEvent::SampleRejected {
                    reason,
                    detail,
                    recollection_requested: true,
                }
            }
            SampleCommand::Aliquot { children } => {
                let f = self.require(&[Received], "received")?;
                check_aliquots(f, &children, services).await?;
                SampleEvent::SampleAliquoted { children }
            }
            SampleCommand::CreateAliquot {
                sample_id,
                parent_id,
            } => {
                if self.facts.is_some() {
                    return Err(SampleError::AlreadyExists);
                }
                let parent = services
                    .sample(parent_id)
                    .await?
                    .ok_or(SampleError::NotAnAliquotOf(parent_id))?;
                // A child inherits its parent's receipt: a parent rejected or disposed
                // since its split gives no testable aliquot.
                if parent.status != Received {
                    return Err(SampleError::ParentNotReceived(parent_id, parent.status));
                }
                let spec = parent
                    .children
                    .iter()
                    .find(|c| c.sample_id == sample_id)
                    .ok_or(SampleError::NotAnAliquotOf(parent_id))?;
                SampleEvent::AliquotCreated {
                    sample_id,
                    parent_id,
                    order_id: parent.order_id,
                    accession_number: spec.accession_number.clone(),
                    specimen_type: parent.specimen_type.clone(),
                    container: parent.container.clone(),
                    tests: spec.tests.clone(),
                    collected_at: parent.collected_at,
                    received_at: parent.received_at.unwrap_or(parent.collected_at),
                    condition: parent
                        .condition
                        .clone()
                        .unwrap_or(SpecimenCondition::Satisfactory {}),
                }
            }
            SampleCommand::Store { location } => {
                self.require(&[Received, Rejected], "received or rejected")?;
                SampleEvent::SampleStored { location }
            }
            SampleCommand::Dispose { method } => {
                self.require(&[Collected, Received, Rejected], "not yet disposed")?;
                SampleEvent::SampleDisposed { method }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SampleEvent::SampleCollected {
                sample_id,
                order_id,
                accession_number,
                specimen_type,
                container,
                tests,
                collected_at,
                ..
            } => {
                self.facts = Some(SampleFacts {
                    sample_id,
                    order_id,
                    accession_number,
                    specimen_type,
                    container,
                    tests,
                    status: SampleStatus::Collected,
                    collected_at,
                    received_at: None,
                    condition: None,
                    parent: None,
                    children: Vec::new(),
                });
            }
            SampleEvent::AliquotCreated {
                sample_id,
                parent_id,
                order_id,
                accession_number,
                specimen_type,
                container,
                tests,
                collected_at,
                received_at,
                condition,
            } => {
                self.facts = Some(SampleFacts {
                    sample_id,
                    order_id,
                    accession_number,
                    specimen_type,
                    container,
                    tests,
                    status: SampleStatus::Received,
                    collected_at,
                    received_at: Some(received_at),
                    condition: Some(condition),
                    parent: Some(parent_id),
                    children: Vec::new(),
                });
            }
            SampleEvent::SampleHandedOver(h) => self.custody.push(h),
            SampleEvent::SampleReceived {
                received_at,
                condition,
                ..
            } => {
                if let Some(f) = self.facts.as_mut() {
                    f.status = SampleStatus::Received;
                    f.received_at = Some(received_at);
                    f.condition = Some(condition);
                }
            }
            SampleEvent::SampleRejected { .. } => {
                if let Some(f) = self.facts.as_mut() {
                    f.status = SampleStatus::Rejected;
                }
            }
            SampleEvent::SampleAliquoted { children } => {
                if let Some(f) = self.facts.as_mut() {
                    f.children.extend(children);
                }
            }
            SampleEvent::SampleStored { location } => self.location = Some(location),
            SampleEvent::SampleDisposed { .. } => {
                if let Some(f) = self.facts.as_mut() {
                    f.status = SampleStatus::Disposed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RejectionReason::*;

    #[test]
    fn rejection_codes_are_the_serialised_names() {
        for r in [
            Haemolysed,
            Clotted,
            InsufficientVolume,
            WrongContainer,
            Unlabelled,
            Mislabelled,
            Leaked,
            StabilityExceeded,
            Lipaemic,
            Icteric,
            Other,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }
}
