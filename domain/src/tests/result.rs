use super::kit::{catalogue, code, now, Lab};
use crate::actor::ActorId;
use crate::catalogue::{CatalogueVersion, DeltaRule, Interval, DEFAULT_DELTA_RULE};
use crate::flags::{AppliedInterval, DeltaCheck, Flag, PreviousResult};
use crate::ids::{OrderId, PatientId, ResultId, SampleId};
use crate::patient::Sex;
use crate::result::{
    CriticalNotification, LabResult, NotificationMethod, RecordResult, ResultCommand, ResultError,
    ResultEvent, ResultStatus,
};
use crate::sample::SampleStatus;
use crate::text::{PersonName, Reason};
use crate::validation::{FieldError, FieldErrors};
use crate::value::{ResultValue, ValueSpec};
use cqrs_es::test::TestFramework;

type ResultTester = TestFramework<LabResult>;

fn order_id() -> OrderId {
    OrderId::from_uuid(uuid::Uuid::from_u128(1))
}
fn sample_id() -> SampleId {
    SampleId::from_uuid(uuid::Uuid::from_u128(2))
}
fn result_id(test: &str) -> ResultId {
    ResultId::for_test(sample_id(), &code(test))
}
fn actor(a: &str) -> ActorId {
    ActorId::parse(a).unwrap()
}
fn reason(r: &str) -> Reason {
    Reason::parse(r).unwrap()
}
fn k(v: f64) -> ResultValue {
    ResultValue::Numeric {
        value: v,
        unit: "mmol/L".into(),
    }
}

/// A received serum sample with K and Dengue NS1, for a 40-year-old woman.
fn lab_with(status: SampleStatus) -> Lab {
    Lab::default()
        .with_order(order_id(), &["K", "DENGUE_NS1", "NA"])
        .with_sample(sample_id(), order_id(), &["K", "DENGUE_NS1"], status)
}

fn lab() -> Lab {
    lab_with(SampleStatus::Received)
}

fn record(test: &str, value: ResultValue) -> ResultCommand {
    ResultCommand::Record(RecordResult {
        result_id: result_id(test),
        sample_id: sample_id(),
        test_code: code(test),
        value,
        method: None,
        instrument: None,
        raw_message: None,
    })
}

/// The event recording potassium `v` with `flags` and no previous result.
fn recorded_k(v: f64, flags: Vec<Flag>) -> ResultEvent {
    recorded_k_with_delta(v, flags, None)
}

fn recorded_k_with_delta(v: f64, flags: Vec<Flag>, delta: Option<DeltaCheck>) -> ResultEvent {
    let cat = catalogue();
    let def = cat.get(&code("K")).unwrap();
    ResultEvent::ResultRecorded {
        result_id: result_id("K"),
        sample_id: sample_id(),
        order_id: order_id(),
        patient_id: PatientId::from_uuid(uuid::Uuid::from_u128(7)),
        test_code: code("K"),
        loinc: "2823-3".into(),
        value: k(v),
        method: None,
        instrument: None,
        raw_message: None,
        catalogue_version: CatalogueVersion(1),
        spec: ValueSpec::from(def),
        reference: AppliedInterval {
            interval: Some(Interval {
                low: Some(3.5),
                high: Some(5.2),
            }),
            basis: "adult female".into(),
        },
        critical_limits: Interval {
            low: Some(2.6),
            high: Some(6.4),
        },
        delta_rule: DEFAULT_DELTA_RULE,
        delta,
        flags,
        specimen_note: None,
        collected_at: now() - chrono::Duration::hours(1),
        sex: Sex::Female,
        age_years: 40,
    }
}

fn verified(by: &str) -> ResultEvent {
    ResultEvent::ResultVerified {
        verified_by: actor(by),
    }
}

fn authorised(v: f64, flags: Vec<Flag>) -> ResultEvent {
    ResultEvent::ResultAuthorised {
        authorised_by: actor("path.1"),
        patient_id: PatientId::from_uuid(uuid::Uuid::from_u128(7)),
        order_id: order_id(),
        test_code: code("K"),
        value: k(v),
        flags,
        collected_at: now() - chrono::Duration::hours(1),
    }
}

