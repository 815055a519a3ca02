use super::kit::{code, now, Lab};
use crate::actor::ActorId;
use crate::ids::{AccessionNumber, OrderId, SampleId};
use crate::sample::{
    AliquotSpec, CollectSample, HandOver, RejectionReason, Sample, SampleCommand, SampleError,
    SampleEvent, SampleStatus, SpecimenCondition,
};
use crate::text::{Note, PersonName, Place};
use crate::validation::{FieldError, FieldErrors};
use cqrs_es::test::TestFramework;

type SampleTester = TestFramework<Sample>;

fn ids() -> (OrderId, SampleId) {
    (
        OrderId::from_uuid(uuid::Uuid::from_u128(1)),
        SampleId::from_uuid(uuid::Uuid::from_u128(2)),
    )
}

fn acc(a: &str) -> AccessionNumber {
    AccessionNumber::parse(a).unwrap()
}

fn collect(tests: &[&str], specimen: &str, container: &str) -> CollectSample {
    let (order_id, sample_id) = ids();
    CollectSample {
        sample_id,
        order_id,
        accession_number: acc("ACC-0001"),
        specimen_type: specimen.into(),
        container: container.into(),
        tests: tests.iter().map(|t| code(t)).collect(),
        collected_by: ActorId::parse("phleb.1").unwrap(),
        collected_at: now() - chrono::Duration::hours(1),
    }
}

fn collected(tests: &[&str]) -> SampleEvent {
    let c = collect(tests, "serum", "red/SST");
    SampleEvent::SampleCollected {
        sample_id: c.sample_id,
        order_id: c.order_id,
        accession_number: c.accession_number,
        specimen_type: c.specimen_type,
        container: c.container,
        tests: c.tests,
        collected_by: c.collected_by,
        collected_at: c.collected_at,
    }
}

fn received() -> SampleEvent {
    SampleEvent::SampleReceived {
        received_by: ActorId::parse("tech.1").unwrap(),
        received_at: now() - chrono::Duration::minutes(30),
        condition: SpecimenCondition::Satisfactory {},
    }
}

fn lab() -> Lab {
    Lab::default().with_order(ids().0, &["K", "NA", "HB"])
}

#[test]
fn collecting_a_serum_tube_for_serum_tests() {
    SampleTester::with(lab().services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(
            &["K", "NA"],
            "serum",
            "red/SST",
        )))
        .then_expect_events(vec![collected(&["K", "NA"])]);
}

#[test]
fn the_container_must_suit_every_test_on_the_tube() {
    SampleTester::with(lab().services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(
            &["K", "HB"],
            "serum",
            "red/SST",
        )))
        .then_expect_error(SampleError::Invalid(FieldErrors(vec![FieldError::new(
            "tests/1",
            "test HB needs whole_blood_edta in a lavender EDTA container, not serum in red/SST",
        )])));
}

#[test]
fn a_collection_time_no_read_model_could_store_is_refused() {
    // JSON and chrono take year -5000; PostgreSQL does not, so a projection would stop
    // at the event for good.
    let mut c = collect(&["K"], "serum", "red/SST");
    c.collected_at = "-5000-01-01T00:00:00Z".parse().unwrap();
    SampleTester::with(lab().services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(c))
        .then_expect_error(SampleError::Invalid(
            FieldError::new(
                "collected_at",
                "-5000-01-01 00:00:00 UTC is not a time between the years 1 and 9999",
            )
            .into(),
        ));
}

#[test]
fn only_active_tests_of_the_order_go_on_a_tube() {
    SampleTester::with(lab().services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(
            &["CREA"],
            "serum",
            "red/SST",
        )))
        .then_expect_error(SampleError::Invalid(
            FieldError::new("tests/0", "test CREA is not an active test of order ORD-1").into(),
        ));
}

#[test]
fn an_accession_number_is_used_once() {
    let mut lab = lab();
    lab.accessions.insert(acc("ACC-0001"));
    SampleTester::with(lab.services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(&["K"], "serum", "red/SST")))
        .then_expect_error(SampleError::AccessionInUse(acc("ACC-0001")));
}

