//! A stand-in for Stripe's PaymentIntents API (`POST /v1/payment_intents`), on 127.0.0.1 and a
//! port of its own, for the tests that make Tally charge a saved card: point
//! `TALLY_STRIPE_API_BASE` at [`StripeStandIn::base_url`].
//!
//! It answers the way Stripe's API does (checked against the `stripe` npm package's
//! `PaymentIntent` type and error classes): a form-encoded request authenticated with
//! `Authorization: Bearer sk_…`, a PaymentIntent object or a `{"error": {…}}` body, and
//! idempotency keys — a repeated key with the same parameters replays the stored answer with
//! `Idempotent-Replayed: true` and charges nothing new, the same key with other parameters is an
//! `idempotency_error`, and retryable server errors are not stored.
//!
//! The outcome of the next charges is chosen by the test ([`Behavior`]), and so is a delay
//! before every answer: the request is recorded and the PaymentIntent created first, so a test
//! can kill the caller while its call is in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

/// The API version of the objects and events this stand-in produces (the version pinned by
/// stripe-node 23.2.0, whose types they are checked against).
pub const API_VERSION: &str = "2026-11-18.endive";

/// What the stand-in does with the next PaymentIntents it is asked to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200, a PaymentIntent in status `succeeded`.
    Succeed,
    /// 402 `card_error` carrying the PaymentIntent, left in `requires_payment_method` with its
    /// `last_payment_error`. An off-session charge that needs 3-D Secure fails this way too
    /// (code and decline code `authentication_required`).
    Decline {
        code: String,
        decline_code: String,
        message: String,
    },
    /// 200, a PaymentIntent in status `requires_action` with a `use_stripe_sdk` next action, as
    /// Stripe answers a confirmation the customer must authenticate (with `off_session=true`,
    /// Stripe declines such a charge instead: `authentication_required`).
    RequiresAction,
    /// 500 `api_error`, with `Stripe-Should-Retry: true`; nothing is created and nothing is
    /// stored under the idempotency key, so a retry with the same key is executed afresh.
    ServerError,
}

impl Behavior {
    /// The decline Stripe answers for a card without enough funds.
    pub fn insufficient_funds() -> Self {
        Self::Decline {
            code: "card_declined".into(),
            decline_code: "insufficient_funds".into(),
            message: "Your card has insufficient funds.".into(),
        }
    }
}

/// One request received, in the order received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    /// The form fields, decoded (`metadata[tally_user_id]` and so on, as sent).
    pub form: BTreeMap<String, String>,
    /// Answered with the response stored under its idempotency key.
    pub replayed: bool,
    pub status: u16,
}

/// An answer stored under an idempotency key.
struct Stored {
    form: BTreeMap<String, String>,
    status: StatusCode,
    body: Value,
}

struct Inner {
    behavior: Behavior,
    delay: Duration,
    requests: Vec<RecordedRequest>,
    payment_intents: Vec<Value>,
    by_idempotency_key: HashMap<String, Stored>,
    /// The request (id, idempotency key) that created each PaymentIntent, for its events.
    origins: HashMap<String, (String, Option<String>)>,
}

struct Shared {
    secret_key: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The stand-in server; it stops when dropped.
pub struct StripeStandIn {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl StripeStandIn {
    /// Starts the server on the current runtime; it accepts only `secret_key` (`sk_test_…`).
    pub async fn start(secret_key: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Stripe stand-in");
        let port = listener.local_addr().expect("stand-in address").port();
        let shared = Arc::new(Shared {
            secret_key: secret_key.to_string(),
            inner: Mutex::new(Inner {
                behavior: Behavior::Succeed,
                delay: Duration::ZERO,
                requests: Vec::new(),
                payment_intents: Vec::new(),
                by_idempotency_key: HashMap::new(),
                origins: HashMap::new(),
            }),
        });
        let router = Router::new()
            .route("/v1/payment_intents", post(create_payment_intent))
            .fallback(unrecognized_url)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("serve the Stripe stand-in");
        });
        Self { port, shared, task }
    }

