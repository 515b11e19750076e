//! The document against the validator: every field and parameter has a rule, and at every
//! boundary the document states, the handlers' own parsing accepts what the document allows and
//! refuses (naming the field) what it does not.
//!
//! The probes are derived from the document itself (its minimums, maximums, lengths, patterns,
//! enums and formats) and judged by a small JSON Schema evaluator, so a limit changed on one side
//! only, a field the validator reads that the document lacks, or a constraint the document
//! claims that the validator does not apply, fails here. Two rules the document can only state
//! in words are left to the integration tests: the byte length of a user id (`maxLength` counts
//! characters) and an `expires_at` in the future; and a JSON integer written with a fraction
//! (`5.0`), which JSON Schema counts as an integer, is not probed.

use std::collections::{BTreeSet, HashMap};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{json, Map, Value};

use super::constraints::{body_rule, parameter_rule, Rule, EXCLUSIVE, OPEN_BODIES};
use super::links::LINKS;
use crate::error::ApiError;
use crate::operations::Operation;
use crate::{admin, routes, validate, webhooks};

fn document() -> Value {
    super::document()
}

fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            all.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    all
}

fn component<'a>(document: &'a Value, reference: &Value) -> (&'a str, &'a Value) {
    let name = reference["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("a component reference");
    let (name, schema) = document["components"]["schemas"]
        .as_object()
        .unwrap()
        .get_key_value(name)
        .expect("the component exists");
    (name.as_str(), schema)
}

/// `schema` with every `$ref` replaced by what it names (the document's schemas have no cycles).
fn resolve(document: &Value, schema: &Value) -> Value {
    match schema {
        Value::Object(object) => match object.get("$ref") {
            Some(_) => resolve(document, component(document, schema).1),
            None => Value::Object(
                object
                    .iter()
                    .map(|(key, value)| (key.clone(), resolve(document, value)))
                    .collect(),
            ),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| resolve(document, item)).collect())
        }
        other => other.clone(),
    }
}

fn location(name: &str) -> utoipa::openapi::path::ParameterIn {
    use utoipa::openapi::path::ParameterIn;
    match name {
        "query" => ParameterIn::Query,
        "path" => ParameterIn::Path,
        "header" => ParameterIn::Header,
        _ => ParameterIn::Cookie,
    }
}

// --- a JSON Schema evaluator for the keywords the document uses --------------------------------

fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => false,
    }
}

fn matches(pattern: &str, text: &str) -> bool {
    regex::Regex::new(pattern)
        .unwrap_or_else(|error| panic!("pattern {pattern}: {error}"))
        .is_match(text)
}

/// Whether `value` is valid against `schema` (the subset of JSON Schema the document uses).
fn valid(schema: &Value, value: &Value) -> bool {
    if let Some(branches) = schema["anyOf"].as_array() {
        if !branches.iter().any(|branch| valid(branch, value)) {
            return false;
        }
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        if branches
            .iter()
            .filter(|branch| valid(branch, value))
            .count()
            != 1
        {
            return false;
        }
    }
    if schema["not"].is_object() && valid(&schema["not"], value) {
        return false;
    }
    let kinds = types(schema);
    if !kinds.is_empty() && !kinds.iter().any(|kind| has_type(value, kind)) {
        return false;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return false;
        }
    }
    match value {
        Value::Number(number) => {
            let n = number
                .as_i64()
                .map(|n| n as f64)
                .or(number.as_f64())
                .unwrap();
            schema["minimum"].as_f64().is_none_or(|min| n >= min)
                && schema["maximum"].as_f64().is_none_or(|max| n <= max)
        }
        Value::String(text) => {
            let chars = text.chars().count() as u64;
            schema["minLength"].as_u64().is_none_or(|min| chars >= min)
                && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
                && schema["pattern"]
                    .as_str()
                    .is_none_or(|pattern| matches(pattern, text))
                && match schema["format"].as_str() {
                    Some("uuid") => uuid::Uuid::try_parse(text).is_ok() && text.len() == 36,
                    Some("date-time") => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                    _ => true,
                }
        }
        Value::Array(items) => {
            schema["minItems"]
                .as_u64()
                .is_none_or(|min| items.len() as u64 >= min)
                && schema["maxItems"]
                    .as_u64()
                    .is_none_or(|max| items.len() as u64 <= max)
                && (schema["items"].is_null()
                    || items.iter().all(|item| valid(&schema["items"], item)))
        }
        Value::Object(object) => {
            schema["maxProperties"]
                .as_u64()
                .is_none_or(|max| object.len() as u64 <= max)
                && object.iter().all(|(key, item)| {
                    (schema["propertyNames"].is_null()
                        || valid(&schema["propertyNames"], &json!(key)))
                        && match schema["properties"].get(key) {
                            Some(property) => valid(property, item),
                            None => match &schema["additionalProperties"] {
                                Value::Bool(allowed) => *allowed,
                                Value::Null => true,
                                additional => valid(additional, item),
                            },
                        }
                })
                && schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|name| object.contains_key(name.as_str().unwrap()))
        }
        _ => true,
    }
}

