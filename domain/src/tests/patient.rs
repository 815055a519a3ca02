//! The Patient aggregate: erasure is recorded once, with its reason.

use super::kit::Lab;
use crate::patient_record::{PatientCommand, PatientError, PatientEvent, PatientRecord};
use crate::text::Reason;
use cqrs_es::test::TestFramework;

type PatientTester = TestFramework<PatientRecord>;

fn reason() -> Reason {
    Reason::parse("patient request under DPDP s.12, ticket 4411").unwrap()
}

#[test]
fn erasure_is_recorded_with_its_reason() {
    PatientTester::with(Lab::default().services())
        .given_no_previous_events()
        .when(PatientCommand::Erase { reason: reason() })
        .then_expect_events(vec![PatientEvent::PatientErased { reason: reason() }]);
}

#[test]
fn a_patient_is_erased_once() {
    PatientTester::with(Lab::default().services())
        .given(vec![PatientEvent::PatientErased { reason: reason() }])
        .when(PatientCommand::Erase { reason: reason() })
        .then_expect_error(PatientError::AlreadyErased);
}