    /// `http://127.0.0.1:<port>`, the value for `TALLY_STRIPE_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How the next PaymentIntents are answered (requests already answered keep their answer,
    /// and so do their idempotent replays).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.inner().behavior = behavior;
    }

    /// Answers every request only after `delay` (zero by default).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.inner().delay = delay;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.inner().requests.clone()
    }

    /// Every PaymentIntent created, in order: one per request executed, declined ones and
    /// ones awaiting action included, idempotent replays excluded. Its `status` tells whether
    /// the money moved (`succeeded`).
    pub fn payment_intents(&self) -> Vec<Value> {
        self.shared.inner().payment_intents.clone()
    }

    /// The event Stripe would send about `payment_intent`: `payment_intent.succeeded` carries it
    /// succeeded, `payment_intent.payment_failed` back in `requires_payment_method` with a
    /// `last_payment_error` (its own, or a generic decline); other types carry it as given.
    pub fn event(&self, payment_intent: &Value, event_type: &str) -> Value {
        let mut object = payment_intent.clone();
        match event_type {
            "payment_intent.succeeded" => {
                object["status"] = json!("succeeded");
                object["amount_received"] = object["amount"].clone();
                object["last_payment_error"] = Value::Null;
                object["next_action"] = Value::Null;
                if object["latest_charge"].is_null() {
                    object["latest_charge"] = json!(format!("ch_{}", random_alnum(24)));
                }
            }
            "payment_intent.payment_failed" => {
                object["status"] = json!("requires_payment_method");
                object["amount_received"] = json!(0);
                object["next_action"] = Value::Null;
                if object["latest_charge"].is_null() {
                    object["latest_charge"] = json!(format!("ch_{}", random_alnum(24)));
                }
                if object["last_payment_error"].is_null() {
                    let charge = object["latest_charge"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    object["last_payment_error"] = payment_error(
                        "card_declined",
                        "generic_decline",
                        "Your card was declined.",
                        &charge,
                    );
                }
            }
            _ => {}
        }
        let origin = object["id"]
            .as_str()
            .and_then(|id| self.shared.inner().origins.get(id).cloned());
        let request = match origin {
            Some((id, idempotency_key)) => json!({ "id": id, "idempotency_key": idempotency_key }),
            None => json!({ "id": null, "idempotency_key": null }),
        };
        json!({
            "id": format!("evt_{}", random_alnum(24)),
            "object": "event",
            "api_version": API_VERSION,
            "created": now(),
            "data": { "object": object },
            "livemode": false,
            "pending_webhooks": 1,
            "request": request,
            "type": event_type,
        })
    }
}

impl Drop for StripeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer, before the delay.
struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
    should_retry: bool,
}

