//! The Result aggregate: one test on one sample, from entry to release and beyond.
//!
//! Life of a result: recorded (flagged against the catalogue in force) → corrected any
//! number of times before release → verified (technical validation) → authorised
//! (medical release) → amended after release, or retracted as entered in error. A rerun
//! may be requested before release. Every value change keeps the previous value in the
//! event, so history always shows what was replaced and why.
//!
//! Release rules (documented in docs/domain-rules.md):
//! - four-eyes: the person who authorises may not be the one who verified, unless the
//!   lab's policy turns the rule off;
//! - critical values: a result whose current value is LL or HH cannot be authorised until
//!   a critical-value notification with read-back confirmed has been recorded for that
//!   value. An amendment to a critical value is released at once (the clinician must not
//!   wait for the corrected value) and is then pending notification until one is recorded.

use crate::actor::ActorId;
use crate::catalogue::{CatalogueVersion, DeltaRule, Interval, DEFAULT_DELTA_RULE};
use crate::flags::{
    delta_check, delta_with_rule, flags_for, reference_interval, AppliedInterval, DeltaCheck, Flag,
    PreviousResult,
};
use crate::ids::{OrderId, PatientId, ResultId, SampleId, TestCode};
use crate::order::OrderFacts;
use crate::patient::Sex;
use crate::sample::{SampleFacts, SampleStatus, SpecimenCondition};
use crate::services::{storable, LabServices, LookupError, CLOCK_SKEW};
use crate::text::{Label, Note, PersonName, Reason};
use crate::validation::{FieldError, FieldErrors};
use crate::value::{ResultValue, ValueSpec};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// Largest raw instrument message kept verbatim (bytes).
pub const MAX_RAW_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecordResult {
    pub result_id: ResultId,
    pub sample_id: SampleId,
    pub test_code: TestCode,
    pub value: ResultValue,
    pub method: Option<Label>,
    pub instrument: Option<Label>,
    /// The instrument's message exactly as received (ASTM / HL7), when there is one.
    pub raw_message: Option<String>,
}

/// How a critical value was conveyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationMethod {
    Phone,
    InPerson,
    SecureMessage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CriticalNotification {
    /// The responsible clinician or nurse who took the call.
    pub notified_person: PersonName,
    pub method: NotificationMethod,
    /// The value as said to them.
    #[schemars(extend("pattern" = r"\S"))]
    pub value_conveyed: String,
    pub read_back_confirmed: bool,
    pub notified_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ResultCommand {
    Record(RecordResult),
    Correct {
        value: ResultValue,
        reason: Reason,
    },
    Verify {
        by: ActorId,
    },
    Authorise {
        by: ActorId,
    },
    Amend {
        value: ResultValue,
        reason: Reason,
    },
    Retract {
        reason: Reason,
    },
    RequestRerun {
        reason: Reason,
    },
    RecordCriticalNotification {
        by: ActorId,
        notification: CriticalNotification,
    },
    Acknowledge {
        by: ActorId,
    },
}

impl ResultCommand {
    /// The reason the command gives, for the event's audit metadata.
    pub fn reason(&self) -> Option<String> {
        match self {
            ResultCommand::Correct { reason, .. }
            | ResultCommand::Amend { reason, .. }
            | ResultCommand::Retract { reason }
            | ResultCommand::RequestRerun { reason } => Some(reason.to_string()),
            _ => None,
        }
    }

    /// A short name of the command (logs, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            ResultCommand::Record(_) => "result.record",
            ResultCommand::Correct { .. } => "result.correct",
            ResultCommand::Verify { .. } => "result.verify",
            ResultCommand::Authorise { .. } => "result.authorise",
            ResultCommand::Amend { .. } => "result.amend",
            ResultCommand::Retract { .. } => "result.retract",
            ResultCommand::RequestRerun { .. } => "result.rerun",
            ResultCommand::RecordCriticalNotification { .. } => "result.critical-notification",
            ResultCommand::Acknowledge { .. } => "result.acknowledge",
        }
    }
}

