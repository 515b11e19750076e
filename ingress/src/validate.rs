//! Reading requests: the body's content type, size and JSON, one typed getter per kind of field,
//! and the headers and query parameters many operations share, each naming the field it rejects.

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tally_common::credit_type::CreditType;
use tally_common::limits::{
    AMOUNT_MAX, AMOUNT_MIN, BODY_BYTES_MAX, DESCRIPTION_CHARS_MAX, IDEMPOTENCY_KEY_CHARS_MAX,
    IDEMPOTENCY_KEY_CHARS_MIN, METADATA_KEYS_MAX, METADATA_KEY_CHARS_MAX, METADATA_KEY_CHARS_MIN,
    METADATA_VALUE_CHARS_MAX, USER_ID_BYTES_MAX, USER_ID_BYTES_MIN,
};
use uuid::Uuid;

use crate::error::ApiError;

/// Reads a JSON object body: 415 unless `application/json`, 413 past the limit, 400 unless a
/// JSON object.
pub async fn json_object(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    json_object_within(headers, body, BODY_BYTES_MAX).await
}

/// [`json_object`] with a body limit of its own (a batch's).
pub async fn json_object_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body_bytes_within(headers, body, limit).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid("request body must be a JSON object")),
        Err(error) => Err(ApiError::invalid(format!(
            "request body is not valid JSON: {error}"
        ))),
    }
}

/// Reads a body, checking content type and size.
pub async fn body_bytes(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    body_bytes_within(headers, body, BODY_BYTES_MAX).await
}

async fn body_bytes_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    raw_body(body, limit).await
}

/// Reads a body of at most `limit` bytes, whatever its type (413 past it; 408 when it stalls
/// past the server's deadline, see [`crate::server`]).
pub async fn raw_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let source = std::error::Error::source(&error);
        if source.is_some_and(|source| source.is::<http_body_util::LengthLimitError>()) {
            ApiError::PayloadTooLarge(limit)
        } else if std::iter::successors(source, |error| error.source())
            .any(|cause| cause.is::<tower_http::timeout::TimeoutError>())
        {
            ApiError::RequestTimeout
        } else {
            ApiError::invalid(format!("could not read the request body: {error}"))
        }
    })
}

/// Typed access to a request object. Every field must be read once; [`Fields::finish`] rejects
/// whatever is left (a typo like `ammount` must not silently become a zero).
pub struct Fields {
    object: Map<String, Value>,
}