async fn create_payment_intent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = format!("req_{}", random_alnum(14));
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let authorization = header("authorization");
    let idempotency_key = header("idempotency-key");
    let form = decode_form(&body);

    let (answer, delay) = {
        let mut inner = shared.inner();
        let answer = answer(
            &shared.secret_key,
            &mut inner,
            &request_id,
            authorization.as_deref(),
            idempotency_key.as_deref(),
            &form,
        );
        inner.requests.push(RecordedRequest {
            idempotency_key: idempotency_key.clone(),
            authorization,
            form,
            replayed: answer.replayed,
            status: answer.status.as_u16(),
        });
        (answer, inner.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut response = (answer.status, Json(answer.body)).into_response();
    let out = response.headers_mut();
    out.insert(
        HeaderName::from_static("request-id"),
        header_value(&request_id),
    );
    out.insert(
        HeaderName::from_static("stripe-version"),
        header_value(API_VERSION),
    );
    if let Some(key) = &idempotency_key {
        out.insert(
            HeaderName::from_static("idempotency-key"),
            header_value(key),
        );
    }
    if answer.replayed {
        out.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    if answer.should_retry {
        out.insert(
            HeaderName::from_static("stripe-should-retry"),
            HeaderValue::from_static("true"),
        );
    }
    if answer.status == StatusCode::UNAUTHORIZED {
        out.insert(
            HeaderName::from_static("www-authenticate"),
            HeaderValue::from_static("Bearer realm=\"Stripe\""),
        );
    }
    response
}

/// What Stripe answers to this request, given what it has already answered.
fn answer(
    secret_key: &str,
    inner: &mut Inner,
    request_id: &str,
    authorization: Option<&str>,
    idempotency_key: Option<&str>,
    form: &BTreeMap<String, String>,
) -> Answer {
    let fresh = |status: StatusCode, body: Value| Answer {
        status,
        body,
        replayed: false,
        should_retry: false,
    };

    // Authentication comes first, and a rejected key stores nothing.
    let presented =
        authorization.map(|value| value.strip_prefix("Bearer ").unwrap_or(value).trim());
    match presented {
        None | Some("") => {
            return fresh(
                StatusCode::UNAUTHORIZED,
                error_body(
                    "invalid_request_error",
                    "You did not provide an API key. You need to provide your API key in the \
                     Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
                     YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for \
                     details, or we can help at https://support.stripe.com/.",
                    request_id,
                ),
            )
        }
        Some(key) if key != secret_key => {
            return fresh(
                StatusCode::UNAUTHORIZED,
                error_body(
                    "invalid_request_error",
                    &format!("Invalid API Key provided: {}", mask_key(key)),
                    request_id,
                ),
            )
        }
        Some(_) => {}
    }

    if let Some(key) = idempotency_key {
        if let Some(stored) = inner.by_idempotency_key.get(key) {
            if &stored.form == form {
                return Answer {
                    status: stored.status,
                    body: stored.body.clone(),
                    replayed: true,
                    should_retry: false,
                };
            }
            return fresh(
                StatusCode::BAD_REQUEST,
                error_body(
                    "idempotency_error",
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with. Try using a key other than '{key}' if you \
                         meant to execute a different request."
                    ),
                    request_id,
                ),
            );
        }
    }

    // Parameters that fail validation store nothing either.
    let amount = match form.get("amount") {
        None => return fresh(StatusCode::BAD_REQUEST, missing_param("amount", request_id)),
        Some(text) => match text.parse::<i64>() {
            Ok(amount) if amount > 0 => amount,
            Ok(_) => {
                return fresh(
                    StatusCode::BAD_REQUEST,
                    param_error(
                        "parameter_invalid_integer",
                        "amount",
                        "This value must be greater than or equal to 1.",
                        request_id,
                    ),
                )
            }
            Err(_) => {
                return fresh(
                    StatusCode::BAD_REQUEST,
                    param_error(
                        "parameter_invalid_integer",
                        "amount",
                        &format!("Invalid integer: {text}"),
                        request_id,
                    ),
                )
            }
        },
    };
    let Some(currency) = form.get("currency") else {
        return fresh(
            StatusCode::BAD_REQUEST,
            missing_param("currency", request_id),
        );
    };

    if inner.behavior == Behavior::ServerError {
        return Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: error_body(
                "api_error",
                "Sorry, something went wrong. We've already been notified of the problem, but \
                 if you need any help, you can reach us at support.stripe.com/contact.",
                request_id,
            ),
            replayed: false,
            should_retry: true,
        };
    }

    let mut payment_intent = new_payment_intent(amount, &currency.to_lowercase(), form);
    let id = payment_intent["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, body) = match inner.behavior.clone() {
        Behavior::Succeed => {
            payment_intent["status"] = json!("succeeded");
            payment_intent["amount_received"] = json!(amount);
            payment_intent["latest_charge"] = json!(format!("ch_{}", random_alnum(24)));
            (StatusCode::OK, payment_intent.clone())
        }
        Behavior::RequiresAction => {
            payment_intent["status"] = json!("requires_action");
            payment_intent["next_action"] =
                json!({ "type": "use_stripe_sdk", "use_stripe_sdk": {} });
            (StatusCode::OK, payment_intent.clone())
        }
        Behavior::Decline {
            code,
            decline_code,
            message,
        } => {
            let charge = format!("ch_{}", random_alnum(24));
            payment_intent["status"] = json!("requires_payment_method");
            payment_intent["latest_charge"] = json!(charge);
            payment_intent["last_payment_error"] =
                payment_error(&code, &decline_code, &message, &charge);
            let mut error = error_body("card_error", &message, request_id);
            let fields = error["error"].as_object_mut().expect("error object");
            fields.insert("charge".into(), json!(charge));
            fields.insert("code".into(), json!(code));
            fields.insert("decline_code".into(), json!(decline_code));
            fields.insert("doc_url".into(), json!(doc_url(&code)));
            fields.insert("payment_intent".into(), payment_intent.clone());
            (StatusCode::PAYMENT_REQUIRED, error)
        }
        Behavior::ServerError => unreachable!("answered above"),
    };
    inner.payment_intents.push(payment_intent);
    inner.origins.insert(
        id,
        (request_id.to_string(), idempotency_key.map(str::to_string)),
    );
    if let Some(key) = idempotency_key {
        inner.by_idempotency_key.insert(
            key.to_string(),
            Stored {
                form: form.clone(),
                status,
                body: body.clone(),
            },
        );
    }
    fresh(status, body)
}