// --- probes: values at and beyond each boundary the schema states -------------------------------

fn repeat(unit: &str, count: u64) -> String {
    unit.repeat(count as usize)
}

fn string_probes(schema: &Value) -> Vec<Value> {
    let mut probes: Vec<String> = vec![
        "a".into(),
        "".into(),
        " ".into(),
        " a ".into(),
        "\t".into(),
        "\u{3000}a\u{3000}".into(),
        "a b".into(),
        "a\tb".into(),
        "é".into(),
        "a\0b".into(),
        "Z9_-".into(),
        "UPPER".into(),
        "a.b".into(),
    ];
    if let Some(min) = schema["minLength"].as_u64() {
        probes.push(repeat("a", min));
        probes.push(repeat("a", min.saturating_sub(1)));
    }
    if let Some(max) = schema["maxLength"].as_u64() {
        probes.push(repeat("a", max));
        probes.push(repeat("a", max + 1));
        // Two bytes a character: at most half the limit in characters stays within any byte
        // limit the words state.
        probes.push(repeat("é", max / 2));
    }
    // Limits stated by a pattern's repetition bounds: the longest and one past it, bare and
    // padded with the white space a trimming validator removes.
    if let Some(pattern) = schema["pattern"].as_str() {
        for bound in pattern
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .filter_map(|inside| inside.rsplit(',').next())
            .filter_map(|max| max.parse::<u64>().ok())
        {
            for length in [bound + 2, bound + 3] {
                probes.push(repeat("a", length));
                probes.push(format!(" {} ", repeat("a", length)));
            }
        }
    }
    match schema["format"].as_str() {
        Some("uuid") => {
            probes.push(uuid::Uuid::now_v7().to_string());
            probes.push("not-a-uuid".into());
        }
        Some("uri") => {
            probes.push("https://example.com/hooks/tally".into());
            probes.push("ftp://example.com/hooks".into());
        }
        Some("date-time") => {
            // In the future: the words rule (`expires_at` must be in the future) holds.
            let later = chrono::Utc::now() + chrono::Duration::hours(1);
            probes.push(later.to_rfc3339());
            probes.push("tomorrow".into());
        }
        _ => {}
    }
    let mut values: Vec<Value> = probes.into_iter().map(Value::from).collect();
    values.extend(schema["enum"].as_array().into_iter().flatten().cloned());
    values.extend(schema["examples"].as_array().into_iter().flatten().cloned());
    values
}

fn object_probes(schema: &Value) -> Vec<Value> {
    let key_max = schema["propertyNames"]["maxLength"].as_u64().unwrap_or(8);
    let value_max = schema["additionalProperties"]["maxLength"]
        .as_u64()
        .unwrap_or(8);
    let keys = |count: u64| -> Value {
        Value::Object((0..count).map(|i| (format!("k{i}"), json!("v"))).collect())
    };
    let mut probes = vec![
        json!({}),
        json!({ "k": "v" }),
        json!({ "": "v" }),
        json!({ "k": 1 }),
        json!({ "k": "v\u{0}" }),
        json!({ "k\u{0}": "v" }),
        json!({ repeat("k", key_max): "v" }),
        json!({ repeat("k", key_max + 1): "v" }),
        json!({ "k": repeat("v", value_max) }),
        json!({ "k": repeat("v", value_max + 1) }),
    ];
    if let Some(max) = schema["maxProperties"].as_u64() {
        probes.push(keys(max));
        probes.push(keys(max + 1));
    }
    probes
}

