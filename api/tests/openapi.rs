//! The OpenAPI document describes every POST body exactly: each command's schema is the
//! one generated from the type its handler parses, with required fields, enums and
//! bounds — never a generic object — and every reference in the document resolves.

use lis_api::http::openapi::{spec, ENDPOINTS};
use serde_json::Value;

/// Follows `$ref`s (local ones, `#/...`) until a schema that is not a reference.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        s = doc
            .pointer(r.strip_prefix('#').expect("a local reference"))
            .unwrap_or_else(|| panic!("{r} does not resolve"));
    }
    s
}

fn body<'a>(doc: &'a Value, path: &str) -> &'a Value {
    let schema =
        &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"];
    resolve(doc, schema)
}

fn required(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every `$ref` anywhere in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_command_body_has_its_exact_schema() {
    let doc = spec();
    // (path, the body's required fields); an empty list: the command takes no input.
    let expected: &[(&str, &[&str])] = &[
        ("/auth/login", &["username", "password"]),
        ("/auth/password", &["current_password", "new_password"]),
        (
            "/orders",
            &[
                "patient",
                "ordering_clinician",
                "priority",
                "collection_site",
                "tests",
            ],
        ),
        ("/orders/{id}/tests", &["tests"]),
        ("/orders/{id}/tests/{code}/cancel", &["reason"]),
        ("/orders/{id}/cancel", &["reason"]),
        ("/patients/{id}/erase", &["reason"]),
        (
            "/samples",
            &[
                "order_id",
                "accession_number",
                "specimen_type",
                "container",
                "tests",
            ],
        ),
        ("/samples/{id}/handover", &["from", "to", "location", "at"]),
        ("/samples/{id}/receive", &[]),
        ("/samples/{id}/reject", &["reason"]),
        ("/samples/{id}/aliquots", &["children"]),
        ("/samples/{id}/store", &["location"]),
        ("/samples/{id}/dispose", &[]),
        ("/results", &["sample_id", "test_code", "value"]),
        ("/results/{id}/correct", &["value", "reason"]),
        ("/results/{id}/verify", &[]),
        ("/results/{id}/authorise", &[]),
        ("/results/{id}/amend", &["value", "reason"]),
        ("/results/{id}/retract", &["reason"]),
        ("/results/{id}/rerun", &["reason"]),
        (
            "/results/{id}/critical-notifications",
            &[
                "notified_person",
                "method",
                "value_conveyed",
                "read_back_confirmed",
                "notified_at",
            ],
        ),
        ("/results/{id}/acknowledge", &[]),
        ("/users", &["username", "role", "password", "reason"]),
        ("/users/{user}/disable", &["reason"]),
        ("/users/{user}/enable", &["reason"]),
        ("/users/{user}/role", &["role", "reason"]),
        ("/users/{user}/password", &["password", "reason"]),
    ];
    let posts: Vec<&str> = ENDPOINTS
        .iter()
        .filter(|e| e.method == "post")
        .map(|e| e.path)
        .collect();
    assert_eq!(
        posts,
        expected.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "every POST endpoint is listed here"
    );
    for (path, fields) in expected {
        let schema = body(&doc, path);
        assert_eq!(schema["type"], "object", "{path}: {schema}");
        let mut got = required(schema);
        got.sort_unstable();
        let mut want = fields.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{path}: required fields");
        let properties = schema["properties"].as_object();
        for field in *fields {
            assert!(
                properties.is_some_and(|p| p.contains_key(*field)),
                "{path}: no schema for `{field}`"
            );
        }
        let body_required = &doc["paths"][path]["post"]["requestBody"]["required"];
        if fields.is_empty() && properties.is_none_or(|p| p.is_empty()) {
            // No input at all: `{}` or no body, nothing else.
            assert_eq!(schema["additionalProperties"], false, "{path}");
            assert_eq!(*body_required, false, "{path}");
        } else {
            assert_eq!(*body_required, true, "{path}");
        }
        let ok = &doc["paths"][path]["post"]["responses"];
        let answer = ok
            .as_object()
            .unwrap()
            .iter()
            .find(|(status, _)| status.starts_with('2'))
            .map(|(_, r)| resolve(&doc, &r["content"]["application/json"]["schema"]))
            .unwrap_or_else(|| panic!("{path}: no success response"));
        assert!(
            !required(answer).is_empty(),
            "{path}: the answer's schema is generic: {answer}"
        );
    }
}

#[test]
fn an_order_body_carries_the_domains_rules() {
    let doc = spec();
    let order = body(&doc, "/orders");
    assert_eq!(order["additionalProperties"], false);
    let p = &order["properties"];
    assert_eq!(
        resolve(&doc, &p["priority"])["enum"],
        serde_json::json!(["routine", "urgent", "stat"])
    );
    assert_eq!(p["tests"]["minItems"], 1);
    assert_eq!(p["tests"]["uniqueItems"], true);
    let code = resolve(&doc, &p["tests"]["items"]);
    assert_eq!(
        (&code["minLength"], &code["maxLength"]),
        (&1.into(), &32.into())
    );
    assert!(code["pattern"].is_string());
    let clinician = resolve(&doc, &p["ordering_clinician"]);
    assert_eq!(clinician["maxLength"], 200);
    let patient = resolve(&doc, &p["patient"]);
    let mut req = required(patient);
    req.sort_unstable();
    assert_eq!(req, ["date_of_birth", "mrn", "name", "sex"]);
    assert_eq!(
        resolve(&doc, &patient["properties"]["date_of_birth"])["format"],
        "date"
    );
    assert_eq!(
        resolve(&doc, &patient["properties"]["sex"])["enum"],
        serde_json::json!(["male", "female", "other", "unknown"])
    );
    // A result value is one of two tagged shapes.
    let value = resolve(&doc, &body(&doc, "/results")["properties"]["value"]);
    assert_eq!(value["oneOf"].as_array().map(Vec::len), Some(2), "{value}");
}

#[test]
fn every_reference_in_the_document_resolves() {
    let doc = spec();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "the document refers to its components");
    for r in all {
        let target = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(doc.pointer(target).is_some(), "{r} does not resolve");
    }
}

