//! The Order aggregate: a requisition of one or more catalogue tests for a patient.
//!
//! An order is placed once, may gain tests, lose tests (with a reason) or be cancelled
//! (with a reason). A test that has a released result can no longer be cancelled: the
//! clinician has seen it, so the way back is an amendment or retraction of the result.

use crate::catalogue::CatalogueVersion;
use crate::ids::{OrderId, OrderNumber, PatientId, TestCode};
use crate::patient::Sex;
use crate::sealed::Sealed;
use crate::services::{LabServices, LookupError};
use crate::text::{PersonName, Place, Reason};
use crate::validation::{FieldError, FieldErrors};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How urgently the tests are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Routine,
    Urgent,
    Stat,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Routine => "routine",
            Priority::Urgent => "urgent",
            Priority::Stat => "stat",
        }
    }
}

/// Place a new order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub order_number: OrderNumber,
    pub patient_id: PatientId,
    /// The patient's identity, sealed under their data key.
    pub identity: Sealed,
    pub sex: Sex,
    pub ordering_clinician: PersonName,
    pub priority: Priority,
    pub collection_site: Place,
    /// Free-text clinical notes, sealed under the patient's data key.
    pub clinical_notes: Option<Sealed>,
    pub tests: Vec<TestCode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OrderCommand {
    Place(PlaceOrder),
    AddTests { tests: Vec<TestCode> },
    CancelTest { test: TestCode, reason: Reason },
    Cancel { reason: Reason },
}

impl OrderCommand {
    /// The reason the command gives, for the event's audit metadata.
    pub fn reason(&self) -> Option<String> {
        match self {
            OrderCommand::CancelTest { reason, .. } | OrderCommand::Cancel { reason } => {
                Some(reason.to_string())
            }
            OrderCommand::Place(_) | OrderCommand::AddTests { .. } => None,
        }
    }

    /// A short name of the command (logs, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            OrderCommand::Place(_) => "order.place",
            OrderCommand::AddTests { .. } => "order.add-tests",
            OrderCommand::CancelTest { .. } => "order.cancel-test",
            OrderCommand::Cancel { .. } => "order.cancel",
        }
    }
}

/// A test as ordered, with the catalogue version it was ordered under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderedTest {
    pub code: TestCode,
    pub catalogue_version: CatalogueVersion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        order_number: OrderNumber,
        patient_id: PatientId,
        /// Name, MRN, ABHA number, date of birth, phone, address: sealed (2.0; 1.0 held
        /// them in clear and was never released).
        identity: Sealed,
        /// A clinical fact for reference intervals, in clear.
        sex: Sex,
        ordering_clinician: PersonName,
        priority: Priority,
        collection_site: Place,
        clinical_notes: Option<Sealed>,
        tests: Vec<OrderedTest>,
    },
    TestsAdded {
        tests: Vec<OrderedTest>,
    },
    TestCancelled {
        test: TestCode,
        reason: Reason,
    },
    OrderCancelled {
        reason: Reason,
        /// Tests still active when the order was cancelled (now cancelled with it).
        tests: Vec<TestCode>,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::TestsAdded { .. } => "TestsAdded",
            OrderEvent::TestCancelled { .. } => "TestCancelled",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        match self {
            // 2.0: the patient's identity is sealed (docs/privacy.md).
            OrderEvent::OrderPlaced { .. } => "2.0.0",
            _ => "1.0.0",
        }
        .to_string()
    }
}

crate::error::domain_error!(OrderError);

/// Why an order command was refused.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("invalid order: {0}")]
    Invalid(FieldErrors),
    #[error("the order has not been placed")]
    NotPlaced,
    #[error("the order has already been placed")]
    AlreadyPlaced,
    #[error("the order is cancelled")]
    OrderCancelled,
    #[error("test {0} is not on this order")]
    TestNotOnOrder(TestCode),
    #[error("test {0} is already cancelled")]
    TestAlreadyCancelled(TestCode),
    #[error("test {0} has a released result and cannot be cancelled; amend or retract the result instead")]
    TestReleased(TestCode),
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

impl OrderError {
    fn rule_name(&self) -> &'static str {
        match self {
            OrderError::Invalid(_) => "order.invalid",
            OrderError::NotPlaced => "order.not-placed",
            OrderError::AlreadyPlaced => "order.already-placed",
            OrderError::OrderCancelled => "order.cancelled",
            OrderError::TestNotOnOrder(_) => "order.test-not-on-order",
            OrderError::TestAlreadyCancelled(_) => "order.test-already-cancelled",
            OrderError::TestReleased(_) => "order.test-released",
            OrderError::Lookup(_) => "lookup-failed",
        }
    }
}

/// The state of one test line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TestLine {
    Active { catalogue_version: CatalogueVersion },
    Cancelled { reason: Reason },
}

/// What other aggregates need to know about an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderFacts {
    pub order_id: OrderId,
    pub order_number: OrderNumber,
    pub patient_id: PatientId,
    pub sex: Sex,
    /// Sealed: only the command layer's key vault can open it (for the age at collection).
    pub identity: Sealed,
    pub priority: Priority,
    pub cancelled: bool,
    pub tests: BTreeMap<TestCode, TestLine>,
}

impl OrderFacts {
    pub fn is_active(&self, test: &TestCode) -> bool {
        !self.cancelled && matches!(self.tests.get(test), Some(TestLine::Active { .. }))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Placed {
    order_id: OrderId,
    order_number: OrderNumber,
    patient_id: PatientId,
    identity: Sealed,
    sex: Sex,
    priority: Priority,
    tests: BTreeMap<TestCode, TestLine>,
    cancelled: Option<Reason>,
}

/// The Order aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Order {
    placed: Option<Placed>,
}

impl Order {
    /// The order's id; `None` before it is placed.
    pub fn order_id(&self) -> Option<OrderId> {
        self.placed.as_ref().map(|p| p.order_id)
    }