// Events are data written once and read as a whole; boxing the large variant would only
// add indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ResultEvent {
    ResultRecorded {
        result_id: ResultId,
        sample_id: SampleId,
        order_id: OrderId,
        patient_id: PatientId,
        test_code: TestCode,
        loinc: String,
        value: ResultValue,
        method: Option<Label>,
        instrument: Option<Label>,
        raw_message: Option<String>,
        catalogue_version: CatalogueVersion,
        spec: ValueSpec,
        reference: AppliedInterval,
        critical_limits: Interval,
        delta_rule: DeltaRule,
        delta: Option<DeltaCheck>,
        flags: Vec<Flag>,
        /// Set when the specimen was accepted though compromised (reported with the result).
        specimen_note: Option<Note>,
        collected_at: DateTime<Utc>,
        sex: Sex,
        age_years: u32,
    },
    ResultCorrected {
        previous: ResultValue,
        value: ResultValue,
        delta: Option<DeltaCheck>,
        flags: Vec<Flag>,
        reason: Reason,
    },
    ResultVerified {
        verified_by: ActorId,
    },
    ResultAuthorised {
        authorised_by: ActorId,
        /// What was released, denormalised so that look-ups need no replay.
        patient_id: PatientId,
        order_id: OrderId,
        test_code: TestCode,
        value: ResultValue,
        flags: Vec<Flag>,
        collected_at: DateTime<Utc>,
    },
    ResultAmended {
        amendment: u32,
        previous: ResultValue,
        value: ResultValue,
        delta: Option<DeltaCheck>,
        flags: Vec<Flag>,
        reason: Reason,
    },
    ResultRetracted {
        reason: Reason,
        was_released: bool,
    },
    RerunRequested {
        reason: Reason,
    },
    CriticalValueNotified {
        notified_by: ActorId,
        notification: CriticalNotification,
    },
    ResultAcknowledged {
        acknowledged_by: ActorId,
    },
}

impl DomainEvent for ResultEvent {
    fn event_type(&self) -> String {
        match self {
            ResultEvent::ResultRecorded { .. } => "ResultRecorded",
            ResultEvent::ResultCorrected { .. } => "ResultCorrected",
            ResultEvent::ResultVerified { .. } => "ResultVerified",
            ResultEvent::ResultAuthorised { .. } => "ResultAuthorised",
            ResultEvent::ResultAmended { .. } => "ResultAmended",
            ResultEvent::ResultRetracted { .. } => "ResultRetracted",
            ResultEvent::RerunRequested { .. } => "RerunRequested",
            ResultEvent::CriticalValueNotified { .. } => "CriticalValueNotified",
            ResultEvent::ResultAcknowledged { .. } => "ResultAcknowledged",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

/// Where a result is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Recorded,
    Verified,
    Released,
    RerunRequested,
    Retracted,
}

crate::error::domain_error!(ResultError);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResultError {
    #[error("invalid result: {0}")]
    Invalid(FieldErrors),
    #[error("no result has been recorded")]
    NotRecorded,
    #[error(
        "a result for this test on this sample is already recorded; correct it or request a rerun"
    )]
    AlreadyRecorded,
    #[error("sample {0} does not exist")]
    UnknownSample(SampleId),
    #[error("sample {0} has not been received")]
    SampleNotReceived(SampleId),
    #[error("sample {0} was rejected: it may not be tested, nor results on it verified or released (retract them)")]
    SampleRejected(SampleId),
    #[error("sample {0} has been disposed")]
    SampleDisposed(SampleId),
    #[error("test {0} is not assigned to this sample")]
    TestNotOnSample(TestCode),
    #[error("test {0} is cancelled on the order: it may not be resulted, nor a result of it verified or released (retract it)")]
    TestCancelled(TestCode),
    #[error("test {0} of this order already has a released result ({1}, on another tube): amend that result, or retract it before releasing this one")]
    AlreadyReleased(TestCode, ResultId),
    #[error("test {0} is not in the catalogue in force")]
    UnknownTest(TestCode),
    #[error("the result is {0:?}; this needs a result that is {1}")]
    WrongStatus(ResultStatus, &'static str),
    #[error("four-eyes rule: {0} verified this result and may not also authorise it")]
    SameVerifierAndAuthoriser(ActorId),
    #[error("the result is critical ({0:?}); record the critical-value notification (with read-back) before release")]
    CriticalNotNotified(Vec<Flag>),
    #[error("the result is not critical; there is no critical value to notify")]
    NotCritical,
    #[error("the new value is the same as the current one")]
    UnchangedValue,
    #[error("this result is already acknowledged")]
    AlreadyAcknowledged,
    #[error(
        "the patient has been erased: their age, and so the reference interval, cannot be known"
    )]
    PatientErased,
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