/// A PaymentIntent as the API version [`API_VERSION`] returns it, before its outcome is set.
fn new_payment_intent(amount: i64, currency: &str, form: &BTreeMap<String, String>) -> Value {
    let id = format!("pi_{}", random_alnum(24));
    let metadata: Map<String, Value> = form
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_string(), json!(value)))
        })
        .collect();
    let optional = |name: &str| form.get(name).map_or(Value::Null, |value| json!(value));
    // Two halves: one `json!` of all the fields would exceed the macro's recursion limit.
    let mut intent = json!({
        "id": id,
        "object": "payment_intent",
        "allowed_payment_method_types": null,
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": { "tip": {} },
        "amount_received": 0,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": { "allow_redirects": "always", "enabled": true },
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic_async",
        "client_secret": format!("{id}_secret_{}", random_alnum(25)),
        "confirmation_method": "automatic",
        "created": now(),
        "currency": currency,
        "customer": optional("customer"),
        "customer_account": null,
        "description": optional("description"),
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
    });
    let rest = json!({
        "livemode": false,
        "managed_payments": null,
        "metadata": metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": optional("payment_method"),
        "payment_method_configuration_details": {
            "id": format!("pmc_{}", random_alnum(24)),
            "parent": null,
        },
        "payment_method_options": {
            "card": {
                "installments": null,
                "mandate_options": null,
                "network": null,
                "request_three_d_secure": "automatic",
            },
        },
        "payment_method_types": ["card"],
        "payment_record": null,
        "processing": null,
        "receipt_email": null,
        "review": null,
        "setup_future_usage": null,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": "requires_payment_method",
        "transfer_data": null,
        "transfer_group": null,
    });
    if let (Some(fields), Value::Object(rest)) = (intent.as_object_mut(), rest) {
        fields.extend(rest);
    }
    intent
}

/// A PaymentIntent's `last_payment_error` for a declined card.
fn payment_error(code: &str, decline_code: &str, message: &str, charge: &str) -> Value {
    json!({
        "charge": charge,
        "code": code,
        "decline_code": decline_code,
        "doc_url": doc_url(code),
        "message": message,
        "type": "card_error",
    })
}

fn doc_url(code: &str) -> String {
    format!(
        "https://docs.stripe.com/error-codes/{}",
        code.replace('_', "-")
    )
}

fn error_body(error_type: &str, message: &str, request_id: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "request_log_url": format!(
                "https://dashboard.stripe.com/test/logs/{request_id}?t={}",
                now()
            ),
            "type": error_type,
        }
    })
}

fn param_error(code: &str, param: &str, message: &str, request_id: &str) -> Value {
    let mut body = error_body("invalid_request_error", message, request_id);
    let fields = body["error"].as_object_mut().expect("error object");
    fields.insert("code".into(), json!(code));
    fields.insert("doc_url".into(), json!(doc_url(code)));
    fields.insert("param".into(), json!(param));
    body
}