fn notification(read_back: bool) -> CriticalNotification {
    CriticalNotification {
        notified_person: PersonName::parse("Dr Rao").unwrap(),
        method: NotificationMethod::Phone,
        value_conveyed: "potassium 7.1".into(),
        read_back_confirmed: read_back,
        notified_at: now(),
    }
}

// --- recording -------------------------------------------------------------------------

#[test]
fn a_normal_value_is_recorded_with_the_interval_and_catalogue_version_applied() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("K", k(4.1)))
        .then_expect_events(vec![recorded_k(4.1, vec![])]);
}

#[test]
fn flags_come_from_the_reference_interval_and_critical_limits() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("K", k(3.1)))
        .then_expect_events(vec![recorded_k(3.1, vec![Flag::L])]);
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("K", k(7.1)))
        .then_expect_events(vec![recorded_k(7.1, vec![Flag::HH])]);
}

#[test]
fn the_delta_check_compares_with_the_previous_released_result() {
    let previous = PreviousResult {
        result_id: ResultId::from_uuid(uuid::Uuid::from_u128(42)),
        value: 3.0,
        collected_at: now() - chrono::Duration::days(2),
    };
    let mut lab = lab();
    lab.previous = Some(previous.clone());
    ResultTester::with(lab.services())
        .given_no_previous_events()
        .when(record("K", k(5.0)))
        .then_expect_events(vec![recorded_k_with_delta(
            5.0,
            vec![Flag::D],
            Some(DeltaCheck {
                previous,
                rule: DeltaRule::Percent(50.0),
                change: 2.0,
                flagged: true,
            }),
        )]);
}

#[test]
fn no_result_once_the_patient_is_erased() {
    let mut lab = lab();
    lab.erased = true;
    ResultTester::with(lab.services())
        .given_no_previous_events()
        .when(record("K", k(4.1)))
        .then_expect_error(ResultError::PatientErased);
}

#[test]
fn no_result_on_a_sample_not_received_or_rejected() {
    ResultTester::with(lab_with(SampleStatus::Collected).services())
        .given_no_previous_events()
        .when(record("K", k(4.0)))
        .then_expect_error(ResultError::SampleNotReceived(sample_id()));
    ResultTester::with(lab_with(SampleStatus::Rejected).services())
        .given_no_previous_events()
        .when(record("K", k(4.0)))
        .then_expect_error(ResultError::SampleRejected(sample_id()));
}

#[test]
fn no_result_for_a_test_not_on_the_sample_or_cancelled() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record(
            "NA",
            ResultValue::Numeric {
                value: 140.0,
                unit: "mmol/L".into(),
            },
        ))
        .then_expect_error(ResultError::TestNotOnSample(code("NA")));
    let mut lab = lab();
    lab.orders.get_mut(&order_id()).unwrap().tests.insert(
        code("K"),
        crate::order::TestLine::Cancelled {
            reason: reason("duplicate"),
        },
    );
    ResultTester::with(lab.services())
        .given_no_previous_events()
        .when(record("K", k(4.0)))
        .then_expect_error(ResultError::TestCancelled(code("K")));
}

#[test]
fn a_wrong_unit_or_impossible_number_is_refused_naming_the_field() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record(
            "K",
            ResultValue::Numeric {
                value: 4.0,
                unit: "mEq/L".into(),
            },
        ))
        .then_expect_error(ResultError::Invalid(
            FieldError::new(
                "value/unit",
                "unit `mEq/L` is wrong for this test: it is reported in `mmol/L` (UCUM)",
            )
            .into(),
        ));
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("K", k(f64::NAN)))
        .then_expect_error(ResultError::Invalid(
            FieldError::new("value/value", "value must be a finite number").into(),
        ));
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("K", k(-1.0)))
        .then_expect_error(ResultError::Invalid(
            FieldError::new(
                "value/value",
                "-1 is below the physically possible minimum of 0 mmol/L",
            )
            .into(),
        ));
}

