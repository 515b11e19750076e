//! Request parameters and response bodies, mirroring the API's JSON field for field
//! (snake_case). Optional request fields left `None` are not sent; response fields the server
//! may add later are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// `POST /credits/add`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AddParams {
    pub user_id: String,
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// RFC 3339, in the future: these credits form a lot that expires then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    /// Which of the user's balances (1..=64 of `a-z 0-9 _ -`); the server's default is
    /// `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// `POST /credits/deduct`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeductParams {
    pub user_id: String,
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Which of the user's balances (1..=64 of `a-z 0-9 _ -`); the server's default is
    /// `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// `POST /credits/refund`: `amount` defaults to all that is left of the entry. A refund acts on
/// the entry's credit type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RefundParams {
    pub ledger_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /credits/hold`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HoldParams {
    pub user_id: String,
    pub amount: i64,
    /// 1..=86400, default 900.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Which of the user's balances (1..=64 of `a-z 0-9 _ -`); the server's default is
    /// `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// `POST /credits/capture`: `amount` defaults to all that is held.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CaptureParams {
    pub hold_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
}

/// `POST /credits/release`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReleaseParams {
    pub hold_id: Uuid,
}

/// `GET /credits/history`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistoryParams {
    pub user_id: String,
    /// 1..=200, default 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only this credit type's (`None`: every type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// `GET /credits/holds`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HoldsParams {
    pub user_id: String,
    /// `active`, `captured`, `released` or `expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only this credit type's (`None`: every type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /webhooks/events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WebhookEventsParams {
    /// `stripe` or `polar`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The answer to an add or a deduct.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WriteResponse {
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub success: bool,
    pub user_id: String,
    pub balance_after: i64,
    pub ledger_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RefundResponse {
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub success: bool,
    pub user_id: String,
    pub balance_after: i64,
    /// The refund entry.
    pub ledger_id: Uuid,
    pub refunded_ledger_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HoldResponse {
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub success: bool,
    pub user_id: String,
    pub hold_id: Uuid,
    pub amount: i64,
    pub balance: i64,
    pub available: i64,
    pub expires_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CaptureResponse {
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub success: bool,
    pub user_id: String,
    pub hold_id: Uuid,
    pub ledger_id: Uuid,
    pub captured: i64,
    pub released: i64,
    pub balance_after: i64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ReleaseResponse {
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub success: bool,
    pub user_id: String,
    pub hold_id: Uuid,
    pub released: i64,
    pub balance: i64,
    pub available: i64,
}

/// `202`: the command is durable and will be applied; its outcome is at `status_url`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Accepted {
    pub success: bool,
    pub status: String,
    pub command_id: Uuid,
    pub status_url: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BalanceResponse {
    pub user_id: String,
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    /// What the user owns.
    pub balance: i64,
    #[serde(default)]
    pub held: i64,
    /// `balance - held`: what deducts and new holds may use.
    #[serde(default)]
    pub available: i64,
    #[serde(default)]
    pub next_expiry: Option<NextExpiry>,
}

/// `GET /credits/balances`: every credit type a user has.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BalancesResponse {
    pub user_id: String,
    /// One per credit type the user has been written, ordered by type.
    pub balances: Vec<TypeBalance>,
}

/// One of a user's balances.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TypeBalance {
    pub credit_type: String,
    pub balance: i64,
    pub held: i64,
    pub available: i64,
    pub next_expiry: Option<NextExpiry>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct NextExpiry {
    pub amount: i64,
    pub expires_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HistoryResponse {
    pub user_id: String,
    pub entries: Vec<HistoryEntry>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HistoryEntry {
    pub ledger_id: Uuid,
    /// `add`, `deduct`, `refund`, `payment`, `expire` or `clawback`.
    #[serde(rename = "type")]
    pub entry_type: String,
    /// The balance the entry changed.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    /// Signed: negative for what left the balance.
    pub amount: i64,
    pub balance_after: i64,
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// `api`, `stripe`, `polar`, `system` or `dashboard`.
    pub source: String,
    #[serde(default)]
    pub refunded_ledger_id: Option<Uuid>,
    #[serde(default)]
    pub hold_id: Option<Uuid>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub lot_id: Option<Uuid>,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HoldsResponse {
    pub user_id: String,
    pub holds: Vec<HoldRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HoldRecord {
    pub hold_id: Uuid,
    /// The balance the answer is about.
    #[serde(default = "default_credit_type")]
    pub credit_type: String,
    pub amount: i64,
    pub captured: i64,
    /// `active`, `captured`, `released` or `expired`.
    pub status: String,
    pub expires_at: String,
    pub created_at: String,
}

/// `GET /commands/{command_id}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CommandStatus {
    pub command_id: Uuid,
    /// `pending`, `applied` or `rejected`.
    pub status: String,
    /// The status the synchronous call would have answered; `None` while pending.
    pub http_status: Option<u16>,
    /// The body the synchronous call would have answered; `None` while pending.
    pub result: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WebhookEventsResponse {
    pub events: Vec<WebhookEvent>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WebhookEvent {
    pub event_id: String,
    pub provider: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `credited`, `clawed_back`, `duplicate`, `ignored` or `rejected`.
    pub outcome: String,
    pub reason: Option<String>,
    pub user_id: Option<String>,
    pub ledger_id: Option<Uuid>,
    pub received_at: String,
}

/// An event as Tally sends it to endpoints and as `GET /events` reads it back.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Event {
    /// The same on every delivery of it (`webhook-id`): dedupe on it.
    pub id: Uuid,
    /// `balance.low`, `credits.added`, `hold.expired`, `ping`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: String,
    pub app_id: Uuid,
    /// `None` for an event of no user (`ping`).
    pub user_id: Option<String>,
    /// Increases with each event of one app and user: order a user's events by it.
    pub sequence: i64,
    /// What happened; its fields depend on the type.
    #[serde(default)]
    pub data: Value,
}

/// `POST /webhook_endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CreateEndpointParams {
    /// `https` (or, where the deployment allows private endpoints, `http`).
    pub url: String,
    /// Event types to receive; `None`: `["*"]`, every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PATCH /webhook_endpoints/{id}`: what is `None` stays as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UpdateEndpointParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `Some(None)` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    /// `Some(true)` on a disabled endpoint also forgets the failures that disabled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A webhook endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives, or `["*"]`.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// `whsec_...`: in the answer to a create only.
    #[serde(default)]
    pub secret: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EndpointsResponse {
    pub endpoints: Vec<Endpoint>,
}

/// The new secret of a rotation (the previous one keeps signing for 24 h).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SecretResponse {
    pub secret: String,
}

/// The `ping` event a test sent.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TestResponse {
    pub event_id: Uuid,
}

/// `GET /webhook_endpoints/{id}/deliveries`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeliveriesParams {
    /// `pending`, `succeeded` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One event sent to one endpoint, and how its attempts went.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub attempts: u32,
    pub last_attempt_at: Option<String>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DeliveriesResponse {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

/// `GET /events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventsParams {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<Event>,
    pub next_cursor: Option<String>,
}

/// `PUT /credits/alerts`: without `user_id`, the app's default list of the credit type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertsParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Default `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
    /// At most 10 values, each 1..=10^12; empty: none.
    pub thresholds: Vec<i64>,
}

/// `GET` and `DELETE /credits/alerts`: whose list (`None`: the app's default) of which type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertsQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// A list of thresholds as set.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AlertsResponse {
    pub user_id: Option<String>,
    pub credit_type: String,
    /// Highest first, each once.
    pub thresholds: Vec<i64>,
}

/// The thresholds that apply, and where they come from.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EffectiveAlerts {
    pub user_id: Option<String>,
    pub credit_type: String,
    pub thresholds: Vec<i64>,
    /// `user` (the user's own list), `app` (the app's default) or `none`.
    pub source: String,
}

/// `PUT /products/{provider}/{product_id}`: what one provider product buys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProductParams {
    /// 1..=10^12 credits one unit buys (a subscription line credits `credits × quantity`).
    pub credits: i64,
    /// Default `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
    /// `one_time` (a pack) or `subscription` (an allowance per billing period that expires at
    /// the period's end).
    pub mode: String,
    /// `one_time` only: the credits expire this many days (1..=3650) after the payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

/// What one provider product buys.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Product {
    /// `stripe` or `polar`.
    pub provider: String,
    /// A Stripe Price id (`price_...`) or a Polar Product id.
    pub product_id: String,
    pub credits: i64,
    pub credit_type: String,
    /// `one_time` or `subscription`.
    pub mode: String,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProductsResponse {
    pub products: Vec<Product>,
}

/// `PUT /credits/auto_topup`: when the user's `available` falls below `threshold`, their saved
/// card is charged `amount` (minor units of `currency`) for `credits` more.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AutoTopupParams {
    pub user_id: String,
    /// Default `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
    pub enabled: bool,
    pub threshold: i64,
    pub credits: i64,
    /// In the currency's minor units (cents).
    pub amount: i64,
    /// Three lowercase letters, e.g. `usd`.
    pub currency: String,
    /// `cus_...`
    pub stripe_customer_id: String,
    /// `pm_...`
    pub stripe_payment_method_id: String,
    /// 1..=1000 charges a month at most; default 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_month: Option<u32>,
}