/// Values at and beyond every boundary of `schema`, of the right type and of wrong ones.
fn probes(schema: &Value) -> Vec<Value> {
    if let Some(branches) = schema["anyOf"].as_array() {
        return branches.iter().flat_map(probes).collect();
    }
    let mut values = vec![Value::Null, json!(true), json!([]), json!(1.5), json!("1")];
    for kind in types(schema) {
        match kind {
            "integer" => {
                values.push(json!(0));
                values.push(json!(-1));
                for bound in ["minimum", "maximum"] {
                    if let Some(n) = schema[bound].as_i64() {
                        values.extend([json!(n - 1), json!(n), json!(n + 1)]);
                    }
                }
            }
            "string" => values.extend(string_probes(schema)),
            "object" => values.extend(object_probes(schema)),
            _ => {}
        }
    }
    values
}

// --- what the handlers run ---------------------------------------------------------------------

type BodyParser = fn(Map<String, Value>) -> Result<(), ApiError>;
type QueryParser = fn(&HashMap<String, String>) -> Result<(), ApiError>;

/// The function each operation's handler reads its JSON body with.
fn body_parser(operation: &str) -> Option<BodyParser> {
    Some(match operation {
        "POST /credits/add" => |o| Operation::Add.read(o).map(drop),
        "POST /credits/deduct" => |o| Operation::Deduct.read(o).map(drop),
        "POST /credits/refund" => |o| Operation::Refund.read(o).map(drop),
        "POST /credits/hold" => |o| Operation::Hold.read(o).map(drop),
        "POST /credits/capture" => |o| Operation::Capture.read(o).map(drop),
        "POST /credits/release" => |o| Operation::Release.read(o).map(drop),
        "POST /credits/batch" => |o| routes::batch::read_batch(o).map(drop),
        "POST /admin/apps" => |o| admin::manage::app_name(o).map(drop),
        "POST /admin/apps/{app_id}/webhook-secrets" => {
            |o| admin::manage::secret_fields(o).map(drop)
        }
        "POST /admin/apps/{app_id}/credits/add" | "POST /admin/apps/{app_id}/credits/deduct" => {
            |o| admin::write_fields(o).map(drop)
        }
        "POST /admin/apps/{app_id}/credits/refund" => |o| admin::refund_fields(o).map(drop),
        "POST /webhook_endpoints" => |o| routes::endpoints::NewEndpoint::read(o, false).map(drop),
        "PATCH /webhook_endpoints/{id}" => {
            |o| routes::endpoints::EndpointChange::read(o, false).map(drop)
        }
        "PUT /credits/alerts" => |o| routes::alerts::AlertsBody::read(o).map(drop),
        "PUT /products/{provider}/{product_id}" => {
            |o| routes::plans::ProductBody::read(o).map(drop)
        }
        "PUT /credits/auto_topup" => |o| routes::plans::AutoTopupBody::read(o).map(drop),
        "PUT /admin/apps/{app_id}/stripe_key" => |o| admin::manage::stripe_key_field(o).map(drop),
        _ => return None,
    })
}

/// The function each operation's handler reads its query with.
fn query_parser(operation: &str) -> Option<QueryParser> {
    use crate::admin::queries::{EventsRequest, HistoryRequest, UsersRequest};
    Some(match operation {
        "GET /credits/balance" => |q| routes::credits::balance_query(q).map(drop),
        "GET /credits/balances" => |q| validate::query_user_id(q).map(drop),
        "GET /credits/history" => |q| routes::credits::HistoryQuery::parse(q).map(drop),
        "GET /credits/holds" => |q| routes::holds::HoldsQuery::parse(q).map(drop),
        "GET /webhooks/events" => |q| webhooks::EventsQuery::parse(q).map(drop),
        "GET /admin/apps/{app_id}/users" => |q| UsersRequest::parse(q).map(drop),
        "GET /admin/apps/{app_id}/users/{user_id}" | "GET /admin/apps/{app_id}/entries" => {
            |q| HistoryRequest::parse(q).map(drop)
        }
        "GET /admin/apps/{app_id}/webhook-events" => |q| EventsRequest::parse(q).map(drop),
        "GET /admin/apps/{app_id}/stats" => |q| admin::stats_days(q).map(drop),
        "GET /credits/alerts" | "DELETE /credits/alerts" => |q| routes::alerts::whose(q).map(drop),
        "GET /webhook_endpoints/{id}/deliveries" => {
            |q| routes::deliveries::DeliveriesQuery::parse(q).map(drop)
        }
        "GET /events" => |q| routes::events::EventsQuery::parse(q).map(drop),
        "GET /credits/auto_topup" | "DELETE /credits/auto_topup" => {
            |q| routes::plans::whose(q).map(drop)
        }
        _ => return None,
    })
}