#[test]
fn a_coded_value_must_be_an_allowed_answer() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(record("DENGUE_NS1", ResultValue::Coded { answer: "Weakly positive".into() }))
        .then_expect_error(ResultError::Invalid(FieldErrors(vec![FieldError::new(
            "value/answer",
            "`Weakly positive` is not an allowed answer; allowed: Negative, Positive, Indeterminate",
        )])));
}

#[test]
fn a_result_is_recorded_once_unless_a_rerun_was_requested() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(record("K", k(4.2)))
        .then_expect_error(ResultError::AlreadyRecorded);
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            ResultEvent::RerunRequested {
                reason: reason("QC failed"),
            },
        ])
        .when(record("K", k(4.2)))
        .then_expect_events(vec![recorded_k(4.2, vec![])]);
}

// --- verify and authorise --------------------------------------------------------------

#[test]
fn verify_only_a_recorded_result() {
    ResultTester::with(lab().services())
        .given_no_previous_events()
        .when(ResultCommand::Verify {
            by: actor("tech.1"),
        })
        .then_expect_error(ResultError::NotRecorded);
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Verify {
            by: actor("tech.2"),
        })
        .then_expect_error(ResultError::WrongStatus(
            ResultStatus::Verified,
            "recorded and not yet verified",
        ));
}

#[test]
fn authorise_only_a_verified_result() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::WrongStatus(ResultStatus::Recorded, "verified"));
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_events(vec![authorised(4.1, vec![])]);
}

/// An amendment, in `lab`, of the potassium of 4.1 released.
fn amending_a_release_in(lab: Lab) -> cqrs_es::test::AggregateResultValidator<LabResult> {
    ResultTester::with(lab.services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            authorised(4.1, vec![]),
        ])
        .when(ResultCommand::Amend {
            value: k(4.6),
            reason: reason("recalculated"),
        })
}

#[test]
fn a_result_whose_tube_was_rejected_since_is_neither_verified_nor_released() {
    // Recorded on a received tube, which the bench then rejects as mislabelled.
    for status in [SampleStatus::Received, SampleStatus::Rejected] {
        let lab = lab_with(status);
        let verify = ResultTester::with(lab.clone().services())
            .given(vec![recorded_k(4.1, vec![])])
            .when(ResultCommand::Verify {
                by: actor("tech.1"),
            });
        let authorise = ResultTester::with(lab.services())
            .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
            .when(ResultCommand::Authorise {
                by: actor("path.1"),
            });
        if status == SampleStatus::Rejected {
            verify.then_expect_error(ResultError::SampleRejected(sample_id()));
            authorise.then_expect_error(ResultError::SampleRejected(sample_id()));
        } else {
            verify.then_expect_events(vec![verified("tech.1")]);
            authorise.then_expect_events(vec![authorised(4.1, vec![])]);
        }
    }
    // Nor amended: an amendment is released at once.
    amending_a_release_in(lab_with(SampleStatus::Rejected))
        .then_expect_error(ResultError::SampleRejected(sample_id()));
    // Retracting it stays open.
    ResultTester::with(lab_with(SampleStatus::Rejected).services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Retract {
            reason: reason("tube rejected: mislabelled"),
        })
        .then_expect_events(vec![ResultEvent::ResultRetracted {
            reason: reason("tube rejected: mislabelled"),
            was_released: false,
        }]);
}