    /// Facts of this order for other aggregates; `None` before it is placed.
    pub fn facts(&self) -> Option<OrderFacts> {
        let p = self.placed.as_ref()?;
        Some(OrderFacts {
            order_id: p.order_id,
            order_number: p.order_number.clone(),
            patient_id: p.patient_id,
            sex: p.sex,
            identity: p.identity.clone(),
            priority: p.priority,
            cancelled: p.cancelled.is_some(),
            tests: p.tests.clone(),
        })
    }

    fn placed(&self) -> Result<&Placed, OrderError> {
        let p = self.placed.as_ref().ok_or(OrderError::NotPlaced)?;
        if p.cancelled.is_some() {
            return Err(OrderError::OrderCancelled);
        }
        Ok(p)
    }
}

/// Checks a list of test codes: not empty, no duplicates, each in the catalogue.
async fn check_tests(
    tests: &[TestCode],
    already: Option<&BTreeMap<TestCode, TestLine>>,
    services: &LabServices,
) -> Result<Vec<OrderedTest>, OrderError> {
    if tests.is_empty() {
        return Err(OrderError::Invalid(
            FieldError::new("tests", "at least one test is required").into(),
        ));
    }
    let catalogue = services.catalogue().await?;
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, code) in tests.iter().enumerate() {
        let field = format!("tests/{i}");
        if !seen.insert(code) {
            errors.push(FieldError::new(
                field,
                format!("test {code} is listed twice"),
            ));
        } else if catalogue.get(code).is_none() {
            errors.push(FieldError::new(
                field,
                format!(
                    "test {code} is not in the catalogue ({})",
                    catalogue.version
                ),
            ));
        } else if already.is_some_and(|a| matches!(a.get(code), Some(TestLine::Active { .. }))) {
            errors.push(FieldError::new(
                field,
                format!("test {code} is already on the order"),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(OrderError::Invalid(FieldErrors(errors)));
    }
    Ok(tests
        .iter()
        .map(|code| OrderedTest {
            code: code.clone(),
            catalogue_version: catalogue.version,
        })
        .collect())
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Services = LabServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            OrderCommand::Place(p) => {
                if self.placed.is_some() {
                    return Err(OrderError::AlreadyPlaced);
                }
                let tests = check_tests(&p.tests, None, services).await?;
                let event = OrderEvent::OrderPlaced {
                    order_id: p.order_id,
                    order_number: p.order_number,
                    patient_id: p.patient_id,
                    identity: p.identity,
                    sex: p.sex,
                    ordering_clinician: p.ordering_clinician,
                    priority: p.priority,
                    collection_site: p.collection_site,
                    clinical_notes: p.clinical_notes,
                    tests,
                };
                sink.write(event, self).await;
            }
            OrderCommand::AddTests { tests } => {
                let placed = self.placed()?;
                let tests = check_tests(&tests, Some(&placed.tests), services).await?;
                sink.write(OrderEvent::TestsAdded { tests }, self).await;
            }
            OrderCommand::CancelTest { test, reason } => {
                let placed = self.placed()?;
                match placed.tests.get(&test) {
                    None => return Err(OrderError::TestNotOnOrder(test)),
                    Some(TestLine::Cancelled { .. }) => {
                        return Err(OrderError::TestAlreadyCancelled(test))
                    }
                    Some(TestLine::Active { .. }) => {}
                }
                let released = services.released_tests(placed.order_id).await?;
                if released.contains(&test) {
                    return Err(OrderError::TestReleased(test));
                }
                sink.write(OrderEvent::TestCancelled { test, reason }, self)
                    .await;
            }
            OrderCommand::Cancel { reason } => {
                let placed = self.placed()?;
                let released = services.released_tests(placed.order_id).await?;
                if let Some(test) = released.into_iter().next() {
                    return Err(OrderError::TestReleased(test));
                }
                let tests = placed
                    .tests
                    .iter()
                    .filter(|(_, line)| matches!(line, TestLine::Active { .. }))
                    .map(|(code, _)| code.clone())
                    .collect();
                sink.write(OrderEvent::OrderCancelled { reason, tests }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                order_number,
                patient_id,
                identity,
                sex,
                priority,
                tests,
                ..
            } => {
                self.placed = Some(Placed {
                    order_id,
                    order_number,
                    patient_id,
                    identity,
                    sex,
                    priority,
                    tests: tests
                        .into_iter()
                        .map(|t| {
                            (
                                t.code,
                                TestLine::Active {
                                    catalogue_version: t.catalogue_version,
                                },
                            )
                        })
                        .collect(),
                    cancelled: None,
                });
            }
            OrderEvent::TestsAdded { tests } => {
                if let Some(p) = self.placed.as_mut() {
                    for t in tests {
                        p.tests.insert(
                            t.code,
                            TestLine::Active {
                                catalogue_version: t.catalogue_version,
                            },
                        );
                    }
                }
            }
            OrderEvent::TestCancelled { test, reason } => {
                if let Some(p) = self.placed.as_mut() {
                    p.tests.insert(test, TestLine::Cancelled { reason });
                }
            }
            OrderEvent::OrderCancelled { reason, tests } => {
                if let Some(p) = self.placed.as_mut() {
                    for t in tests {
                        p.tests.insert(
                            t,
                            TestLine::Cancelled {
                                reason: reason.clone(),
                            },
                        );
                    }
                    p.cancelled = Some(reason);
                }
            }
        }
    }
}
