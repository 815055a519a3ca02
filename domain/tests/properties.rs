//! Property tests: no input, however strange, makes a parser or decoder panic; what is
//! accepted is normalised once and stays the same when parsed again.

use lis_domain::catalogue::{parse_csv, Interval, ResultKind};
use lis_domain::ids::{AccessionNumber, OrderNumber, TestCode};
use lis_domain::patient::{AbhaNumber, Mrn, NewPatient, Phone, RawPatient, Sex};
use lis_domain::result::ResultCommand;
use lis_domain::sample::SampleCommand;
use lis_domain::text::{Address, Note, PersonName, Reason};
use lis_domain::value::{ResultValue, ValueSpec};
use proptest::prelude::*;

macro_rules! stable {
    ($ty:ty, $s:expr) => {
        if let Ok(v) = <$ty>::parse($s) {
            let again = <$ty>::parse(v.as_str()).expect("an accepted value parses again");
            prop_assert_eq!(again.as_str(), v.as_str());
        }
    };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn text_parsers_never_panic_and_are_idempotent(s in any::<String>()) {
        stable!(TestCode, &s);
        stable!(AccessionNumber, &s);
        stable!(OrderNumber, &s);
        stable!(Reason, &s);
        stable!(PersonName, &s);
        stable!(Note, &s);
        stable!(Mrn, &s);
        stable!(AbhaNumber, &s);
        stable!(Phone, &s);
        stable!(Address, &s);
        let _ = Sex::parse(&s);
    }

    #[test]
    fn patient_collects_errors_without_panicking(
        mrn in any::<String>(), name in any::<String>(), sex in any::<String>(), dob in any::<String>(),
        phone in any::<String>(), address in any::<String>()
    ) {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let raw = RawPatient {
            mrn: &mrn, abha_number: None, name: &name, sex: &sex, date_of_birth: &dob,
            phone: Some(&phone), address: Some(&address),
        };
        if let Err(e) = NewPatient::parse(raw, today) {
            prop_assert!(!e.0.is_empty());
        }
    }

    #[test]
    fn catalogue_parsing_never_panics(text in any::<String>()) {
        let _ = parse_csv(&text);
    }

    #[test]
    fn numeric_values_are_accepted_only_when_finite_and_possible(v in any::<f64>(), unit in "[a-zA-Z/%]{0,6}") {
        let spec = ValueSpec {
            kind: ResultKind::Numeric { unit: "mmol/L".into(), decimals: 1 },
            physical: Interval { low: Some(0.0), high: None },
        };
        if let Ok(ResultValue::Numeric { value, unit }) = spec.check(ResultValue::Numeric { value: v, unit }) {
            prop_assert!(value.is_finite() && value >= 0.0);
            prop_assert_eq!(unit, "mmol/L");
        }
    }

    #[test]
    fn command_decoders_never_panic(json in any::<String>()) {
        let _ = serde_json::from_str::<ResultCommand>(&json);
        let _ = serde_json::from_str::<SampleCommand>(&json);
    }
}