impl ResultError {
    fn rule_name(&self) -> &'static str {
        match self {
            ResultError::Invalid(_) => "result.invalid",
            ResultError::NotRecorded => "result.not-recorded",
            ResultError::AlreadyRecorded => "result.already-recorded",
            ResultError::UnknownSample(_) => "result.unknown-sample",
            ResultError::SampleNotReceived(_) => "result.sample-not-received",
            ResultError::SampleRejected(_) => "result.sample-rejected",
            ResultError::SampleDisposed(_) => "result.sample-disposed",
            ResultError::TestNotOnSample(_) => "result.test-not-on-sample",
            ResultError::TestCancelled(_) => "result.test-cancelled",
            ResultError::AlreadyReleased(..) => "result.test-already-released",
            ResultError::UnknownTest(_) => "result.unknown-test",
            ResultError::WrongStatus(..) => "result.wrong-status",
            ResultError::SameVerifierAndAuthoriser(_) => "result.four-eyes",
            ResultError::CriticalNotNotified(_) => "result.critical-not-notified",
            ResultError::NotCritical => "result.not-critical",
            ResultError::UnchangedValue => "result.unchanged-value",
            ResultError::AlreadyAcknowledged => "result.already-acknowledged",
            ResultError::PatientErased => "result.patient-erased",
            ResultError::Lookup(_) => "lookup-failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Current {
    result_id: ResultId,
    sample_id: SampleId,
    order_id: OrderId,
    patient_id: PatientId,
    test_code: TestCode,
    collected_at: DateTime<Utc>,
    spec: ValueSpec,
    reference: Option<Interval>,
    critical_limits: Interval,
    delta_rule: DeltaRule,
    previous: Option<PreviousResult>,
    value: ResultValue,
    flags: Vec<Flag>,
    status: ResultStatus,
    /// Bumped by every change of value; notifications and acknowledgements refer to it.
    revision: u32,
    amendments: u32,
    verified_by: Option<ActorId>,
    notified_revision: Option<u32>,
    acknowledged_revision: Option<u32>,
}

impl Current {
    fn is_critical(&self) -> bool {
        self.flags.iter().any(Flag::is_critical)
    }

    /// Validates a replacement value and computes its delta check and flags with the
    /// rule and limits the original was recorded under.
    fn revalue(
        &self,
        value: ResultValue,
    ) -> Result<(ResultValue, Option<DeltaCheck>, Vec<Flag>), ResultError> {
        let value = self.spec.check(value).map_err(ResultError::Invalid)?;
        if value == self.value {
            return Err(ResultError::UnchangedValue);
        }
        let delta = match (value.numeric(), self.previous.clone()) {
            (Some(v), Some(p)) => Some(delta_with_rule(self.delta_rule, v, p)),
            _ => None,
        };
        let flags = flags_for(
            &value,
            self.reference.as_ref(),
            &self.critical_limits,
            delta.as_ref(),
        );
        Ok((value, delta, flags))
    }
}

/// The Result aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LabResult {
    current: Option<Current>,
}

impl LabResult {
    /// The order of the result's test; `None` before it is recorded.
    pub fn order_id(&self) -> Option<OrderId> {
        self.current.as_ref().map(|c| c.order_id)
    }

    pub fn status(&self) -> Option<ResultStatus> {
        self.current.as_ref().map(|c| c.status)
    }

    pub fn value(&self) -> Option<&ResultValue> {
        self.current.as_ref().map(|c| &c.value)
    }

    /// Whether the current value is critical (LL or HH).
    pub fn is_critical(&self) -> bool {
        self.current.as_ref().is_some_and(Current::is_critical)
    }

    /// The value clinicians see now: the released (possibly amended) value, if any.
    pub fn released_value(&self) -> Option<(&ResultValue, DateTime<Utc>)> {
        let c = self.current.as_ref()?;
        (c.status == ResultStatus::Released).then_some((&c.value, c.collected_at))
    }

    fn current(&self) -> Result<&Current, ResultError> {
        self.current.as_ref().ok_or(ResultError::NotRecorded)
    }