/// What the handlers run on a path or header parameter of each rule.
fn parameter_check(rule: Rule, name: &str, text: &str) -> Option<Result<(), ApiError>> {
    Some(match rule {
        Rule::Id => validate::parse_uuid(name, text).map(drop),
        Rule::UserId => validate::check_user_id(name, text.to_string()).map(drop),
        Rule::ProductId => routes::plans::check_product_id(text).map(drop),
        Rule::IdempotencyKey => {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_str(text).ok()?);
            validate::idempotency_key(&headers).map(drop)
        }
        // Read as it comes: any value is accepted.
        Rule::Prefer => Ok(()),
        _ => return None,
    })
}

fn names(error: &ApiError) -> Option<&str> {
    match error {
        ApiError::InvalidRequest { field, .. } => field.as_deref(),
        _ => None,
    }
}

/// A query parameter's value as the document types it: an integer parameter holds the text of
/// a JSON integer.
fn as_query_value(schema: &Value, text: &str) -> Value {
    let integer = |schema: &Value| types(schema).contains(&"integer");
    let integral = text.parse::<i64>().is_ok() && !text.starts_with('+');
    let wants_integer = integer(schema)
        || schema["anyOf"]
            .as_array()
            .is_some_and(|branches| branches.iter().any(integer));
    if wants_integer && integral {
        json!(text.parse::<i64>().unwrap())
    } else {
        json!(text)
    }
}

/// A value the rule's words forbid although its schema allows it (see the module's doc).
fn stated_in_words_only(rule: Option<Rule>, value: &Value) -> bool {
    match (rule, value) {
        (Some(Rule::UserId | Rule::UserIdPrefix), Value::String(text)) => text.len() > 255,
        // Only what the endpoint issued; an admin list takes an empty one as none.
        (Some(Rule::Cursor { blank }), Value::String(text)) => !(blank && text.is_empty()),
        _ => false,
    }
}

/// A valid value of a property, other than `null`.
fn sample(schema: &Value) -> Value {
    probes(schema)
        .into_iter()
        .find(|probe| !probe.is_null() && valid(schema, probe))
        .unwrap_or_else(|| panic!("no valid probe for {schema}"))
}

/// The body with only the required properties, each a valid value.
fn minimal(schema: &Value) -> Map<String, Value> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|property| {
            (
                property.to_string(),
                sample(&schema["properties"][property]),
            )
        })
        .collect()
}