fn missing_param(param: &str, request_id: &str) -> Value {
    param_error(
        "parameter_missing",
        param,
        &format!("Missing required param: {param}."),
        request_id,
    )
}

async fn unrecognized_url(method: Method, uri: Uri) -> Response {
    let body = error_body(
        "invalid_request_error",
        &format!(
            "Unrecognized request URL ({method}: {}). Please see https://stripe.com/docs or we \
             can help at https://support.stripe.com/.",
            uri.path()
        ),
        &format!("req_{}", random_alnum(14)),
    );
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// A secret key as Stripe shows it in errors: its `sk_test_`-style prefix and last four
/// characters, the rest as asterisks.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix = chars
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == '_')
        .nth(1)
        .map_or(0, |(index, _)| index + 1);
    let shown_from = chars.len().saturating_sub(4).max(prefix);
    chars
        .iter()
        .enumerate()
        .map(|(index, c)| {
            if index < prefix || index >= shown_from {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

/// An `application/x-www-form-urlencoded` body, decoded (a repeated field keeps its last value).
fn decode_form(body: &[u8]) -> BTreeMap<String, String> {
    body.split(|byte| *byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|byte| *byte == b'=') {
            Some(equals) => (
                percent_decode(&pair[..equals]),
                percent_decode(&pair[equals + 1..]),
            ),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    fn hex_digit(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        let byte = input[index];
        let escaped = match (byte, input.get(index + 1), input.get(index + 2)) {
            (b'%', Some(high), Some(low)) => hex_digit(*high).zip(hex_digit(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push((high << 4) | low);
                index += 3;
            }
            None => {
                out.push(if byte == b'+' { b' ' } else { byte });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `len` random characters from `[0-9A-Za-z]`, like the tail of a Stripe object id.
fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let uuid = uuid::Uuid::new_v4();
        // Bytes 6 and 8 carry the UUID's version and variant bits; bytes from 248 up would
        // make the first characters likelier than the others.
        for (index, byte) in uuid.as_bytes().iter().enumerate() {
            if index != 6 && index != 8 && *byte < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(*byte % 62)]));
            }
        }
    }
    out
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

const TEST_KEY: &str = "sk_test_51StandInKeyForTallyTests0000abcd";

/// The form Tally sends for an automatic top-up.
fn top_up_form(amount: u32) -> Vec<(&'static str, String)> {
    vec![
        ("amount", amount.to_string()),
        ("currency", "usd".into()),
        ("customer", "cus_QkW3f9xTallyU42".into()),
        ("payment_method", "pm_1QkW3fTallyCard0042".into()),
        ("off_session", "true".into()),
        ("confirm", "true".into()),
        ("metadata[tally_user_id]", "user_42".into()),
        ("metadata[tally_credits]", "500".into()),
        ("metadata[tally_credit_type]", "credits".into()),
        (
            "metadata[tally_auto_topup_id]",
            "0193f1a2-7c4e-7d2b-9a51-3e8f6b2c4d10".into(),
        ),
    ]
}

/// Posts a form-encoded body as Stripe's libraries do (reqwest here has no form encoder).
async fn post_form(
    stripe: &StripeStandIn,
    key: Option<&str>,
    idempotency_key: Option<&str>,
    form: &[(&str, String)],
) -> (u16, HeaderMap, Value) {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(byte).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{byte:02X}"),
            })
            .collect()
    }
    let body = form
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/payment_intents", stripe.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let response = request.send().await.expect("reach the stand-in");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("a JSON body");
    (status, headers, body)
}

#[tokio::test]
async fn stripe_standin_charges_once_per_idempotency_key() {
    let stripe = StripeStandIn::start(TEST_KEY).await;
    let form = top_up_form(1999);

    let (status, headers, first) = post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &form).await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("pi_") && id.len() == 27, "{id}");
    assert_eq!(first["object"], "payment_intent");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["amount"], 1999);
    assert_eq!(first["amount_received"], 1999);
    assert_eq!(first["currency"], "usd");
    assert_eq!(first["customer"], "cus_QkW3f9xTallyU42");
    assert_eq!(first["payment_method"], "pm_1QkW3fTallyCard0042");
    assert!(first["latest_charge"].as_str().unwrap().starts_with("ch_"));
    assert_eq!(first["last_payment_error"], Value::Null);
    assert_eq!(first["next_action"], Value::Null);
    assert_eq!(
        first["metadata"],
        json!({
            "tally_user_id": "user_42",
            "tally_credits": "500",
            "tally_credit_type": "credits",
            "tally_auto_topup_id": "0193f1a2-7c4e-7d2b-9a51-3e8f6b2c4d10",
        })
    );

    let (status, headers, replay) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &form).await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, first);

    let (status, _, other) = post_form(&stripe, Some(TEST_KEY), Some("topup-2"), &form).await;
    assert_eq!(status, 200);
    assert_ne!(other["id"], first["id"]);

    assert_eq!(stripe.payment_intents().len(), 2);
    assert_eq!(stripe.payment_intents()[0], first);
    let requests = stripe.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.idempotency_key.as_deref(), r.replayed, r.status))
            .collect::<Vec<_>>(),
        [
            (Some("topup-1"), false, 200),
            (Some("topup-1"), true, 200),
            (Some("topup-2"), false, 200),
        ]
    );
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(&*format!("Bearer {TEST_KEY}"))
    );
    assert_eq!(requests[0].form["metadata[tally_credits]"], "500");
    assert_eq!(requests[0].form["off_session"], "true");

    let event = stripe.event(&first, "payment_intent.succeeded");
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["object"], "event");
    assert_eq!(event["api_version"], API_VERSION);
    assert_eq!(event["type"], "payment_intent.succeeded");
    assert_eq!(event["data"]["object"], first);
    assert_eq!(event["request"]["idempotency_key"], "topup-1");
    assert!(event["request"]["id"].as_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn stripe_standin_rejects_reused_keys_and_wrong_api_keys() {
    let stripe = StripeStandIn::start(TEST_KEY).await;

    let (status, _, _) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &top_up_form(500)).await;
    assert_eq!(status, 200);
    let (status, headers, body) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &top_up_form(600)).await;
    assert_eq!(status, 400, "{body}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(body["error"]["type"], "idempotency_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Keys for idempotent requests can only be used with the same parameters"));

    let (status, headers, body) = post_form(
        &stripe,
        Some("sk_test_51WrongKey000000000000wxyz"),
        Some("topup-2"),
        &top_up_form(500),
    )
    .await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["message"],
        "Invalid API Key provided: sk_test_**********************wxyz"
    );
    let (status, _, body) = post_form(&stripe, None, Some("topup-2"), &top_up_form(500)).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("You did not provide an API key."));

    // A rejected key stored nothing: the same idempotency key then charges.
    let (status, _, _) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-2"), &top_up_form(500)).await;
    assert_eq!(status, 200);

    let mut form = top_up_form(500);
    form.retain(|(name, _)| *name != "amount");
    let (status, _, body) = post_form(&stripe, Some(TEST_KEY), Some("topup-3"), &form).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_missing");
    assert_eq!(body["error"]["param"], "amount");

    assert_eq!(stripe.payment_intents().len(), 2);
    assert_eq!(
        stripe
            .requests()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [200, 400, 401, 401, 200, 400]
    );
}