/// `GET` and `DELETE /credits/auto_topup`: whose settings of which type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AutoTopupQuery {
    pub user_id: String,
    /// Default `credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
}

/// A user's auto top-up of one credit type.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AutoTopup {
    pub user_id: String,
    pub credit_type: String,
    pub enabled: bool,
    pub threshold: i64,
    pub credits: i64,
    pub amount: i64,
    pub currency: String,
    pub stripe_customer_id: String,
    pub stripe_payment_method_id: String,
    pub max_per_month: u32,
    /// Failed charges in a row; at 3 the auto top-up is disabled.
    pub consecutive_failures: u32,
    /// Why Tally turned it off (`None` when enabled, or turned off by a `set`).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// `None` until a charge has been attempted.
    #[serde(default)]
    pub last_attempt: Option<AutoTopupAttempt>,
    pub updated_at: String,
}

/// One charge of an auto top-up.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AutoTopupAttempt {
    /// Also the charge's `Idempotency-Key` at Stripe.
    pub id: Uuid,
    /// `pending`, `succeeded`, `failed` or `action_required`.
    pub status: String,
    /// The PaymentIntent Stripe created, once known.
    #[serde(default)]
    pub payment_intent_id: Option<String>,
    pub created_at: String,
    /// What Stripe answered, when the charge did not succeed.
    #[serde(default)]
    pub error: Option<AutoTopupError>,
}

/// Why a charge did not succeed.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AutoTopupError {
    /// Stripe's error code (`card_declined`, ...).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The type every request that names none uses, and the type of answers from a server older
/// than credit types.
pub const DEFAULT_CREDIT_TYPE: &str = "credits";

fn default_credit_type() -> String {
    DEFAULT_CREDIT_TYPE.to_string()
}
