//! Property tests: no input, however strange, makes a parser or decoder panic; what is
//! accepted is normalised once and stays the same when parsed again; a payload naming a
//! field its type does not have is refused.

use lis_domain::catalogue::{parse_csv, Interval, ResultKind};
use lis_domain::ids::{AccessionNumber, OrderNumber, TestCode};
use lis_domain::order::OrderCommand;
use lis_domain::patient::{AbhaNumber, Mrn, NewPatient, Phone, RawPatient, Sex};
use lis_domain::patient_record::PatientCommand;
use lis_domain::result::{CriticalNotification, ResultCommand};
use lis_domain::sample::{HandOver, SampleCommand, SpecimenCondition, StorageLocation};
use lis_domain::text::{Address, Note, PersonName, Reason};
use lis_domain::value::{ResultValue, ValueSpec};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::fmt::Debug;

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

/// Every property name in `T`'s JSON Schema: the field names its decoder knows.
fn field_names<T: schemars::JsonSchema>() -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &serde_json::to_value(schemars::schema_for!(T)).unwrap(),
        &mut out,
    );
    out
}

/// Every word the command types know: their variants' names (an externally tagged
/// variant is a property of its enum's schema) and their fields' names.
fn command_words() -> Vec<String> {
    let mut words = field_names::<OrderCommand>();
    words.extend(field_names::<SampleCommand>());
    words.extend(field_names::<ResultCommand>());
    words.extend(field_names::<PatientCommand>());
    words.into_iter().collect()
}

#[test]
fn the_command_words_hold_every_variant() {
    let words = command_words();
    for variant in [
        "Place",
        "HandOver",
        "RecordCriticalNotification",
        "Erase",
        "Amend",
    ] {
        assert!(
            words.iter().any(|w| w == variant),
            "{variant} missing: {words:?}"
        );
    }
}

/// Plausible leaves: values of the kinds the commands hold, and some that are not.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "K",
            "NA",
            "mmol/L",
            "numeric",
            "coded",
            "satisfactory",
            "compromised",
            "phone",
            "haemolysed",
            "routine",
            "stat",
            "2026-03-03T08:00:00Z",
            "2999-01-01T00:00:00Z",
            "7f1c4c2e-2c1a-4e39-9a1b-3f3d2b1e0c11",
            "ACC-1",
            "Dr Rao",
            "OPD 2",
            "",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// JSON trees whose object keys are mostly the commands' own words, so that decoding
/// gets past the first field.
fn shaped() -> impl Strategy<Value = Value> {
    let words = command_words();
    leaf().prop_recursive(4, 48, 6, move |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(words.clone()),
            1 => any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Decoding never panics, and what decodes encodes and decodes again to itself.
fn decodes_consistently<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    v: &Value,
) -> Result<(), TestCaseError> {
    if let Ok(decoded) = serde_json::from_value::<T>(v.clone()) {
        let again: T = serde_json::from_value(serde_json::to_value(&decoded).unwrap())
            .expect("an encoded command decodes");
        prop_assert_eq!(again, decoded);
    }
    Ok(())
}

/// Whether a payload decodes as one type.
type Decodes = fn(&Value) -> bool;

/// A valid payload of each type the API reads from a request body as it is (inside a
/// command): each must decode, and fail once it names a field its type does not have.
fn strict_examples() -> Vec<(&'static str, Value, Decodes)> {
    fn ok<T: DeserializeOwned>(v: &Value) -> bool {
        serde_json::from_value::<T>(v.clone()).is_ok()
    }
    vec![
        (
            "HandOver",
            json!({"from": "Ward 3 nurse", "to": "Courier", "location": "Ward 3",
            "at": "2026-03-03T08:00:00Z", "temperature_celsius": 4.0}),
            ok::<HandOver>,
        ),
        (
            "CriticalNotification",
            json!({"notified_person": "Dr Rao", "method": "phone",
            "value_conveyed": "K 6.9 mmol/L", "read_back_confirmed": true,
            "notified_at": "2026-03-03T08:00:00Z"}),
            ok::<CriticalNotification>,
        ),
        (
            "StorageLocation",
            json!({"room": "Cold room 1", "rack": "R2"}),
            ok::<StorageLocation>,
        ),
        (
            "SpecimenCondition",
            json!({"status": "satisfactory"}),
            ok::<SpecimenCondition>,
        ),
        (
            "SpecimenCondition",
            json!({"status": "compromised", "note": "lipaemic"}),
            ok::<SpecimenCondition>,
        ),
        (
            "ResultValue",
            json!({"kind": "numeric", "value": 4.1, "unit": "mmol/L"}),
            ok::<ResultValue>,
        ),
        (
            "ResultValue",
            json!({"kind": "coded", "answer": "positive"}),
            ok::<ResultValue>,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn command_payloads_of_any_shape_decode_without_panic_and_consistently(
        body in shaped(),
        variant in prop::sample::select(command_words()),
    ) {
        // As given, and as the body of one variant (the commands are externally tagged).
        for v in [body.clone(), json!({ variant: body })] {
            decodes_consistently::<OrderCommand>(&v)?;
            decodes_consistently::<SampleCommand>(&v)?;
            decodes_consistently::<ResultCommand>(&v)?;
            decodes_consistently::<PatientCommand>(&v)?;
            decodes_consistently::<HandOver>(&v)?;
            decodes_consistently::<CriticalNotification>(&v)?;
            decodes_consistently::<ResultValue>(&v)?;
        }
    }

    #[test]
    fn a_payload_naming_a_field_its_type_lacks_is_refused(
        extra in "[a-z_]{1,12}",
        value in leaf(),
    ) {
        for (name, example, decodes) in strict_examples() {
            prop_assert!(decodes(&example), "the {} example decodes", name);
            let mut with = example.clone();
            if with.get(&extra).is_some() || extra == "kind" || extra == "status" {
                continue;
            }
            with[&extra] = value.clone();
            prop_assert!(!decodes(&with), "{} took an unknown field {:?}", name, extra);
        }
    }
}