/// `POST /credits/batch`: every operation of both kinds of batch, probed field by field as the
/// batch's only operation; the error names `operations[0].<field>`. Returns the probes run.
fn probe_batch(document: &Value, parse: BodyParser) -> usize {
    let schema = resolve(document, &document["components"]["schemas"]["BatchRequest"]);
    let mut checked = 0;
    // Every operation, then an atomic batch's (its mode narrows the operations).
    let kinds = [
        (false, &schema["properties"]["operations"]["items"]["oneOf"]),
        (
            true,
            &schema["oneOf"][1]["properties"]["operations"]["items"]["oneOf"],
        ),
    ];
    for (atomic, variants) in kinds {
        let wrap = |operation: Map<String, Value>| -> Map<String, Value> {
            let mut batch = Map::new();
            if atomic {
                batch.insert("atomic".into(), json!(true));
            }
            batch.insert("operations".into(), json!([operation]));
            batch
        };
        for variant in variants.as_array().unwrap() {
            let op = variant["properties"]["op"]["enum"][0].as_str().unwrap();
            let body = Operation::parse(op)
                .map(super::constraints::body_schema)
                .unwrap();
            let base = minimal(variant);
            let batch = wrap(base.clone());
            assert!(
                valid(&schema, &Value::Object(batch.clone())),
                "{op}: {batch:?}"
            );
            parse(batch).unwrap_or_else(|error| panic!("batch {op}: {error}"));
            for (property, property_schema) in variant["properties"].as_object().unwrap() {
                for probe in probes(property_schema) {
                    if stated_in_words_only(body_rule(body, property), &probe) {
                        continue;
                    }
                    let mut operation = base.clone();
                    operation.insert(property.clone(), probe.clone());
                    let batch = wrap(operation);
                    let expected = valid(&schema, &Value::Object(batch.clone()));
                    let result = parse(batch);
                    assert_eq!(
                        result.is_ok(),
                        expected,
                        "batch (atomic: {atomic}) {op}: {property} = {probe}: {result:?}"
                    );
                    if let Err(error) = &result {
                        assert_eq!(
                            names(error),
                            Some(format!("operations[0].{property}").as_str()),
                            "{error}"
                        );
                    }
                    checked += 1;
                }
            }
            let mut unknown = base.clone();
            unknown.insert("ammount".into(), json!(5));
            let error = parse(wrap(unknown)).expect_err("an unknown field");
            assert_eq!(names(&error), Some("operations[0].ammount"));
        }
    }
    // The batch itself: `atomic` and the number of operations.
    let add = Value::Object(minimal(
        &schema["properties"]["operations"]["items"]["oneOf"][0],
    ));
    let max = schema["properties"]["operations"]["maxItems"]
        .as_u64()
        .unwrap() as usize;
    for (atomic, operations) in [
        (json!(null), json!([add])),
        (json!(false), json!([add])),
        (json!("yes"), json!([add])),
        (json!(false), json!([])),
        (json!(false), json!(vec![add.clone(); max])),
        (json!(false), json!(vec![add.clone(); max + 1])),
        (json!(false), json!({})),
    ] {
        let batch = json!({ "atomic": atomic, "operations": operations });
        let result = parse(batch.as_object().unwrap().clone());
        assert_eq!(
            result.is_ok(),
            valid(&schema, &batch),
            "batch atomic {atomic}, {} operations: {result:?}",
            operations.as_array().map_or(0, Vec::len)
        );
        checked += 1;
    }
    checked
}

// --- the tests ---------------------------------------------------------------------------------