#[test]
fn a_result_on_an_aliquot_of_a_rejected_tube_is_neither_recorded_nor_released() {
    // The tube the result is on was split from a parent since rejected (mislabelled):
    // the aliquot carries the same label.
    let parent = SampleId::from_uuid(uuid::Uuid::from_u128(9));
    let mut lab = lab().with_sample(
        parent,
        order_id(),
        &["K", "DENGUE_NS1"],
        SampleStatus::Rejected,
    );
    lab.samples.get_mut(&sample_id()).unwrap().parent = Some(parent);
    ResultTester::with(lab.clone().services())
        .given_no_previous_events()
        .when(record("K", k(4.1)))
        .then_expect_error(ResultError::SampleRejected(parent));
    ResultTester::with(lab.clone().services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(ResultCommand::Verify {
            by: actor("tech.1"),
        })
        .then_expect_error(ResultError::SampleRejected(parent));
    // A parent still received leaves the aliquot's result to go on.
    lab.samples.get_mut(&parent).unwrap().status = SampleStatus::Received;
    ResultTester::with(lab.services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(ResultCommand::Verify {
            by: actor("tech.1"),
        })
        .then_expect_events(vec![verified("tech.1")]);
}

#[test]
fn a_result_whose_test_or_order_was_cancelled_since_is_neither_verified_nor_released() {
    let mut test_cancelled = lab();
    test_cancelled
        .orders
        .get_mut(&order_id())
        .unwrap()
        .tests
        .insert(
            code("K"),
            crate::order::TestLine::Cancelled {
                reason: reason("ordered on the wrong patient"),
            },
        );
    let mut order_cancelled = lab();
    order_cancelled
        .orders
        .get_mut(&order_id())
        .unwrap()
        .cancelled = true;
    for lab in [test_cancelled, order_cancelled] {
        amending_a_release_in(lab.clone()).then_expect_error(ResultError::TestCancelled(code("K")));
        ResultTester::with(lab.clone().services())
            .given(vec![recorded_k(4.1, vec![])])
            .when(ResultCommand::Verify {
                by: actor("tech.1"),
            })
            .then_expect_error(ResultError::TestCancelled(code("K")));
        ResultTester::with(lab.services())
            .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
            .when(ResultCommand::Authorise {
                by: actor("path.1"),
            })
            .then_expect_error(ResultError::TestCancelled(code("K")));
    }
}

#[test]
fn a_test_of_an_order_has_one_released_result_at_a_time() {
    // The same test resulted on another tube of the order (a repeat draw) and released.
    let other = ResultId::for_test(SampleId::new(), &code("K"));
    let mut lab = lab();
    lab.released_results
        .insert((order_id(), code("K")), vec![other]);
    ResultTester::with(lab.clone().services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::AlreadyReleased(code("K"), other));
    // Nor does the result itself, nor another test of the order released.
    lab.released_results.clear();
    lab.released_results
        .insert((order_id(), code("K")), vec![result_id("K")]);
    lab.released_results
        .insert((order_id(), code("NA")), vec![other]);
    ResultTester::with(lab.services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_events(vec![authorised(4.1, vec![])]);
}

#[test]
fn the_verifier_may_not_authorise_unless_the_lab_turns_four_eyes_off() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![]), verified("path.1")])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::SameVerifierAndAuthoriser(actor("path.1")));
    let mut single_pathologist_lab = lab();
    single_pathologist_lab.four_eyes = Some(false);
    ResultTester::with(single_pathologist_lab.services())
        .given(vec![recorded_k(4.1, vec![]), verified("path.1")])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_events(vec![authorised(4.1, vec![])]);
}

#[test]
fn a_critical_result_is_not_released_before_a_read_back_notification() {
    let history = vec![recorded_k(7.1, vec![Flag::HH]), verified("tech.1")];
    ResultTester::with(lab().services())
        .given(history.clone())
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::CriticalNotNotified(vec![Flag::HH]));
    // A call without read-back does not satisfy the rule.
    let no_read_back = ResultEvent::CriticalValueNotified {
        notified_by: actor("tech.1"),
        notification: notification(false),
    };
    ResultTester::with(lab().services())
        .given(history.clone())
        .and(vec![no_read_back])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::CriticalNotNotified(vec![Flag::HH]));
    let read_back = ResultEvent::CriticalValueNotified {
        notified_by: actor("tech.1"),
        notification: notification(true),
    };
    ResultTester::with(lab().services())
        .given(history)
        .and(vec![read_back])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_events(vec![authorised(7.1, vec![Flag::HH])]);
}