impl Fields {
    /// Starts reading `object`, rejecting first any field not in `allowed`: a misspelt field
    /// is named as such rather than reported as a missing one.
    pub fn new(object: Map<String, Value>, allowed: &[&str]) -> Result<Self, ApiError> {
        match object.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(unknown) => Err(ApiError::field(unknown, "unknown field")),
            None => Ok(Self { object }),
        }
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        match self.object.remove(field) {
            Some(Value::Null) | None => None,
            Some(value) => Some(value),
        }
    }

    pub fn user_id(&mut self, field: &str) -> Result<String, ApiError> {
        match self.take(field) {
            None => Err(ApiError::field(field, "is required")),
            Some(Value::String(text)) => check_user_id(field, text),
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    }

    /// An optional `user_id`-like field (absent: `None`), checked like [`Fields::user_id`].
    pub fn optional_user_id(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(text)) => check_user_id(field, text).map(Some),
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    }

    /// An optional string (absent: `None`), without the NUL character.
    pub fn optional_string(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(text)) => reject_nul(field, &text).map(|()| Some(text)),
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    }

    pub fn optional_bool(&mut self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(value)),
            Some(_) => Err(ApiError::field(field, "must be true or false")),
        }
    }

    /// An optional JSON array (absent: `None`), its elements for the caller to check.
    pub fn optional_array(&mut self, field: &str) -> Result<Option<Vec<Value>>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(ApiError::field(field, "must be an array")),
        }
    }

    /// Whether the request sets `field` to `null` (for an update: clear it), as opposed to
    /// leaving it out.
    pub fn is_null(&self, field: &str) -> bool {
        self.object.get(field).is_some_and(Value::is_null)
    }

    pub fn amount(&mut self, field: &str) -> Result<i64, ApiError> {
        match self.take(field) {
            None => Err(ApiError::field(field, "is required")),
            Some(value) => parse_amount(field, &value),
        }
    }

    pub fn optional_amount(&mut self, field: &str) -> Result<Option<i64>, ApiError> {
        self.take(field)
            .map(|value| parse_amount(field, &value))
            .transpose()
    }

    pub fn optional_integer(
        &mut self,
        field: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(number)) => match number.as_i64() {
                Some(value) if number.is_i64() || number.is_u64() => {
                    if (min..=max).contains(&value) {
                        Ok(Some(value))
                    } else {
                        Err(ApiError::field(
                            field,
                            format!("must be an integer from {min} to {max}"),
                        ))
                    }
                }
                _ => Err(ApiError::field(
                    field,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
            Some(_) => Err(ApiError::field(
                field,
                format!("must be an integer from {min} to {max}"),
            )),
        }
    }

    pub fn uuid(&mut self, field: &str) -> Result<Uuid, ApiError> {
        match self.take(field) {
            None => Err(ApiError::field(field, "is required")),
            Some(Value::String(text)) => parse_uuid(field, &text),
            Some(_) => Err(ApiError::field(field, "must be a UUID string")),
        }
    }

    pub fn description(&mut self) -> Result<Option<String>, ApiError> {
        match self.take("description") {
            None => Ok(None),
            Some(Value::String(text)) if text.chars().count() <= DESCRIPTION_CHARS_MAX => {
                reject_nul("description", &text)?;
                Ok(Some(text))
            }
            Some(Value::String(_)) => Err(ApiError::field(
                "description",
                format!("must be at most {DESCRIPTION_CHARS_MAX} characters"),
            )),
            Some(_) => Err(ApiError::field("description", "must be a string")),
        }
    }

    pub fn metadata(&mut self) -> Result<Map<String, Value>, ApiError> {
        let object = match self.take("metadata") {
            None => return Ok(Map::new()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err(ApiError::field("metadata", "must be a JSON object")),
        };
        if object.len() > METADATA_KEYS_MAX {
            return Err(ApiError::field(
                "metadata",
                format!("must have at most {METADATA_KEYS_MAX} keys"),
            ));
        }
        for (key, value) in &object {
            reject_nul("metadata", key)?;
            if let Value::String(text) = value {
                reject_nul("metadata", text)?;
            }
            let key_chars = key.chars().count();
            if !(METADATA_KEY_CHARS_MIN..=METADATA_KEY_CHARS_MAX).contains(&key_chars) {
                return Err(ApiError::field(
                    "metadata",
                    format!(
                        "keys must be {METADATA_KEY_CHARS_MIN} to {METADATA_KEY_CHARS_MAX} characters"
                    ),
                ));
            }
            match value {
                Value::String(text) if text.chars().count() <= METADATA_VALUE_CHARS_MAX => {}
                Value::String(_) => {
                    return Err(ApiError::field(
                        "metadata",
                        format!(
                        "value of {key:?} must be at most {METADATA_VALUE_CHARS_MAX} characters"
                    ),
                    ))
                }
                _ => {
                    return Err(ApiError::field(
                        "metadata",
                        format!("value of {key:?} must be a string"),
                    ))
                }
            }
        }
        Ok(object)
    }

    pub fn optional_time(
        &mut self,
        field: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(&text)
                .map(|time| Some(time.with_timezone(&chrono::Utc)))
                .map_err(|_| ApiError::field(field, "must be an RFC 3339 time")),
            Some(_) => Err(ApiError::field(field, "must be an RFC 3339 time string")),
        }
    }

    /// `credit_type`: optional, [`CreditType::DEFAULT`] when absent.
    pub fn credit_type(&mut self) -> Result<CreditType, ApiError> {
        match self.take("credit_type") {
            None => Ok(CreditType::default()),
            Some(Value::String(text)) => parse_credit_type("credit_type", &text),
            Some(_) => Err(ApiError::field("credit_type", "must be a string")),
        }
    }

    /// Rejects any field not read.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.object.keys().next() {
            None => Ok(()),
            Some(unknown) => Err(ApiError::field(unknown, "unknown field")),
        }
    }
}

/// Postgres text cannot hold a NUL character: a string with one is refused here, naming its
/// field, rather than failing in the database.
pub fn reject_nul(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        Err(ApiError::field(field, "must not contain the NUL character"))
    } else {
        Ok(())
    }
}

/// The `user_id` query parameter of a read: required, checked like a body's `user_id`.
pub fn query_user_id(query: &HashMap<String, String>) -> Result<String, ApiError> {
    let user_id = query
        .get("user_id")
        .cloned()
        .ok_or_else(|| ApiError::field("user_id", "is required"))?;
    check_user_id("user_id", user_id)
}

/// The `credit_type` query parameter of a read of one balance: [`CreditType::DEFAULT`] when
/// absent.
pub fn query_credit_type(query: &HashMap<String, String>) -> Result<CreditType, ApiError> {
    Ok(query_optional_credit_type(query)?.unwrap_or_default())
}

/// The `credit_type` query parameter of a filter: `None` (every type) when absent.
pub fn query_optional_credit_type(
    query: &HashMap<String, String>,
) -> Result<Option<CreditType>, ApiError> {
    query
        .get("credit_type")
        .map(|text| parse_credit_type("credit_type", text))
        .transpose()
}

/// An optional query parameter that must be one of `values` (`400` naming it otherwise).
pub fn query_one_of(
    query: &HashMap<String, String>,
    name: &str,
    values: &[&str],
) -> Result<Option<String>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(value) if values.contains(&value.as_str()) => Ok(Some(value.clone())),
        Some(_) => Err(ApiError::field(name, format!("must be {}", one_of(values)))),
    }
}