#[test]
fn no_collection_for_an_unknown_or_cancelled_order() {
    SampleTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(&["K"], "serum", "red/SST")))
        .then_expect_error(SampleError::UnknownOrder(ids().0));
    let mut lab = lab();
    lab.orders.get_mut(&ids().0).unwrap().cancelled = true;
    SampleTester::with(lab.services())
        .given_no_previous_events()
        .when(SampleCommand::Collect(collect(&["K"], "serum", "red/SST")))
        .then_expect_error(SampleError::OrderCancelled(ids().0));
}

#[test]
fn a_sample_is_received_once_and_not_before_collection() {
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"]), received()])
        .when(SampleCommand::Receive {
            received_by: ActorId::parse("tech.1").unwrap(),
            received_at: now(),
            condition: SpecimenCondition::Satisfactory {},
        })
        .then_expect_error(SampleError::WrongStatus(
            SampleStatus::Received,
            "collected and not yet received",
        ));
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"])])
        .when(SampleCommand::Receive {
            received_by: ActorId::parse("tech.1").unwrap(),
            received_at: now() - chrono::Duration::hours(2),
            condition: SpecimenCondition::Satisfactory {},
        })
        .then_expect_error(SampleError::Invalid(
            FieldError::new("received_at", "receipt cannot precede collection").into(),
        ));
}

#[test]
fn rejection_is_terminal_and_requests_recollection() {
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"])])
        .when(SampleCommand::Reject {
            reason: RejectionReason::Haemolysed,
            detail: None,
        })
        .then_expect_events(vec![SampleEvent::SampleRejected {
            reason: RejectionReason::Haemolysed,
            detail: None,
            recollection_requested: true,
        }]);
    SampleTester::with(lab().services())
        .given(vec![
            collected(&["K"]),
            SampleEvent::SampleRejected {
                reason: RejectionReason::Clotted,
                detail: None,
                recollection_requested: true,
            },
        ])
        .when(SampleCommand::Receive {
            received_by: ActorId::parse("tech.1").unwrap(),
            received_at: now(),
            condition: SpecimenCondition::Satisfactory {},
        })
        .then_expect_error(SampleError::WrongStatus(
            SampleStatus::Rejected,
            "collected and not yet received",
        ));
}

#[test]
fn an_other_rejection_needs_a_description() {
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"])])
        .when(SampleCommand::Reject {
            reason: RejectionReason::Other,
            detail: None,
        })
        .then_expect_error(SampleError::Invalid(
            FieldError::new(
                "detail",
                "a rejection for `other` reasons needs a description",
            )
            .into(),
        ));
}

#[test]
fn hand_overs_build_the_custody_chain_with_plausible_temperatures() {
    let h = HandOver {
        from: PersonName::parse("Ward 3 nurse").unwrap(),
        to: PersonName::parse("Courier Ravi").unwrap(),
        location: Place::parse("Ward 3").unwrap(),
        at: now() - chrono::Duration::minutes(50),
        temperature_celsius: Some(4.0),
    };
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"])])
        .when(SampleCommand::HandOver(h.clone()))
        .then_expect_events(vec![SampleEvent::SampleHandedOver(h.clone())]);
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"])])
        .when(SampleCommand::HandOver(HandOver {
            temperature_celsius: Some(f64::INFINITY),
            ..h
        }))
        .then_expect_error(SampleError::Invalid(
            FieldError::new(
                "temperature_celsius",
                "inf is not a plausible transport temperature (−200 to 100 °C)",
            )
            .into(),
        ));
}