#[tokio::test]
async fn stripe_standin_declines_requires_action_and_fails() {
    let stripe = StripeStandIn::start(TEST_KEY).await;
    let form = top_up_form(2500);

    stripe.set_behavior(Behavior::insufficient_funds());
    let (status, _, declined) = post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &form).await;
    assert_eq!(status, 402, "{declined}");
    let error = &declined["error"];
    assert_eq!(error["type"], "card_error");
    assert_eq!(error["code"], "card_declined");
    assert_eq!(error["decline_code"], "insufficient_funds");
    assert_eq!(error["message"], "Your card has insufficient funds.");
    assert_eq!(
        error["doc_url"],
        "https://docs.stripe.com/error-codes/card-declined"
    );
    assert!(error["request_log_url"]
        .as_str()
        .unwrap()
        .contains("/logs/req_"));
    let intent = &error["payment_intent"];
    assert_eq!(intent["status"], "requires_payment_method");
    assert_eq!(intent["amount_received"], 0);
    assert_eq!(intent["metadata"]["tally_user_id"], "user_42");
    assert_eq!(intent["last_payment_error"]["type"], "card_error");
    assert_eq!(
        intent["last_payment_error"]["decline_code"],
        "insufficient_funds"
    );
    assert_eq!(intent["latest_charge"], error["charge"]);

    // The decline is stored: the same key replays it even once cards go through again.
    stripe.set_behavior(Behavior::Succeed);
    let (status, headers, replay) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-1"), &form).await;
    assert_eq!((status, &replay), (402, &declined));
    assert_eq!(headers["idempotent-replayed"], "true");

    stripe.set_behavior(Behavior::RequiresAction);
    let (status, _, pending) = post_form(&stripe, Some(TEST_KEY), Some("topup-2"), &form).await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "requires_action");
    assert_eq!(
        pending["next_action"],
        json!({ "type": "use_stripe_sdk", "use_stripe_sdk": {} })
    );
    assert_eq!(pending["amount_received"], 0);

    // A server error stores nothing: the same key is executed afresh once Stripe recovers.
    stripe.set_behavior(Behavior::ServerError);
    let (status, headers, failed) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-3"), &form).await;
    assert_eq!(status, 500);
    assert_eq!(failed["error"]["type"], "api_error");
    assert_eq!(headers["stripe-should-retry"], "true");
    stripe.set_behavior(Behavior::Succeed);
    let (status, headers, charged) =
        post_form(&stripe, Some(TEST_KEY), Some("topup-3"), &form).await;
    assert_eq!(status, 200);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(charged["status"], "succeeded");

    let statuses: Vec<Value> = stripe
        .payment_intents()
        .iter()
        .map(|intent| intent["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        ["requires_payment_method", "requires_action", "succeeded"]
    );

    let event = stripe.event(intent, "payment_intent.payment_failed");
    assert_eq!(event["type"], "payment_intent.payment_failed");
    assert_eq!(event["data"]["object"]["status"], "requires_payment_method");
    assert_eq!(
        event["data"]["object"]["last_payment_error"]["decline_code"],
        "insufficient_funds"
    );
    assert_eq!(event["request"]["idempotency_key"], "topup-1");
}