#[test]
fn a_call_time_no_read_model_could_store_is_refused() {
    let mut call = notification(true);
    call.notified_at = "+20000-01-01T00:00:00Z".parse().unwrap();
    ResultTester::with(lab().services())
        .given(vec![recorded_k(7.1, vec![Flag::HH])])
        .when(ResultCommand::RecordCriticalNotification {
            by: actor("tech.1"),
            notification: call,
        })
        .then_expect_error(ResultError::Invalid(
            FieldError::new(
                "notified_at",
                "the call's time must fall between the years 1 and 9999",
            )
            .into(),
        ));
}

#[test]
fn a_notification_made_before_a_correction_does_not_cover_the_new_value() {
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(7.1, vec![Flag::HH]),
            ResultEvent::CriticalValueNotified {
                notified_by: actor("tech.1"),
                notification: notification(true),
            },
            ResultEvent::ResultCorrected {
                previous: k(7.1),
                value: k(7.4),
                delta: None,
                flags: vec![Flag::HH],
                reason: reason("transcription error"),
            },
            verified("tech.1"),
        ])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::CriticalNotNotified(vec![Flag::HH]));
}

#[test]
fn a_call_made_before_the_value_replaced_an_earlier_one_is_not_a_call_about_it() {
    // The value was corrected at 10:00; a call stated at 09:50 was about the value before.
    let mut lab = lab();
    lab.value_stored_at = Some(now());
    let recorded = recorded_k(7.1, vec![Flag::HH]);
    let corrected = ResultEvent::ResultCorrected {
        previous: k(7.1),
        value: k(7.4),
        delta: None,
        flags: vec![Flag::HH],
        reason: reason("transcription error"),
    };
    let at = |minutes_before: i64| CriticalNotification {
        notified_at: now() - chrono::Duration::minutes(minutes_before),
        ..notification(true)
    };
    // A call stated `minutes_before` 10:00, after the events `given`.
    let call = |given: Vec<ResultEvent>, minutes_before: i64| {
        ResultTester::with(lab.clone().services())
            .given(given)
            .when(ResultCommand::RecordCriticalNotification {
                by: actor("tech.1"),
                notification: at(minutes_before),
            })
    };
    let notified = |minutes_before: i64| {
        vec![ResultEvent::CriticalValueNotified {
            notified_by: actor("tech.1"),
            notification: at(minutes_before),
        }]
    };
    call(vec![recorded.clone(), corrected.clone()], 10).then_expect_error(ResultError::Invalid(
        FieldError::new(
            "notified_at",
            "the call (2026-03-03T09:50:00Z) was made before this value replaced the earlier one (2026-03-03T10:00:00Z): it was about the earlier value; record the call made about this one",
        )
        .into(),
    ));
    // A first value may have been phoned before it was entered (downtime): it counts.
    call(vec![recorded.clone()], 10).then_expect_events(notified(10));
    // Within the clock skew of the store's clock, it counts.
    call(vec![recorded, corrected], 4).then_expect_events(notified(4));
}

#[test]
fn only_a_critical_result_takes_a_critical_notification() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(ResultCommand::RecordCriticalNotification {
            by: actor("tech.1"),
            notification: notification(true),
        })
        .then_expect_error(ResultError::NotCritical);
}

// --- corrections, amendments, retractions ---------------------------------------------

#[test]
fn a_correction_before_release_keeps_the_old_value_and_voids_verification() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Correct {
            value: k(3.2),
            reason: reason("wrong sample position"),
        })
        .then_expect_events(vec![ResultEvent::ResultCorrected {
            previous: k(4.1),
            value: k(3.2),
            delta: None,
            flags: vec![Flag::L],
            reason: reason("wrong sample position"),
        }]);
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            ResultEvent::ResultCorrected {
                previous: k(4.1),
                value: k(3.2),
                delta: None,
                flags: vec![Flag::L],
                reason: reason("x"),
            },
        ])
        .when(ResultCommand::Authorise {
            by: actor("path.1"),
        })
        .then_expect_error(ResultError::WrongStatus(ResultStatus::Recorded, "verified"));
}