/// `a, b or c`.
fn one_of(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [only] => only.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

pub fn parse_credit_type(field: &str, text: &str) -> Result<CreditType, ApiError> {
    CreditType::parse(text).map_err(|invalid| ApiError::field(field, invalid))
}

pub fn check_user_id(field: &str, text: String) -> Result<String, ApiError> {
    reject_nul(field, &text)?;
    if !(USER_ID_BYTES_MIN..=USER_ID_BYTES_MAX).contains(&text.len()) {
        Err(ApiError::field(
            field,
            format!("must be {USER_ID_BYTES_MIN} to {USER_ID_BYTES_MAX} bytes"),
        ))
    } else {
        Ok(text)
    }
}

/// An amount, 1..=10^12, from a JSON value (an element of a list of amounts).
pub fn parse_amount(field: &str, value: &Value) -> Result<i64, ApiError> {
    let message = format!("must be an integer from {AMOUNT_MIN} to {AMOUNT_MAX}");
    match value {
        Value::Number(number) if number.is_i64() || number.is_u64() => match number.as_i64() {
            Some(amount) if (AMOUNT_MIN..=AMOUNT_MAX).contains(&amount) => Ok(amount),
            _ => Err(ApiError::field(field, message)),
        },
        _ => Err(ApiError::field(field, message)),
    }
}

pub fn parse_uuid(field: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::field(field, "must be a UUID"))
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters (spaces inside).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| bad_idempotency_key("Idempotency-Key"))?;
    // HTTP trims a header value's surrounding white space, so a key of white space alone
    // arrives empty; refused here too for any transport that would not.
    if text.trim_matches(' ').is_empty() {
        return Err(bad_idempotency_key("Idempotency-Key"));
    }
    check_idempotency_key("Idempotency-Key", text.to_string()).map(Some)
}

/// An idempotency key from `field`: 1 to [`IDEMPOTENCY_KEY_CHARS_MAX`] printable characters.
pub fn check_idempotency_key(field: &str, key: String) -> Result<String, ApiError> {
    let length = IDEMPOTENCY_KEY_CHARS_MIN..=IDEMPOTENCY_KEY_CHARS_MAX;
    if !length.contains(&key.chars().count()) || key.chars().any(char::is_control) {
        return Err(bad_idempotency_key(field));
    }
    Ok(key)
}

fn bad_idempotency_key(field: &str) -> ApiError {
    ApiError::field(
        field,
        format!("must be {IDEMPOTENCY_KEY_CHARS_MIN} to {IDEMPOTENCY_KEY_CHARS_MAX} printable characters"),
    )
}

/// Whether the client asked not to wait for the result (`Prefer: respond-async`).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("respond-async"))
}

/// The JSON value with every object's keys sorted, printed compactly: equal for bodies that
/// differ only in key order and whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(object) => {
                let ordered: BTreeMap<&String, Value> =
                    object.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// Hash identifying a request for idempotency: method, path and canonical body.
pub fn request_hash(method: &str, path: &str, body: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_json(&Value::Object(body.clone())).as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        let object = value.as_object().cloned().unwrap();
        let keys: Vec<String> = object.keys().cloned().collect();
        let allowed: Vec<&str> = keys.iter().map(String::as_str).collect();
        Fields::new(object, &allowed).unwrap()
    }

    #[test]
    fn amount_accepts_only_integers_in_range() {
        for bad in [
            json!("5"),
            json!(1.5),
            json!(1.0),
            json!(0),
            json!(-3),
            json!(1_000_000_000_001i64),
            json!(true),
        ] {
            let error = fields(json!({ "amount": bad }))
                .amount("amount")
                .unwrap_err();
            assert!(error.to_string().starts_with("amount:"), "{error}");
        }
        assert_eq!(
            fields(json!({ "amount": 1_000_000_000_000i64 }))
                .amount("amount")
                .unwrap(),
            AMOUNT_MAX
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let mut f = fields(json!({ "user_id": "u", "ammount": 5 }));
        f.user_id("user_id").unwrap();
        assert_eq!(
            f.finish().unwrap_err().to_string(),
            "ammount: unknown field"
        );
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = json!({ "b": 1, "a": { "y": 2, "x": [ { "q": 1, "p": 2 } ] } });
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":[{"p":2,"q":1}],"y":2},  "b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn a_parameter_of_a_list_names_the_values_it_takes() {
        let query = |value: &str| HashMap::from([("status".to_string(), value.to_string())]);
        let statuses = ["pending", "succeeded", "failed"];
        assert_eq!(
            query_one_of(&query("failed"), "status", &statuses).unwrap(),
            Some("failed".to_string())
        );
        assert_eq!(
            query_one_of(&HashMap::new(), "status", &statuses).unwrap(),
            None
        );
        assert_eq!(
            query_one_of(&query("done"), "status", &statuses)
                .unwrap_err()
                .to_string(),
            "status: must be pending, succeeded or failed"
        );
    }

    #[test]
    fn metadata_values_must_be_strings() {
        let error = fields(json!({ "metadata": { "n": 1 } }))
            .metadata()
            .unwrap_err();
        assert!(error.to_string().starts_with("metadata:"));
    }
}
