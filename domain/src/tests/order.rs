use super::kit::{code, sealed_identity, Lab};
use crate::catalogue::CatalogueVersion;
use crate::ids::{OrderId, OrderNumber, PatientId};
use crate::order::{
    Order, OrderCommand, OrderError, OrderEvent, OrderedTest, PlaceOrder, Priority,
};
use crate::patient::Sex;
use crate::text::{PersonName, Place, Reason};
use crate::validation::{FieldError, FieldErrors};
use cqrs_es::test::TestFramework;

type OrderTester = TestFramework<Order>;

fn order_id() -> OrderId {
    OrderId::from_uuid(uuid::Uuid::from_u128(1))
}

fn place(tests: &[&str]) -> PlaceOrder {
    PlaceOrder {
        order_id: order_id(),
        order_number: OrderNumber::parse("ORD-20260303-000001").unwrap(),
        patient_id: PatientId::from_uuid(uuid::Uuid::from_u128(7)),
        identity: sealed_identity(),
        sex: Sex::Female,
        ordering_clinician: PersonName::parse("Dr Rao").unwrap(),
        priority: Priority::Routine,
        collection_site: Place::parse("OPD").unwrap(),
        clinical_notes: None,
        tests: tests.iter().map(|t| code(t)).collect(),
    }
}

fn placed(tests: &[&str]) -> OrderEvent {
    let p = place(tests);
    OrderEvent::OrderPlaced {
        order_id: p.order_id,
        order_number: p.order_number,
        patient_id: p.patient_id,
        identity: p.identity,
        sex: p.sex,
        ordering_clinician: p.ordering_clinician,
        priority: p.priority,
        collection_site: p.collection_site,
        clinical_notes: p.clinical_notes,
        tests: tests
            .iter()
            .map(|t| OrderedTest {
                code: code(t),
                catalogue_version: CatalogueVersion(1),
            })
            .collect(),
    }
}

fn reason(r: &str) -> Reason {
    Reason::parse(r).unwrap()
}

#[test]
fn placing_an_order_records_the_catalogue_version_of_each_test() {
    OrderTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(OrderCommand::Place(place(&["HB", "K"])))
        .then_expect_events(vec![placed(&["HB", "K"])]);
}

#[test]
fn duplicate_and_unknown_tests_are_refused_with_their_positions() {
    OrderTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(OrderCommand::Place(place(&["HB", "NOPE", "HB"])))
        .then_expect_error(OrderError::Invalid(FieldErrors(vec![
            FieldError::new("tests/1", "test NOPE is not in the catalogue (v1)"),
            FieldError::new("tests/2", "test HB is listed twice"),
        ])));
}

#[test]
fn an_order_needs_a_test() {
    OrderTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(OrderCommand::Place(place(&[])))
        .then_expect_error(OrderError::Invalid(
            FieldError::new("tests", "at least one test is required").into(),
        ));
}

#[test]
fn an_order_is_placed_once() {
    OrderTester::with(Lab::default().services())
        .given(vec![placed(&["HB"])])
        .when(OrderCommand::Place(place(&["HB"])))
        .then_expect_error(OrderError::AlreadyPlaced);
}

#[test]
fn tests_can_be_added_but_not_twice() {
    OrderTester::with(Lab::default().services())
        .given(vec![placed(&["HB"])])
        .when(OrderCommand::AddTests {
            tests: vec![code("K")],
        })
        .then_expect_events(vec![OrderEvent::TestsAdded {
            tests: vec![OrderedTest {
                code: code("K"),
                catalogue_version: CatalogueVersion(1),
            }],
        }]);
    OrderTester::with(Lab::default().services())
        .given(vec![placed(&["HB"])])
        .when(OrderCommand::AddTests {
            tests: vec![code("HB")],
        })
        .then_expect_error(OrderError::Invalid(
            FieldError::new("tests/0", "test HB is already on the order").into(),
        ));
}

#[test]
fn a_test_is_cancelled_with_a_reason() {
    OrderTester::with(Lab::default().services())
        .given(vec![placed(&["HB", "K"])])
        .when(OrderCommand::CancelTest {
            test: code("K"),
            reason: reason("duplicate request"),
        })
        .then_expect_events(vec![OrderEvent::TestCancelled {
            test: code("K"),
            reason: reason("duplicate request"),
        }]);
}

#[test]
fn cancelling_a_test_with_a_released_result_is_refused() {
    let mut lab = Lab::default();
    lab.released.insert(code("K"));
    OrderTester::with(lab.clone().services())
        .given(vec![placed(&["HB", "K"])])
        .when(OrderCommand::CancelTest {
            test: code("K"),
            reason: reason("not needed"),
        })
        .then_expect_error(OrderError::TestReleased(code("K")));
    OrderTester::with(lab.services())
        .given(vec![placed(&["HB", "K"])])
        .when(OrderCommand::Cancel {
            reason: reason("patient left"),
        })
        .then_expect_error(OrderError::TestReleased(code("K")));
}

#[test]
fn cancelling_the_order_cancels_its_active_tests_and_ends_it() {
    let cancelled_k = OrderEvent::TestCancelled {
        test: code("K"),
        reason: reason("dup"),
    };
    OrderTester::with(Lab::default().services())
        .given(vec![placed(&["HB", "K"]), cancelled_k.clone()])
        .when(OrderCommand::Cancel {
            reason: reason("patient left"),
        })
        .then_expect_events(vec![OrderEvent::OrderCancelled {
            reason: reason("patient left"),
            tests: vec![code("HB")],
        }]);
    OrderTester::with(Lab::default().services())
        .given(vec![
            placed(&["HB"]),
            OrderEvent::OrderCancelled {
                reason: reason("left"),
                tests: vec![code("HB")],
            },
        ])
        .when(OrderCommand::AddTests {
            tests: vec![code("K")],
        })
        .then_expect_error(OrderError::OrderCancelled);
}

#[test]
fn commands_on_an_unplaced_order_are_refused() {
    OrderTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(OrderCommand::Cancel {
            reason: reason("x"),
        })
        .then_expect_error(OrderError::NotPlaced);
}