#[test]
fn query_parameters_are_those_the_handlers_read() {
    let doc = spec();
    let params = |path: &str| -> Vec<(String, bool)> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["in"] == "query")
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["required"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        params("/analytics/{report}"),
        [("from".to_string(), true), ("to".to_string(), true)]
    );
    assert_eq!(
        params("/orders/{id}"),
        [("min_position".to_string(), false)]
    );
    assert_eq!(params("/critical-results"), [("limit".to_string(), false)]);
    let named = |list: &[(&str, bool)]| -> Vec<(String, bool)> {
        list.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    };
    // FHIR searches: the patient, or for a tube its accession number alone.
    assert_eq!(
        params("/fhir/Specimen"),
        named(&[
            ("patient", false),
            ("accession", false),
            ("_count", false),
            ("_page", false)
        ])
    );
    assert_eq!(
        params("/fhir/ServiceRequest"),
        named(&[
            ("patient", true),
            ("requisition", false),
            ("_count", false),
            ("_page", false)
        ])
    );
    let as_of = &doc["paths"]["/audit/{kind}/{id}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "as_of")
        .unwrap()["schema"];
    assert_eq!(
        (&as_of["type"], &as_of["format"]),
        (&"string".into(), &"date-time".into())
    );
}

#[test]
fn operation_ids_are_unique_and_every_link_names_an_operation_and_its_parameters() {
    let doc = spec();
    let mut operations = std::collections::BTreeMap::new();
    for methods in doc["paths"].as_object().unwrap().values() {
        for op in methods.as_object().unwrap().values() {
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(operations.insert(id, op).is_none(), "{id} twice");
        }
    }
    let mut links = 0;
    for op in operations.values() {
        for response in op["responses"].as_object().unwrap().values() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                let target = operations
                    .get(link["operationId"].as_str().unwrap())
                    .unwrap_or_else(|| panic!("link {name} names no operation"));
                for parameter in link["parameters"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|p| p.0)
                {
                    assert!(
                        target["parameters"]
                            .as_array()
                            .is_some_and(|ps| ps.iter().any(|p| p["name"] == *parameter)),
                        "link {name}: no parameter {parameter}"
                    );
                }
                links += 1;
            }
        }
    }
    assert!(links >= 20, "the workflow is linked ({links} links)");
}

/// Every object schema reachable from `schema`, references followed once each.
fn objects<'a>(
    doc: &'a Value,
    schema: &'a Value,
    seen: &mut Vec<&'a str>,
    out: &mut Vec<&'a Value>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        if seen.contains(&r) {
            return;
        }
        seen.push(r);
        return objects(doc, resolve(doc, schema), seen, out);
    }
    if schema.get("properties").is_some() {
        out.push(schema);
    }
    match schema {
        Value::Object(map) => map.values().for_each(|v| objects(doc, v, seen, out)),
        Value::Array(items) => items.iter().for_each(|v| objects(doc, v, seen, out)),
        _ => {}
    }
}

#[test]
fn every_command_body_refuses_fields_it_does_not_name() {
    // A field the handler would ignore is refused instead (a body claiming an actor or a
    // role, or a misspelt optional field, must not be dropped silently): every object in
    // every POST body says `additionalProperties: false`, which schemars writes for
    // `deny_unknown_fields` types, and the schemas are generated from the handlers' types.
    let doc = spec();
    let mut open = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(schema) = item.pointer("/post/requestBody/content/application~1json/schema")
        else {
            continue;
        };
        let mut found = Vec::new();
        objects(&doc, schema, &mut Vec::new(), &mut found);
        for object in found {
            if object.get("additionalProperties") != Some(&Value::Bool(false)) {
                let names: Vec<&String> =
                    object["properties"].as_object().unwrap().keys().collect();
                open.push(format!("{path}: {names:?}"));
            }
        }
    }
    assert!(open.is_empty(), "bodies taking unknown fields: {open:#?}");
}