#[test]
fn correct_only_before_release() {
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            authorised(4.1, vec![]),
        ])
        .when(ResultCommand::Correct {
            value: k(3.2),
            reason: reason("typo"),
        })
        .then_expect_error(ResultError::WrongStatus(
            ResultStatus::Released,
            "recorded or verified, not yet released",
        ));
}

#[test]
fn amend_only_a_released_result_and_keep_the_original() {
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![]), verified("tech.1")])
        .when(ResultCommand::Amend {
            value: k(4.5),
            reason: reason("instrument recalibrated"),
        })
        .then_expect_error(ResultError::WrongStatus(ResultStatus::Verified, "released"));
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            authorised(4.1, vec![]),
        ])
        .when(ResultCommand::Amend {
            value: k(5.5),
            reason: reason("instrument recalibrated"),
        })
        .then_expect_events(vec![ResultEvent::ResultAmended {
            amendment: 1,
            previous: k(4.1),
            value: k(5.5),
            delta: None,
            flags: vec![Flag::H],
            reason: reason("instrument recalibrated"),
        }]);
}

#[test]
fn an_amendment_needs_a_reason_that_is_not_blank() {
    let cmd: Result<ResultCommand, _> = serde_json::from_str(
        r#"{"Amend":{"value":{"kind":"numeric","value":4.5,"unit":"mmol/L"},"reason":"  "}}"#,
    );
    let err = cmd.unwrap_err().to_string();
    assert!(err.contains("reason must not be empty"), "{err}");
}

#[test]
fn an_amendment_must_change_the_value() {
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            authorised(4.1, vec![]),
        ])
        .when(ResultCommand::Amend {
            value: k(4.1),
            reason: reason("no change"),
        })
        .then_expect_error(ResultError::UnchangedValue);
}

#[test]
fn retraction_records_whether_the_result_had_been_released_and_happens_once() {
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            verified("tech.1"),
            authorised(4.1, vec![]),
        ])
        .when(ResultCommand::Retract {
            reason: reason("wrong patient"),
        })
        .then_expect_events(vec![ResultEvent::ResultRetracted {
            reason: reason("wrong patient"),
            was_released: true,
        }]);
    ResultTester::with(lab().services())
        .given(vec![
            recorded_k(4.1, vec![]),
            ResultEvent::ResultRetracted {
                reason: reason("x"),
                was_released: false,
            },
        ])
        .when(ResultCommand::Retract {
            reason: reason("again"),
        })
        .then_expect_error(ResultError::WrongStatus(
            ResultStatus::Retracted,
            "not already retracted",
        ));
}

#[test]
fn acknowledge_a_released_result_once_per_value() {
    let released = vec![
        recorded_k(4.1, vec![]),
        verified("tech.1"),
        authorised(4.1, vec![]),
    ];
    ResultTester::with(lab().services())
        .given(released.clone())
        .when(ResultCommand::Acknowledge {
            by: actor("dr.rao"),
        })
        .then_expect_events(vec![ResultEvent::ResultAcknowledged {
            acknowledged_by: actor("dr.rao"),
        }]);
    ResultTester::with(lab().services())
        .given(released.clone())
        .and(vec![ResultEvent::ResultAcknowledged {
            acknowledged_by: actor("dr.rao"),
        }])
        .when(ResultCommand::Acknowledge {
            by: actor("dr.rao"),
        })
        .then_expect_error(ResultError::AlreadyAcknowledged);
    ResultTester::with(lab().services())
        .given(vec![recorded_k(4.1, vec![])])
        .when(ResultCommand::Acknowledge {
            by: actor("dr.rao"),
        })
        .then_expect_error(ResultError::WrongStatus(ResultStatus::Recorded, "released"));
}