#[tokio::test]
async fn stripe_standin_creates_the_charge_before_a_delayed_answer() {
    let stripe = StripeStandIn::start(TEST_KEY).await;
    let delay = Duration::from_secs(1);
    stripe.set_delay(delay);
    let started = std::time::Instant::now();

    let call = {
        let url = stripe.base_url();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/payment_intents"))
                .header("authorization", format!("Bearer {TEST_KEY}"))
                .header("idempotency-key", "topup-slow")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("amount=700&currency=usd&metadata%5Btally_user_id%5D=user+7")
                .send()
                .await
                .expect("reach the stand-in")
                .json::<Value>()
                .await
                .expect("a JSON body")
        })
    };
    // Recorded and created as soon as it arrives, answered only after the delay.
    while stripe.requests().is_empty() {
        assert!(started.elapsed() < delay / 2, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!call.is_finished());
    assert_eq!(
        stripe.requests()[0].form["metadata[tally_user_id]"],
        "user 7"
    );
    let created = stripe.payment_intents();
    assert_eq!(created.len(), 1);

    let answered = call.await.unwrap();
    assert!(started.elapsed() >= delay);
    assert_eq!(answered, created[0]);
    assert_eq!(answered["metadata"], json!({ "tally_user_id": "user 7" }));
}