#[test]
fn every_request_field_and_parameter_has_a_rule_and_states_it() {
    let document = document();
    let mut missing = Vec::new();
    for (method, path, operation) in operations(&document) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap();
            let place = location(parameter["in"].as_str().unwrap());
            match parameter_rule(&path, &place, name) {
                None => missing.push(format!("{method} {path}: parameter {name}")),
                Some(rule) => assert_eq!(
                    parameter["schema"],
                    serde_json::to_value(rule.schema().0).unwrap(),
                    "{method} {path}: {name} states its rule"
                ),
            }
        }
        let Some(body) = operation["requestBody"]["content"].as_object() else {
            continue;
        };
        assert_eq!(
            body.keys().collect::<Vec<_>>(),
            ["application/json"],
            "{method} {path}: a JSON body"
        );
        let (name, schema) = component(&document, &body["application/json"]["schema"]);
        if name == "BatchRequest" {
            // Each operation is a write body with `op` and `idempotency_key`.
            let operations = resolve(&document, &schema["properties"]["operations"]["items"]);
            for variant in operations["oneOf"].as_array().unwrap() {
                let op = variant["properties"]["op"]["enum"][0].as_str().unwrap();
                let (_, body) = component(
                    &document,
                    &json!({ "$ref": format!("#/components/schemas/{}",
                        super::constraints::body_schema(Operation::parse(op).unwrap())) }),
                );
                let mut properties = variant["properties"].as_object().unwrap().clone();
                properties.remove("op");
                properties.remove("idempotency_key");
                assert_eq!(
                    &Value::Object(properties),
                    &body["properties"],
                    "batch {op}"
                );
            }
            continue;
        }
        let open = OPEN_BODIES.contains(&name);
        assert_eq!(
            schema["additionalProperties"] == json!(false),
            !open,
            "{name}: closed unless it is a provider's event"
        );
        for property in schema["properties"].as_object().unwrap().keys() {
            if body_rule(name, property).is_none() && !open {
                missing.push(format!("{method} {path}: {name}.{property}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "give these a rule in openapi/constraints.rs: {missing:#?}"
    );
}

#[test]
fn the_handlers_accept_what_the_document_allows_and_refuse_the_rest() {
    let document = document();
    let mut checked = 0;
    for (method, path, operation) in operations(&document) {
        let label = format!("{method} {path}");
        let parameters: Vec<&Value> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        // Path and header parameters, through what the handlers call on them.
        for parameter in &parameters {
            let name = parameter["name"].as_str().unwrap();
            let place = parameter["in"].as_str().unwrap();
            if place == "query" {
                continue;
            }
            let rule = parameter_rule(&path, &location(place), name).unwrap();
            for probe in probes(&parameter["schema"]) {
                let Some(text) = probe.as_str() else { continue };
                if place == "path" && text.is_empty() || stated_in_words_only(Some(rule), &probe) {
                    continue; // an empty path segment routes elsewhere
                }
                let Some(result) = parameter_check(rule, name, text) else {
                    continue;
                };
                let expected = valid(&parameter["schema"], &probe);
                assert_eq!(
                    result.is_ok(),
                    expected,
                    "{label}: {place} {name} = {probe}: {result:?}"
                );
                checked += 1;
            }
        }
        // The query, through the handler's own parsing.
        let queries: Vec<&Value> = parameters
            .iter()
            .copied()
            .filter(|p| p["in"] == "query")
            .collect();
        if !queries.is_empty() {
            let parse = query_parser(&label)
                .unwrap_or_else(|| panic!("{label}: add its query parser to `query_parser`"));
            let minimal: HashMap<String, String> = queries
                .iter()
                .filter(|p| p["required"] == json!(true))
                .map(|p| (p["name"].as_str().unwrap().to_string(), "u1".to_string()))
                .collect();
            parse(&minimal).unwrap_or_else(|error| panic!("{label}: {minimal:?}: {error}"));
            for parameter in &queries {
                let name = parameter["name"].as_str().unwrap();
                let rule = parameter_rule(&path, &location("query"), name);
                for probe in probes(&parameter["schema"]) {
                    let text = match &probe {
                        Value::String(text) => text.clone(),
                        Value::Number(number) if number.is_i64() => number.to_string(),
                        _ => continue,
                    };
                    let typed = as_query_value(&parameter["schema"], &text);
                    if stated_in_words_only(rule, &typed) {
                        continue;
                    }
                    let mut query = minimal.clone();
                    query.insert(name.to_string(), text.clone());
                    let result = parse(&query);
                    let expected = valid(&parameter["schema"], &typed);
                    assert_eq!(
                        result.is_ok(),
                        expected,
                        "{label}: query {name} = {text:?}: {result:?}"
                    );
                    if let Err(error) = &result {
                        assert_eq!(names(error), Some(name), "{label}: {name}: {error}");
                    }
                    checked += 1;
                }
            }
        }
        // The body, through the handler's own parsing.
        let Some(content) = operation["requestBody"]["content"]["application/json"].as_object()
        else {
            continue;
        };
        let (name, schema) = component(&document, &content["schema"]);
        if OPEN_BODIES.contains(&name) {
            continue; // a provider's event, authenticated by its signature
        }
        let parse =
            body_parser(&label).unwrap_or_else(|| panic!("{label}: add it to `body_parser`"));
        if name == "BatchRequest" {
            checked += probe_batch(&document, parse);
            continue;
        }
        let properties = schema["properties"].as_object().unwrap();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let sample = |property: &str| sample(&properties[property]);
        let minimal = minimal(schema);
        assert!(valid(schema, &Value::Object(minimal.clone())), "{name}");
        parse(minimal.clone()).unwrap_or_else(|error| panic!("{label}: {minimal:?}: {error}"));
        for (property, property_schema) in properties {
            let rule = body_rule(name, property);
            for probe in probes(property_schema) {
                if stated_in_words_only(rule, &probe) {
                    continue;
                }
                let mut body = minimal.clone();
                body.insert(property.clone(), probe.clone());
                let result = parse(body.clone());
                let expected = valid(schema, &Value::Object(body));
                assert_eq!(
                    result.is_ok(),
                    expected,
                    "{label}: {property} = {probe}: {result:?}"
                );
                if let Err(error) = &result {
                    assert_eq!(
                        names(error),
                        Some(property.as_str()),
                        "{label}: {property}: {error}"
                    );
                }
                checked += 1;
            }
            if required.contains(property.as_str()) {
                let mut body = minimal.clone();
                body.remove(property);
                let error = parse(body).expect_err(property);
                assert_eq!(names(&error), Some(property.as_str()), "{label}: {error}");
            }
        }
        let mut unknown = minimal.clone();
        unknown.insert("ammount".into(), json!(5));
        let error = parse(unknown).expect_err("an unknown field");
        assert_eq!(names(&error), Some("ammount"), "{label}");
        for (schema_name, first, second) in EXCLUSIVE.iter().filter(|(s, ..)| *s == name) {
            let mut both = minimal.clone();
            both.insert(first.to_string(), sample(first));
            both.insert(second.to_string(), sample(second));
            assert!(
                !valid(schema, &Value::Object(both.clone())),
                "{schema_name}"
            );
            assert!(
                parse(both).is_err(),
                "{schema_name}: {first} and {second} together"
            );
        }
    }
    assert!(checked > 1_000, "only {checked} probes ran");
}

#[test]
fn every_error_response_lists_the_codes_of_its_status() {
    let document = document();
    for (method, path, operation) in operations(&document) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let status: u16 = status.parse().unwrap();
            if status < 400 {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            let codes = schema["allOf"][1]["properties"]["error"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} {status}: its error codes"));
            for code in codes {
                let code: tally_common::error_code::ErrorCode =
                    serde_json::from_value(code.clone()).unwrap();
                assert_eq!(code.status(), status, "{method} {path}: {code:?}");
            }
            if [429, 503].contains(&status) {
                assert!(
                    response["headers"]["Retry-After"].is_object(),
                    "{path} {status}"
                );
            }
        }
        assert!(
            operation["responses"]["429"].is_object() && operation["responses"]["503"].is_object(),
            "{method} {path}"
        );
    }
}

#[test]
fn every_link_joins_existing_operations_fields_and_parameters() {
    let document = document();
    let ids: Vec<String> = operations(&document)
        .iter()
        .map(|(_, _, operation)| operation["operationId"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids are unique: {ids:?}");
    let find = |label: &str| -> Value {
        let (method, path) = label.split_once(' ').unwrap();
        document["paths"][path][method.to_lowercase()].clone()
    };
    for link in LINKS {
        let source = find(link.from);
        let target = find(link.to);
        assert!(source.is_object() && target.is_object(), "{}", link.from);
        let response = &source["responses"][link.status.to_string()];
        let written = &response["links"][target["operationId"].as_str().unwrap()];
        assert_eq!(
            written["operationId"], target["operationId"],
            "{}",
            link.from
        );
        for (into, expression) in link.pass {
            let (place, name) = into.split_once('.').unwrap();
            if place == "body" {
                let (_, body) = component(
                    &document,
                    &target["requestBody"]["content"]["application/json"]["schema"],
                );
                assert!(body["properties"][name].is_object(), "{}: {into}", link.to);
                assert_eq!(written["requestBody"][name], json!(expression));
            } else {
                assert!(
                    target["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["in"] == place && p["name"] == name),
                    "{}: {into}",
                    link.to
                );
                assert_eq!(written["parameters"][into], json!(expression));
            }
            // What the expression reads is in the source's answer or request.
            if let Some(pointer) = expression.strip_prefix("$response.body#/") {
                let field = pointer.split('/').next().unwrap();
                let answer = &response["content"]["application/json"]["schema"];
                if answer.is_object() {
                    let (_, answer) = component(&document, answer);
                    assert!(
                        answer["properties"][field].is_object(),
                        "{}: {field}",
                        link.from
                    );
                }
            } else if let Some(rest) = expression.strip_prefix("$request.") {
                let (place, name) = rest.split_once('.').unwrap();
                assert!(
                    source["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["in"] == place && p["name"] == name),
                    "{}: {expression}",
                    link.from
                );
            }
        }
    }
    // Every 202 that answers an accepted command links to its status.
    let accepted = json!("#/components/schemas/AcceptedResponse");
    let mut answered = 0;
    for (method, path, operation) in operations(&document) {
        if operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
            == accepted
        {
            answered += 1;
            assert_eq!(
                operation["responses"]["202"]["links"]["command_status"]["parameters"]
                    ["path.command_id"],
                json!("$response.body#/command_id"),
                "{method} {path}"
            );
        }
    }
    assert!(answered > 0, "no 202 answers an accepted command");
}