    fn require(
        &self,
        allowed: &[ResultStatus],
        what: &'static str,
    ) -> Result<&Current, ResultError> {
        let c = self.current()?;
        if allowed.contains(&c.status) {
            Ok(c)
        } else {
            Err(ResultError::WrongStatus(c.status, what))
        }
    }
}

/// A result goes on to verification and release (an amendment included) only while its
/// tube and its test still stand: a tube rejected after the result was recorded (found
/// mislabelled, say), the tube an aliquot was split from rejected, or a test or order
/// cancelled since, leaves the result to be retracted, never released.
async fn still_wanted(c: &Current, services: &LabServices) -> Result<(), ResultError> {
    let sample = services.sample(c.sample_id).await?.ok_or_else(|| {
        LookupError::defect(format!(
            "sample {} of result {} not found",
            c.sample_id, c.result_id
        ))
    })?;
    tube_stands(&sample, services).await?;
    active_order(services, c.order_id, &c.test_code).await?;
    Ok(())
}

/// The order `id`, while `test` is still wanted on it (`result.test-cancelled` once the
/// test or the order is cancelled).
async fn active_order(
    services: &LabServices,
    id: OrderId,
    test: &TestCode,
) -> Result<OrderFacts, ResultError> {
    let order = services
        .order(id)
        .await?
        .ok_or_else(|| LookupError::defect(format!("order {id} not found")))?;
    if !order.is_active(test) {
        return Err(ResultError::TestCancelled(test.clone()));
    }
    Ok(order)
}

/// A tube may be tested while neither it nor any tube it was split from is rejected: an
/// aliquot carries its parent's blood and label.
async fn tube_stands(sample: &SampleFacts, services: &LabServices) -> Result<(), ResultError> {
    let mut tube = sample.clone();
    // Aliquots of aliquots are few levels deep; the bound only stops a loop in bad data.
    for _ in 0..16 {
        if tube.status == SampleStatus::Rejected {
            return Err(ResultError::SampleRejected(tube.sample_id));
        }
        let Some(parent) = tube.parent else {
            return Ok(());
        };
        tube = services.sample(parent).await?.ok_or_else(|| {
            LookupError::defect(format!(
                "parent {parent} of sample {} not found",
                tube.sample_id
            ))
        })?;
    }
    Ok(())
}

async fn record(r: RecordResult, services: &LabServices) -> Result<ResultEvent, ResultError> {
    if r.result_id != ResultId::for_test(r.sample_id, &r.test_code) {
        return Err(ResultError::Invalid(
            FieldError::new(
                "result_id",
                "result id does not belong to this sample and test",
            )
            .into(),
        ));
    }
    if r.raw_message
        .as_ref()
        .is_some_and(|m| m.len() > MAX_RAW_MESSAGE)
    {
        return Err(ResultError::Invalid(
            FieldError::new(
                "raw_message",
                format!("raw message is over {MAX_RAW_MESSAGE} bytes"),
            )
            .into(),
        ));
    }
    let sample = services
        .sample(r.sample_id)
        .await?
        .ok_or(ResultError::UnknownSample(r.sample_id))?;
    match sample.status {
        SampleStatus::Received => {}
        SampleStatus::Collected => return Err(ResultError::SampleNotReceived(r.sample_id)),
        SampleStatus::Rejected => return Err(ResultError::SampleRejected(r.sample_id)),
        SampleStatus::Disposed => return Err(ResultError::SampleDisposed(r.sample_id)),
    }
    tube_stands(&sample, services).await?;
    if !sample.tests.contains(&r.test_code) {
        return Err(ResultError::TestNotOnSample(r.test_code));
    }
    let order = active_order(services, sample.order_id, &r.test_code).await?;
    let catalogue = services.catalogue().await?;
    let def = catalogue
        .get(&r.test_code)
        .ok_or_else(|| ResultError::UnknownTest(r.test_code.clone()))?;
    let spec = ValueSpec::from(def);
    let value = spec.check(r.value).map_err(ResultError::Invalid)?;
    let age = services
        .age_at(order.patient_id, &order.identity, sample.collected_at)
        .await?
        .ok_or(ResultError::PatientErased)?;
    let reference = reference_interval(def, order.sex, age);
    let previous = match &value {
        ResultValue::Numeric { unit, .. } => {
            services
                .previous_released(order.patient_id, &r.test_code, unit, sample.collected_at)
                .await?
        }
        ResultValue::Coded { .. } => None,
    };
    let delta = value.numeric().and_then(|v| delta_check(def, v, previous));
    let flags = flags_for(
        &value,
        reference.interval.as_ref(),
        &def.critical,
        delta.as_ref(),
    );
    let specimen_note = match sample.condition {
        Some(SpecimenCondition::Compromised { note }) => Some(note),
        _ => None,
    };
    Ok(ResultEvent::ResultRecorded {
        result_id: r.result_id,
        sample_id: r.sample_id,
        order_id: sample.order_id,
        patient_id: order.patient_id,
        test_code: r.test_code,
        loinc: def.loinc.clone(),
        value,
        method: r.method,
        instrument: r.instrument,
        raw_message: r.raw_message,
        catalogue_version: catalogue.version,
        spec,
        reference,
        critical_limits: def.critical,
        delta_rule: def.delta.unwrap_or(DEFAULT_DELTA_RULE),
        delta,
        flags,
        specimen_note,
        collected_at: sample.collected_at,
        sex: order.sex,
        age_years: age.years,
    })
}

