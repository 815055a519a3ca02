//! Property tests of the request bodies as the API reads them (`body::parse`): JSON trees
//! shaped from the OpenAPI document's own field names and words, and arbitrary bytes,
//! into every body type. Reading never panics; a refusal is a 400 (not JSON, or not an
//! object) or a 422 whose every pointer leads into the body sent: to the value at fault,
//! or to the object that lacks a required field.

use super::body::parse;
use super::commands::{
    AliquotsBody, CollectBody, DisposeBody, Empty, PlaceOrderBody, ReasonBody, ReceiveBody,
    RecordBody, RejectBody, StoreBody, TestsBody, ValueBody,
};
use super::privacy::EraseBody;
use super::Login;
use lis_domain::result::CriticalNotification;
use lis_domain::sample::HandOver;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Every property name and every fixed word (`enum`, `const`) of the OpenAPI document.
fn document_words() -> (Vec<String>, Vec<String>) {
    fn walk(v: &Value, keys: &mut BTreeSet<String>, words: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(p) = m.get("properties").and_then(Value::as_object) {
                    keys.extend(p.keys().cloned());
                }
                for fixed in m
                    .get("enum")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = fixed.as_str() {
                        words.insert(s.to_string());
                    }
                }
                if let Some(s) = m.get("const").and_then(Value::as_str) {
                    words.insert(s.to_string());
                }
                for child in m.values() {
                    walk(child, keys, words);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, keys, words)),
            _ => {}
        }
    }
    let (mut keys, mut words) = (BTreeSet::new(), BTreeSet::new());
    walk(&super::openapi::spec(), &mut keys, &mut words);
    (keys.into_iter().collect(), words.into_iter().collect())
}

fn leaf(words: Vec<String>) -> impl Strategy<Value = Value> {
    let mut plausible = words;
    plausible.extend(
        [
            "K",
            "mmol/L",
            "2026-03-03T08:00:00Z",
            "1980-05-17",
            "7f1c4c2e-2c1a-4e39-9a1b-3f3d2b1e0c11",
            "ACC-1",
            "MRN-1",
            "Dr Rao",
            "",
            " ",
        ]
        .map(String::from),
    );
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(plausible).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Objects whose keys are mostly the document's own, so that reading gets past the
/// first field and into nested objects and arrays.
fn shaped() -> impl Strategy<Value = Value> {
    let (keys, words) = document_words();
    let object = |inner: BoxedStrategy<Value>, keys: Vec<String>| {
        let key = prop_oneof![
            6 => prop::sample::select(keys),
            1 => any::<String>(),
        ];
        prop::collection::vec((key, inner), 0..8)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
    };
    let tree_keys = keys.clone();
    let tree = leaf(words).prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            object(inner.boxed(), tree_keys.clone()),
        ]
    });
    object(tree.boxed(), keys)
}

/// `pointer` (RFC 6901) leads into `body`, or to the object that lacks its last token.
fn leads_into(body: &Value, pointer: &str) -> bool {
    if body.pointer(pointer).is_some() {
        return true;
    }
    match pointer.rsplit_once('/') {
        Some((parent, _)) => body.pointer(parent).is_some_and(Value::is_object),
        None => false,
    }
}

fn reads_as<T: DeserializeOwned>(name: &str, body: &Value) -> Result<(), TestCaseError> {
    let bytes = serde_json::to_vec(body).unwrap();
    let Err(problem) = parse::<T>(&bytes) else {
        return Ok(());
    };
    prop_assert_eq!(
        problem.status,
        422,
        "{} {}: {:?}",
        name,
        body,
        problem.detail
    );
    prop_assert!(!problem.errors.is_empty(), "{} {}", name, body);
    for e in &problem.errors {
        prop_assert!(
            leads_into(body, &e.pointer),
            "{} {}: pointer {:?} ({}) leads nowhere in the body",
            name,
            body,
            e.pointer,
            e.detail
        );
    }
    Ok(())
}

/// Every body type the API reads, each under its name.
fn read_every_body(body: &Value) -> Result<(), TestCaseError> {
    reads_as::<PlaceOrderBody>("PlaceOrderBody", body)?;
    reads_as::<TestsBody>("TestsBody", body)?;
    reads_as::<ReasonBody>("ReasonBody", body)?;
    reads_as::<EraseBody>("EraseBody", body)?;
    reads_as::<CollectBody>("CollectBody", body)?;
    reads_as::<HandOver>("HandOver", body)?;
    reads_as::<ReceiveBody>("ReceiveBody", body)?;
    reads_as::<RejectBody>("RejectBody", body)?;
    reads_as::<AliquotsBody>("AliquotsBody", body)?;
    reads_as::<StoreBody>("StoreBody", body)?;
    reads_as::<DisposeBody>("DisposeBody", body)?;
    reads_as::<RecordBody>("RecordBody", body)?;
    reads_as::<ValueBody>("ValueBody", body)?;
    reads_as::<Empty>("Empty", body)?;
    reads_as::<CriticalNotification>("CriticalNotification", body)?;
    reads_as::<Login>("Login", body)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn shaped_bodies_are_read_or_refused_naming_a_place_in_the_body(body in shaped()) {
        read_every_body(&body)?;
    }

    #[test]
    fn arbitrary_bytes_are_read_or_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(p) = parse::<PlaceOrderBody>(&bytes) {
            prop_assert!(p.status == 400 || p.status == 422, "{}", p.status);
        }
    }
}

#[test]
fn a_wrong_item_of_an_array_is_named_by_its_json_pointer() {
    let body = serde_json::json!({"tests": ["K", 5]});
    let Err(p) = parse::<TestsBody>(&serde_json::to_vec(&body).unwrap()) else {
        panic!("a number read as a test code");
    };
    assert_eq!(p.errors[0].pointer, "/tests/1", "{:?}", p.errors);
}