#[test]
fn a_child_already_split_off_is_not_listed_again() {
    let child = AliquotSpec {
        sample_id: SampleId::from_uuid(uuid::Uuid::from_u128(3)),
        accession_number: acc("ACC-0001-A"),
        tests: vec![code("K")],
    };
    SampleTester::with(lab().services())
        .given(vec![
            collected(&["K", "NA"]),
            received(),
            SampleEvent::SampleAliquoted {
                children: vec![child.clone()],
            },
        ])
        .when(SampleCommand::Aliquot {
            children: vec![child],
        })
        .then_expect_error(SampleError::Invalid(FieldErrors(vec![FieldError::new(
            "children/0/accession_number",
            "aliquot accession numbers must be new and distinct",
        )])));
}

#[test]
fn aliquots_keep_lineage_both_ways() {
    let child = AliquotSpec {
        sample_id: SampleId::from_uuid(uuid::Uuid::from_u128(3)),
        accession_number: acc("ACC-0001-A"),
        tests: vec![code("K")],
    };
    SampleTester::with(lab().services())
        .given(vec![collected(&["K", "NA"]), received()])
        .when(SampleCommand::Aliquot {
            children: vec![child.clone()],
        })
        .then_expect_events(vec![SampleEvent::SampleAliquoted {
            children: vec![child.clone()],
        }]);

    // The child is created from the parent's record of it.
    let (order_id, parent_id) = ids();
    let mut lab = lab().with_sample(parent_id, order_id, &["K", "NA"], SampleStatus::Received);
    lab.samples
        .get_mut(&parent_id)
        .unwrap()
        .children
        .push(child.clone());
    let parent = lab.samples[&parent_id].clone();
    SampleTester::with(lab.clone().services())
        .given_no_previous_events()
        .when(SampleCommand::CreateAliquot {
            sample_id: child.sample_id,
            parent_id,
        })
        .then_expect_events(vec![SampleEvent::AliquotCreated {
            sample_id: child.sample_id,
            parent_id,
            order_id,
            accession_number: child.accession_number.clone(),
            specimen_type: "serum".into(),
            container: "red/SST".into(),
            tests: vec![code("K")],
            collected_at: parent.collected_at,
            received_at: parent.received_at.unwrap(),
            condition: SpecimenCondition::Satisfactory {},
        }]);
    let stranger = SampleId::from_uuid(uuid::Uuid::from_u128(99));
    SampleTester::with(lab.clone().services())
        .given_no_previous_events()
        .when(SampleCommand::CreateAliquot {
            sample_id: stranger,
            parent_id,
        })
        .then_expect_error(SampleError::NotAnAliquotOf(parent_id));
    // A parent rejected or disposed since its split gives no testable aliquot.
    for status in [SampleStatus::Rejected, SampleStatus::Disposed] {
        let mut gone = lab.clone();
        gone.samples.get_mut(&parent_id).unwrap().status = status;
        SampleTester::with(gone.services())
            .given_no_previous_events()
            .when(SampleCommand::CreateAliquot {
                sample_id: child.sample_id,
                parent_id,
            })
            .then_expect_error(SampleError::ParentNotReceived(parent_id, status));
    }
}

#[test]
fn an_aliquot_only_carries_tests_of_its_parent() {
    let child = AliquotSpec {
        sample_id: SampleId::from_uuid(uuid::Uuid::from_u128(3)),
        accession_number: acc("ACC-0001-A"),
        tests: vec![code("CREA")],
    };
    SampleTester::with(lab().services())
        .given(vec![collected(&["K"]), received()])
        .when(SampleCommand::Aliquot {
            children: vec![child],
        })
        .then_expect_error(SampleError::Invalid(
            FieldError::new(
                "children/0/tests/0",
                "test CREA is not assigned to the parent sample",
            )
            .into(),
        ));
}

#[test]
fn a_disposed_sample_is_gone() {
    SampleTester::with(lab().services())
        .given(vec![
            collected(&["K"]),
            SampleEvent::SampleDisposed {
                method: Some(Note::parse("autoclave").unwrap()),
            },
        ])
        .when(SampleCommand::Dispose { method: None })
        .then_expect_error(SampleError::WrongStatus(
            SampleStatus::Disposed,
            "not yet disposed",
        ));
}