impl Aggregate for LabResult {
    const TYPE: &'static str = "Result";
    type Command = ResultCommand;
    type Event = ResultEvent;
    type Error = ResultError;
    type Services = LabServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use ResultStatus::*;
        let event = match command {
            ResultCommand::Record(r) => {
                if let Some(c) = &self.current {
                    if c.status != RerunRequested {
                        return Err(ResultError::AlreadyRecorded);
                    }
                }
                record(r, services).await?
            }
            ResultCommand::Correct { value, reason } => {
                let c = self.require(
                    &[Recorded, Verified],
                    "recorded or verified, not yet released",
                )?;
                let previous = c.value.clone();
                let (value, delta, flags) = c.revalue(value)?;
                ResultEvent::ResultCorrected {
                    previous,
                    value,
                    delta,
                    flags,
                    reason,
                }
            }
            ResultCommand::Verify { by } => {
                let c = self.require(&[Recorded], "recorded and not yet verified")?;
                still_wanted(c, services).await?;
                ResultEvent::ResultVerified { verified_by: by }
            }
            ResultCommand::Authorise { by } => {
                let c = self.require(&[Verified], "verified")?;
                still_wanted(c, services).await?;
                if services.policy().four_eyes && c.verified_by.as_ref() == Some(&by) {
                    return Err(ResultError::SameVerifierAndAuthoriser(by));
                }
                if c.is_critical() && c.notified_revision != Some(c.revision) {
                    return Err(ResultError::CriticalNotNotified(c.flags.clone()));
                }
                // One released value per ordered test: a second tube's result (a repeat
                // draw, an aliquot) is not released beside the first.
                let released = services.released_results(c.order_id, &c.test_code).await?;
                if let Some(other) = released.into_iter().find(|r| *r != c.result_id) {
                    return Err(ResultError::AlreadyReleased(c.test_code.clone(), other));
                }
                ResultEvent::ResultAuthorised {
                    authorised_by: by,
                    patient_id: c.patient_id,
                    order_id: c.order_id,
                    test_code: c.test_code.clone(),
                    value: c.value.clone(),
                    flags: c.flags.clone(),
                    collected_at: c.collected_at,
                }
            }
            ResultCommand::Amend { value, reason } => {
                let c = self.require(&[Released], "released")?;
                // An amendment is released at once.
                still_wanted(c, services).await?;
                let previous = c.value.clone();
                let (value, delta, flags) = c.revalue(value)?;
                ResultEvent::ResultAmended {
                    amendment: c.amendments + 1,
                    previous,
                    value,
                    delta,
                    flags,
                    reason,
                }
            }
            ResultCommand::Retract { reason } => {
                let c = self.require(
                    &[Recorded, Verified, Released, RerunRequested],
                    "not already retracted",
                )?;
                ResultEvent::ResultRetracted {
                    reason,
                    was_released: c.status == Released,
                }
            }
            ResultCommand::RequestRerun { reason } => {
                self.require(
                    &[Recorded, Verified],
                    "recorded or verified, not yet released",
                )?;
                ResultEvent::RerunRequested { reason }
            }
            ResultCommand::RecordCriticalNotification { by, notification } => {
                let c = self.require(
                    &[Recorded, Verified, Released],
                    "recorded, verified or released",
                )?;
                if !c.is_critical() {
                    return Err(ResultError::NotCritical);
                }
                let mut errors = Vec::new();
                if notification.value_conveyed.trim().is_empty() {
                    errors.push(FieldError::new(
                        "value_conveyed",
                        "the value as conveyed must be given",
                    ));
                }
                if !storable(&notification.notified_at) {
                    errors.push(FieldError::new(
                        "notified_at",
                        "the call's time must fall between the years 1 and 9999",
                    ));
                } else if notification.notified_at > services.now() + CLOCK_SKEW {
                    errors.push(FieldError::new(
                        "notified_at",
                        "the call cannot be in the future",
                    ));
                } else if c.revision > 1 {
                    // The value replaced an earlier one (a correction, an amendment, a
                    // rerun): a call made before it was stored was about the earlier one,
                    // and the new value needs its own. A first value may have been phoned
                    // before it was entered (from the analyser's screen, in downtime).
                    // Within the clock skew time cannot tell the two calls apart: If-Match
                    // on the command names the value the caller saw.
                    let stored = services.value_stored_at(c.result_id).await?;
                    if let Some(stored) =
                        stored.filter(|&s| notification.notified_at < s - CLOCK_SKEW)
                    {
                        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
                        errors.push(FieldError::new(
                            "notified_at",
                            format!(
                                "the call ({}) was made before this value replaced the earlier one ({}): it was about the earlier value; record the call made about this one",
                                at(notification.notified_at),
                                at(stored)
                            ),
                        ));
                    }
                }
                if !errors.is_empty() {
                    return Err(ResultError::Invalid(FieldErrors(errors)));
                }
                ResultEvent::CriticalValueNotified {
                    notified_by: by,
                    notification,
                }
            }
            ResultCommand::Acknowledge { by } => {
                let c = self.require(&[Released], "released")?;
                if c.acknowledged_revision == Some(c.revision) {
                    return Err(ResultError::AlreadyAcknowledged);
                }
                ResultEvent::ResultAcknowledged {
                    acknowledged_by: by,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ResultEvent::ResultRecorded {
                result_id,
                sample_id,
                order_id,
                patient_id,
                test_code,
                value,
                spec,
                reference,
                critical_limits,
                delta_rule,
                delta,
                flags,
                collected_at,
                ..
            } => {
                let revision = self.current.as_ref().map_or(1, |c| c.revision + 1);
                self.current = Some(Current {
                    result_id,
                    sample_id,
                    order_id,
                    patient_id,
                    test_code,
                    collected_at,
                    spec,
                    reference: reference.interval,
                    critical_limits,
                    delta_rule,
                    previous: delta.map(|d| d.previous),
                    value,
                    flags,
                    status: ResultStatus::Recorded,
                    revision,
                    amendments: 0,
                    verified_by: None,
                    notified_revision: None,
                    acknowledged_revision: None,
                });
            }
            ResultEvent::ResultCorrected { value, flags, .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.value = value;
                    c.flags = flags;
                    c.revision += 1;
                    c.status = ResultStatus::Recorded;
                    c.verified_by = None;
                }
            }
            ResultEvent::ResultVerified { verified_by } => {
                if let Some(c) = self.current.as_mut() {
                    c.status = ResultStatus::Verified;
                    c.verified_by = Some(verified_by);
                }
            }
            ResultEvent::ResultAuthorised { .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.status = ResultStatus::Released;
                }
            }
            ResultEvent::ResultAmended {
                amendment,
                value,
                flags,
                ..
            } => {
                if let Some(c) = self.current.as_mut() {
                    c.value = value;
                    c.flags = flags;
                    c.revision += 1;
                    c.amendments = amendment;
                }
            }
            ResultEvent::ResultRetracted { .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.status = ResultStatus::Retracted;
                }
            }
            ResultEvent::RerunRequested { .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.status = ResultStatus::RerunRequested;
                }
            }
            ResultEvent::CriticalValueNotified { notification, .. } => {
                if let Some(c) = self.current.as_mut() {
                    if notification.read_back_confirmed {
                        c.notified_revision = Some(c.revision);
                    }
                }
            }
            ResultEvent::ResultAcknowledged { .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.acknowledged_revision = Some(c.revision);
                }
            }
        }
    }
}
