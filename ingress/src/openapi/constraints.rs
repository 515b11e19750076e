//! What the validator accepts, stated in the document from the constants it checks against.
//!
//! utoipa's schema attributes take only literals, so the constraints are stamped here instead,
//! after the document is generated: every property of a request body and every parameter gets
//! the schema of its [`Rule`], looked up by name ([`body_rule`], [`parameter_rule`]) and built
//! from `tally_common::limits` and the handlers' own lists. Every JSON body the API reads goes
//! through [`crate::validate::Fields`], which refuses unknown fields: its schema says
//! `additionalProperties: false`.
//!
//! A field the validator reads under a new name needs a rule here: the tests below fail for a
//! property or parameter without one, and they run the handlers' own parsing over the
//! document's boundaries (`openapi::agreement`).

use std::sync::LazyLock;
use tally_common::apps::{APP_NAME_CHARS_MAX, WEBHOOK_SECRET_CHARS_MAX};
use tally_common::outbound::URL_CHARS_MAX;
use tally_common::plans::ProductMode;

use tally_common::credit_type::CreditType;
use tally_common::events::{EventType, SUBSCRIBE_ALL};
use tally_common::limits::{
    ALERT_THRESHOLDS_MAX, AMOUNT_MAX, AMOUNT_MIN, BATCH_OPERATIONS_MAX,
    CREDIT_LIFETIME_SECONDS_MAX, CREDIT_LIFETIME_SECONDS_MIN, CREDIT_TYPE_CHARS_MAX,
    DESCRIPTION_CHARS_MAX, HOLD_SECONDS_DEFAULT, HOLD_SECONDS_MAX, HOLD_SECONDS_MIN,
    IDEMPOTENCY_KEY_CHARS_MAX, IDEMPOTENCY_KEY_CHARS_MIN, METADATA_KEYS_MAX,
    METADATA_KEY_CHARS_MAX, METADATA_KEY_CHARS_MIN, METADATA_VALUE_CHARS_MAX, PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX, PAGE_LIMIT_MIN, USER_ID_BYTES_MAX, USER_ID_BYTES_MIN,
};
use tally_common::limits::{
    CURRENCY_CHARS, PLAN_EXPIRES_IN_DAYS_MAX, PRODUCT_ID_CHARS_MAX, STRIPE_ID_CHARS_MAX,
    STRIPE_KEY_CHARS_MAX, TOPUPS_PER_MONTH_DEFAULT, TOPUPS_PER_MONTH_MAX,
};
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, OneOfBuilder,
};
use utoipa::openapi::{Components, KnownFormat, Ref, RefOr, Schema, SchemaFormat, Type};
use utoipa::Modify;

use crate::admin::queries::{
    ENTRY_TYPES, OUTCOMES, PAGE_INDEX_MAX, PROVIDERS, SOURCES, STATS_DAYS_DEFAULT, STATS_DAYS_MAX,
    STATS_DAYS_MIN, USER_SORTS,
};
use crate::operations::Operation as Write;
use crate::routes::deliveries::DELIVERY_STATUSES;
use crate::routes::holds::HOLD_STATUSES;

/// Every event type's name (`GET /events?type=`).
static EVENT_TYPES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| EventType::ALL.iter().map(|t| t.as_str()).collect());

/// What an endpoint may subscribe to: every type but `ping` (sent to every endpoint), or `*`.
static SUBSCRIPTIONS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    EventType::ALL
        .iter()
        .filter(|t| **t != EventType::Ping)
        .map(|t| t.as_str())
        .chain([SUBSCRIBE_ALL])
        .collect()
});

/// A string without the NUL character, which Postgres text cannot hold: the validator refuses
/// it in every string it stores.
pub(crate) const NO_NUL: &str = "^[^\\u0000]*$";

/// The characters Rust's `str::trim` removes (Unicode `White_Space`), as a regular expression
/// class body: JSON Schema's `\s` differs from it between regex dialects, so they are listed.
const WHITE_SPACE: &str =
    "\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

/// A kind of value the API validates, and what the document says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// A user id: 1 to 255 bytes of UTF-8, without NUL.
    UserId,
    /// The start of user ids (admin search): at most 255 bytes, without NUL; empty for all.
    UserIdPrefix,
    /// A credit amount: a JSON integer from 1 to 10^12.
    Amount,
    /// A free-text description.
    Description,
    /// A metadata object of string values.
    Metadata,
    /// A UUID (an id in a body or a path).
    Id,
    /// An RFC 3339 time that must be in the future.
    FutureTime,
    /// A JSON integer in a body, from `min` to `max`; `default` when absent.
    Integer {
        min: i64,
        max: i64,
        default: Option<i64>,
    },
    /// An integer query parameter from `min` to `max`, `default` when absent; with `blank`, an
    /// empty value counts as absent.
    QueryInteger {
        min: i64,
        max: i64,
        default: i64,
        blank: bool,
    },
    /// `limit`: a page size.
    PageLimit,
    /// One of `values`; with `blank`, an empty value counts as absent.
    OneOf {
        values: &'static [&'static str],
        blank: bool,
    },
    /// An opaque page cursor; with `blank`, an empty value counts as absent.
    Cursor { blank: bool },
    /// An app name: trimmed, 1 to 200 characters.
    AppName,
    /// A provider's webhook secret: trimmed, 1 to 1,000 characters.
    WebhookSecret,
    /// The `Idempotency-Key` header.
    IdempotencyKey,
    /// The `Prefer` header.
    Prefer,
    /// A string without NUL (the ids and types of providers' events).
    Text,
    /// A credit type: 1 to 64 of `a-z 0-9 _ -`; `credits` when absent if `defaulted`; with
    /// `blank`, an empty value counts as absent.
    CreditType { defaulted: bool, blank: bool },
    /// The `idempotency_key` of a batch's operation: 1 to 255 characters, no control character.
    OperationKey,
    /// A provider's signature header: checked against the body with the app's secrets.
    Signature,
    /// A webhook endpoint's URL.
    EndpointUrl,
    /// The event types an endpoint receives.
    Subscriptions,
    /// A list of balance alert thresholds.
    Thresholds,
    /// `true` or `false`.
    Boolean,
    /// A provider's product id (a Stripe Price id, a Polar Product id).
    ProductId,
    /// A currency: three lowercase letters (ISO 4217).
    Currency,
    /// A Stripe object id (`cus_…`, `pm_…`).
    StripeId,
    /// A Stripe secret key (`sk_…`, `rk_…`).
    StripeKey,
}

/// The rule of property `property` of the request body schema named `schema`.
pub(crate) fn body_rule(schema: &str, property: &str) -> Option<Rule> {
    Some(match (schema, property) {
        ("AddRequest", "expires_in_seconds") => Rule::Integer {
            min: CREDIT_LIFETIME_SECONDS_MIN,
            max: CREDIT_LIFETIME_SECONDS_MAX,
            default: None,
        },
        ("HoldRequest", "expires_in_seconds") => Rule::Integer {
            min: HOLD_SECONDS_MIN,
            max: HOLD_SECONDS_MAX,
            default: Some(HOLD_SECONDS_DEFAULT),
        },
        ("CreateAppRequest", "name") => Rule::AppName,
        ("WebhookSecretRequest", "provider") => Rule::OneOf {
            values: PROVIDERS,
            blank: false,
        },
        ("WebhookSecretRequest", "secret") => Rule::WebhookSecret,
        ("StripeEvent", "id" | "type") | ("PolarEvent", "type") => Rule::Text,
        ("CreateEndpointRequest" | "UpdateEndpointRequest", "url") => Rule::EndpointUrl,
        ("CreateEndpointRequest" | "UpdateEndpointRequest", "events") => Rule::Subscriptions,
        ("UpdateEndpointRequest", "enabled") => Rule::Boolean,
        ("AlertsRequest", "thresholds") => Rule::Thresholds,
        ("ProductRequest" | "AutoTopupRequest", "credits") | ("AutoTopupRequest", "threshold") => {
            Rule::Amount
        }
        ("ProductRequest", "mode") => Rule::OneOf {
            values: &ProductMode::NAMES,
            blank: false,
        },
        ("ProductRequest", "expires_in_days") => Rule::Integer {
            min: 1,
            max: PLAN_EXPIRES_IN_DAYS_MAX,
            default: None,
        },
        ("AutoTopupRequest", "enabled") => Rule::Boolean,
        ("AutoTopupRequest", "currency") => Rule::Currency,
        ("AutoTopupRequest", "stripe_customer_id" | "stripe_payment_method_id") => Rule::StripeId,
        ("AutoTopupRequest", "max_per_month") => Rule::Integer {
            min: 1,
            max: TOPUPS_PER_MONTH_MAX,
            default: Some(TOPUPS_PER_MONTH_DEFAULT),
        },
        ("StripeKeyRequest", "secret_key") => Rule::StripeKey,
        (_, "credit_type") => Rule::CreditType {
            defaulted: true,
            blank: false,
        },
        (_, "user_id") => Rule::UserId,
        (_, "amount") => Rule::Amount,
        (_, "description") => Rule::Description,
        (_, "metadata") => Rule::Metadata,
        (_, "ledger_id" | "hold_id") => Rule::Id,
        (_, "expires_at") => Rule::FutureTime,
        _ => return None,
    })
}

/// The request bodies that are the providers' events, not Tally's: Tally reads the fields it
/// needs and any other field may be there.
pub(crate) const OPEN_BODIES: &[&str] = &["StripeEvent", "PolarEvent"];

/// Pairs of optional fields of one body that may not both be given (`null` counts as absent).
pub(crate) const EXCLUSIVE: &[(&str, &str, &str)] =
    &[("AddRequest", "expires_at", "expires_in_seconds")];

/// The rule of the parameter `name` in `location` of the operations on `path`.
pub(crate) fn parameter_rule(path: &str, location: &ParameterIn, name: &str) -> Option<Rule> {
    let admin = path.starts_with("/admin/");
    Some(match (location, name) {
        (ParameterIn::Header, "Idempotency-Key") => Rule::IdempotencyKey,
        (ParameterIn::Header, "Prefer") => Rule::Prefer,
        (
            ParameterIn::Header,
            "Stripe-Signature" | "webhook-id" | "webhook-timestamp" | "webhook-signature",
        ) => Rule::Signature,
        (ParameterIn::Path, "command_id" | "app_id" | "key_id" | "ledger_id" | "id") => Rule::Id,
        (ParameterIn::Path | ParameterIn::Query, "user_id") => Rule::UserId,
        (ParameterIn::Path, "provider") => Rule::OneOf {
            values: PROVIDERS,
            blank: false,
        },
        (ParameterIn::Path, "product_id") => Rule::ProductId,
        (ParameterIn::Query, "limit") => Rule::PageLimit,
        // One balance reads `credits` when absent; a list filters by it only when given.
        (ParameterIn::Query, "credit_type") => Rule::CreditType {
            defaulted: path == "/credits/balance" || path == "/credits/auto_topup",
            blank: admin,
        },
        (ParameterIn::Query, "cursor") => Rule::Cursor { blank: admin },
        (ParameterIn::Query, "status") if path == "/credits/holds" => Rule::OneOf {
            values: HOLD_STATUSES,
            blank: false,
        },
        (ParameterIn::Query, "status") if path == "/webhook_endpoints/{id}/deliveries" => {
            Rule::OneOf {
                values: DELIVERY_STATUSES,
                blank: false,
            }
        }
        (ParameterIn::Query, "type") if path == "/events" => Rule::OneOf {
            values: EVENT_TYPES.as_slice(),
            blank: false,
        },
        (ParameterIn::Query, "provider") => Rule::OneOf {
            values: PROVIDERS,
            blank: admin,
        },
        (ParameterIn::Query, "outcome") if admin => Rule::OneOf {
            values: OUTCOMES,
            blank: true,
        },
        (ParameterIn::Query, "type") if admin => Rule::OneOf {
            values: ENTRY_TYPES,
            blank: true,
        },
        (ParameterIn::Query, "source") if admin => Rule::OneOf {
            values: SOURCES,
            blank: true,
        },
        (ParameterIn::Query, "sort") if admin => Rule::OneOf {
            values: USER_SORTS,
            blank: true,
        },
        (ParameterIn::Query, "prefix") if admin => Rule::UserIdPrefix,
        (ParameterIn::Query, "page") if admin => Rule::QueryInteger {
            min: 0,
            max: PAGE_INDEX_MAX,
            default: 0,
            blank: true,
        },
        (ParameterIn::Query, "days") if admin => Rule::QueryInteger {
            min: STATS_DAYS_MIN,
            max: STATS_DAYS_MAX,
            default: STATS_DAYS_DEFAULT,
            blank: true,
        },
        _ => return None,
    })
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer(min: i64, max: i64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
}

/// A string that `str::trim` leaves 1 to `chars_max` characters long, without NUL: white space
/// around it, then a character that is neither, then up to `chars_max - 2` of anything but NUL
/// and a last such character.
fn trimmed(chars_max: usize) -> String {
    let inner = chars_max.saturating_sub(2);
    format!(
        "^[{WHITE_SPACE}]*[^\\u0000{WHITE_SPACE}]([^\\u0000]{{0,{inner}}}[^\\u0000{WHITE_SPACE}])?[{WHITE_SPACE}]*$"
    )
}

impl Rule {
    /// The schema of a value following this rule, and the sentence that says it in words.
    pub(crate) fn schema(self) -> (Schema, String) {
        let object = |builder: ObjectBuilder| Schema::Object(builder.build());
        let with_blank = |schema: Schema, blank: bool| {
            if blank {
                AnyOfBuilder::new()
                    .item(schema)
                    .item(string().enum_values(Some([""])).build())
                    .build()
                    .into()
            } else {
                schema
            }
        };
        match self {
            Rule::UserId => (
                object(
                    string()
                        .min_length(Some(USER_ID_BYTES_MIN))
                        .max_length(Some(USER_ID_BYTES_MAX))
                        .pattern(Some(NO_NUL)),
                ),
                format!(
                    "{USER_ID_BYTES_MIN} to {USER_ID_BYTES_MAX} bytes of UTF-8 without the NUL \
                     character, compared exactly. `maxLength` counts characters: with multi-byte \
                     characters the byte limit comes first."
                ),
            ),
            Rule::UserIdPrefix => (
                object(
                    string()
                        .max_length(Some(USER_ID_BYTES_MAX))
                        .pattern(Some(NO_NUL)),
                ),
                format!(
                    "At most {USER_ID_BYTES_MAX} bytes of UTF-8 without the NUL character; \
                     empty or absent: every user."
                ),
            ),
            Rule::Amount => (
                object(integer(AMOUNT_MIN, AMOUNT_MAX)),
                format!(
                    "A JSON integer from {AMOUNT_MIN} to {AMOUNT_MAX} (`5.0` and `\"5\"` are \
                     refused)."
                ),
            ),
            Rule::Description => (
                object(
                    string()
                        .max_length(Some(DESCRIPTION_CHARS_MAX))
                        .pattern(Some(NO_NUL)),
                ),
                format!("At most {DESCRIPTION_CHARS_MAX} characters, without the NUL character."),
            ),
            Rule::Metadata => (
                object(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .max_properties(Some(METADATA_KEYS_MAX))
                        .property_names(Some(
                            string()
                                .min_length(Some(METADATA_KEY_CHARS_MIN))
                                .max_length(Some(METADATA_KEY_CHARS_MAX))
                                .pattern(Some(NO_NUL)),
                        ))
                        .additional_properties(Some(
                            string()
                                .max_length(Some(METADATA_VALUE_CHARS_MAX))
                                .pattern(Some(NO_NUL)),
                        )),
                ),
                format!(
                    "At most {METADATA_KEYS_MAX} keys of {METADATA_KEY_CHARS_MIN} to \
                     {METADATA_KEY_CHARS_MAX} characters, each with a string value of at most \
                     {METADATA_VALUE_CHARS_MAX} characters; no NUL character."
                ),
            ),
            Rule::Id => (
                object(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))),
                "A UUID.".to_string(),
            ),
            Rule::FutureTime => (
                object(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))),
                "An RFC 3339 time in the future.".to_string(),
            ),
            Rule::Integer { min, max, default } => (
                object(integer(min, max).default(default.map(Into::into))),
                match default {
                    Some(default) => {
                        format!("A JSON integer from {min} to {max} (default {default}).")
                    }
                    None => format!("A JSON integer from {min} to {max}."),
                },
            ),
            Rule::QueryInteger {
                min,
                max,
                default,
                blank,
            } => (
                with_blank(
                    object(integer(min, max).default(Some(default.into()))),
                    blank,
                ),
                if blank {
                    format!("An integer from {min} to {max} (default {default}); empty: as if absent.")
                } else {
                    format!("An integer from {min} to {max} (default {default}).")
                },
            ),
            Rule::PageLimit => (
                object(integer(PAGE_LIMIT_MIN, PAGE_LIMIT_MAX).default(Some(PAGE_LIMIT_DEFAULT.into()))),
                format!(
                    "Page size, {PAGE_LIMIT_MIN} to {PAGE_LIMIT_MAX} (default {PAGE_LIMIT_DEFAULT})."
                ),
            ),
            Rule::OneOf { values, blank } => (
                with_blank(object(string().enum_values(Some(values.iter().copied()))), blank),
                if blank {
                    "Empty: as if absent.".to_string()
                } else {
                    String::new()
                },
            ),
            Rule::Cursor { blank } => (
                object(string()),
                format!(
                    "The `next_cursor` of the previous page, as issued; any other value is \
                     refused (400 naming `cursor`){}.",
                    if blank { "; empty: the first page" } else { "" }
                ),
            ),
            Rule::AppName => (
                object(string().pattern(Some(trimmed(APP_NAME_CHARS_MAX)))),
                format!(
                    "1 to {APP_NAME_CHARS_MAX} characters once leading and trailing white space is \
                     trimmed (as stored), without the NUL character."
                ),
            ),
            Rule::WebhookSecret => (
                object(string().pattern(Some(trimmed(WEBHOOK_SECRET_CHARS_MAX)))),
                format!(
                    "The provider's signing secret: 1 to {WEBHOOK_SECRET_CHARS_MAX} characters once \
                     leading and trailing white space is trimmed, without the NUL character."
                ),
            ),
            Rule::IdempotencyKey => (
                object(
                    string()
                        .min_length(Some(IDEMPOTENCY_KEY_CHARS_MIN))
                        .max_length(Some(IDEMPOTENCY_KEY_CHARS_MAX))
                        .pattern(Some(
                            "^[\\u0020-\\u007E]*[\\u0021-\\u007E][\\u0020-\\u007E]*$",
                        )),
                ),
                format!(
                    "{IDEMPOTENCY_KEY_CHARS_MIN} to {IDEMPOTENCY_KEY_CHARS_MAX} characters of \
                     visible ASCII (spaces inside), scoped to the app. A later request \
                     with the same key, path and body replays the first answer exactly; with \
                     another body or path it is `409 idempotency_conflict`, and while the first \
                     is in flight `409 idempotency_in_progress`. Keys are kept at least 24 hours."
                ),
            ),
            Rule::Text => (
                object(string().pattern(Some(NO_NUL))),
                "Without the NUL character.".to_string(),
            ),
            Rule::Signature => (object(string()), String::new()),
            Rule::CreditType { defaulted, blank } => (
                with_blank(
                    object(
                        string()
                            .min_length(Some(1))
                            .max_length(Some(CREDIT_TYPE_CHARS_MAX))
                            .pattern(Some(format!("^[a-z0-9_-]{{1,{CREDIT_TYPE_CHARS_MAX}}}$")))
                            .default(defaulted.then(|| CreditType::DEFAULT.into())),
                    ),
                    blank,
                ),
                if blank {
                    format!(
                        "1 to {CREDIT_TYPE_CHARS_MAX} characters of `a-z`, `0-9`, `_` and `-`; \
                         empty: as if absent."
                    )
                } else {
                    format!("1 to {CREDIT_TYPE_CHARS_MAX} characters of `a-z`, `0-9`, `_` and `-`.")
                },
            ),
            Rule::OperationKey => (
                object(
                    string()
                        .min_length(Some(IDEMPOTENCY_KEY_CHARS_MIN))
                        .max_length(Some(IDEMPOTENCY_KEY_CHARS_MAX))
                        .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$")),
                ),
                format!(
                    "Works like the `Idempotency-Key` of the operation sent alone: \
                     {IDEMPOTENCY_KEY_CHARS_MIN} to {IDEMPOTENCY_KEY_CHARS_MAX} characters, no \
                     control character."
                ),
            ),
            Rule::EndpointUrl => (
                object(
                    string()
                        .format(Some(SchemaFormat::Custom("uri".into())))
                        .max_length(Some(URL_CHARS_MAX))
                        .pattern(Some("^https://[^\\u0000]+$")),
                ),
                format!(
                    "An absolute `https` URL of at most {URL_CHARS_MAX} characters, without \
                     credentials. Its host must not be, nor resolve to, a loopback, private, \
                     link-local or cloud metadata address (checked again at every delivery); a \
                     deployment with `TALLY_WEBHOOK_ALLOW_PRIVATE=true` takes those, and `http`."
                ),
            ),
            Rule::Subscriptions => (
                Schema::Array(
                    ArrayBuilder::new()
                        .items(string().enum_values(Some(SUBSCRIPTIONS.iter().copied())))
                        .min_items(Some(1))
                        .build(),
                ),
                format!(
                    "Event type names (each once; `ping` goes to every endpoint), or \
                     `[\"{SUBSCRIBE_ALL}\"]` for every type, the default; `{SUBSCRIBE_ALL}` \
                     cannot be listed with other types."
                ),
            ),
            Rule::Thresholds => (
                Schema::Array(
                    ArrayBuilder::new()
                        .items(integer(AMOUNT_MIN, AMOUNT_MAX))
                        .max_items(Some(ALERT_THRESHOLDS_MAX))
                        .build(),
                ),
                format!(
                    "At most {ALERT_THRESHOLDS_MAX} available balances from {AMOUNT_MIN} to \
                     {AMOUNT_MAX}, stored highest first and once each; `[]` turns the alerts \
                     off."
                ),
            ),
            Rule::Boolean => (
                object(ObjectBuilder::new().schema_type(Type::Boolean)),
                String::new(),
            ),
            Rule::ProductId => (
                object(
                    string()
                        .min_length(Some(1))
                        .max_length(Some(PRODUCT_ID_CHARS_MAX))
                        .pattern(Some(format!("^[\\u0021-\\u007E]{{1,{PRODUCT_ID_CHARS_MAX}}}$"))),
                ),
                format!(
                    "The provider's id: a Stripe Price id (`price_…`) or a Polar Product id, 1 to \
                     {PRODUCT_ID_CHARS_MAX} visible ASCII characters."
                ),
            ),
            Rule::Currency => (
                object(
                    string()
                        .min_length(Some(CURRENCY_CHARS))
                        .max_length(Some(CURRENCY_CHARS))
                        .pattern(Some("^[a-z]{3}$"))
                        .examples(["usd"]),
                ),
                "An ISO 4217 currency code in lowercase, as Stripe writes it.".to_string(),
            ),
            Rule::StripeId => (
                object(
                    string()
                        .min_length(Some(1))
                        .max_length(Some(STRIPE_ID_CHARS_MAX))
                        .pattern(Some(format!("^[A-Za-z0-9_]{{1,{STRIPE_ID_CHARS_MAX}}}$"))),
                ),
                format!("A Stripe id: 1 to {STRIPE_ID_CHARS_MAX} of `A-Z a-z 0-9 _`."),
            ),
            Rule::StripeKey => (
                object(
                    string()
                        .min_length(Some(4))
                        .max_length(Some(STRIPE_KEY_CHARS_MAX))
                        .pattern(Some("^[sr]k_[A-Za-z0-9_]+$"))
                        .examples(["sk_test_4eC39HqLyjWDarjtT1zdp7dc", "rk_live_1"]),
                ),
                format!(
                    "A Stripe secret key (`sk_…`) or restricted key (`rk_…`) allowed to create \
                     PaymentIntents, at most {STRIPE_KEY_CHARS_MAX} characters. \
                     Stored encrypted when the deployment sets `TALLY_SECRET_KEY`; never shown \
                     again."
                ),
            ),
            Rule::Prefer => (
                object(string().examples(["respond-async"])),
                "`respond-async`: answer `202` as soon as the command is durably accepted, \
                 without waiting for its result; other preferences are ignored."
                    .to_string(),
            ),
        }
    }
}

/// Stamps every rule onto the document and closes the request bodies.
pub(super) struct Constraints;

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // A body schema may serve several operations: stamped once.
        let mut bodies = std::collections::BTreeSet::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations_mut(item) {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let Some(rule) = parameter_rule(path, &parameter.parameter_in, &parameter.name)
                    else {
                        continue;
                    };
                    let (schema, words) = rule.schema();
                    // A path, query or header value is text that is there or not: never null.
                    parameter.schema = Some(schema.into());
                    let description = sentences(parameter.description.take(), &words);
                    parameter.description = (!description.is_empty()).then_some(description);
                }
                if let Some(name) = request_body_schema(operation) {
                    bodies.insert(name);
                }
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        // A batch's body is the write bodies again, one per operation: built from them below.
        bodies.remove("BatchRequest");
        for name in bodies {
            let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut(&name) else {
                continue;
            };
            if !OPEN_BODIES.contains(&name.as_str()) {
                body.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
            for (property, schema) in body.properties.iter_mut() {
                let Some(rule) = body_rule(&name, property) else {
                    continue;
                };
                stamp(schema, rule);
            }
            for (_, first, second) in EXCLUSIVE.iter().filter(|(schema, ..)| *schema == name) {
                exclude_both(body, first, second);
            }
        }
        batch_schemas(components);
    }
}

/// The operations of a path, by method (the methods the API uses).
pub(crate) fn methods(item: &PathItem) -> [(&'static str, Option<&Operation>); 5] {
    [
        ("GET", item.get.as_ref()),
        ("PUT", item.put.as_ref()),
        ("POST", item.post.as_ref()),
        ("DELETE", item.delete.as_ref()),
        ("PATCH", item.patch.as_ref()),
    ]
}

/// [`methods`], to change them.
pub(crate) fn methods_mut(item: &mut PathItem) -> [(&'static str, &mut Option<Operation>); 5] {
    [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("PATCH", &mut item.patch),
    ]
}

/// Every operation of a path.
pub(crate) fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    methods_mut(item)
        .into_iter()
        .filter_map(|(_, operation)| operation.as_mut())
}

/// The component schema an operation's JSON request body refers to, if any.
pub(crate) fn request_body_schema(operation: &Operation) -> Option<String> {
    let content = operation
        .request_body
        .as_ref()?
        .content
        .get("application/json")?;
    match content.schema.as_ref()? {
        RefOr::Ref(reference) => reference
            .ref_location
            .strip_prefix("#/components/schemas/")
            .map(str::to_string),
        RefOr::T(_) => None,
    }
}

/// The request body schema of each write operation.
pub(crate) fn body_schema(operation: Write) -> &'static str {
    match operation {
        Write::Add => "AddRequest",
        Write::Deduct => "DeductRequest",
        Write::Refund => "RefundRequest",
        Write::Hold => "HoldRequest",
        Write::Capture => "CaptureRequest",
        Write::Release => "ReleaseRequest",
    }
}

/// The operations an atomic batch takes.
pub(crate) const ATOMIC_OPERATIONS: [Write; 3] = [Write::Add, Write::Deduct, Write::Hold];

/// The component name of a batch's operation of `operation`: `BatchAdd`, or `AtomicBatchAdd`
/// for an atomic batch's.
pub(crate) fn batch_variant(operation: Write, atomic: bool) -> String {
    let name = operation.name();
    let capitalized = name[..1].to_uppercase() + &name[1..];
    format!("{}Batch{capitalized}", if atomic { "Atomic" } else { "" })
}

/// `POST /credits/batch`'s body from the write bodies. An operation is `op` and that endpoint's
/// body (`BatchAdd` …, one component each, so generators name them); `operations` takes any of
/// them. Two modes narrow it (`oneOf`): not atomic, each operation with its own
/// `idempotency_key`; or atomic, only adds, deducts and holds, without one (`AtomicBatchAdd` …).
fn batch_schemas(components: &mut Components) {
    let variant = |operation: Write, key: Schema| -> Option<Schema> {
        let RefOr::T(Schema::Object(body)) = components.schemas.get(body_schema(operation))? else {
            return None;
        };
        let mut variant = body.clone();
        variant.properties.insert(
            "op".into(),
            string().enum_values(Some([operation.name()])).into(),
        );
        variant
            .properties
            .insert("idempotency_key".into(), key.into());
        variant.required.insert(0, "op".into());
        variant.description = Some(format!(
            "`op: \"{}\"` and the body of `POST {}`.",
            operation.name(),
            operation.path()
        ));
        Some(Schema::Object(variant))
    };
    let mut key = rule_schema(Rule::OperationKey);
    if let Schema::Object(object) = &mut key {
        make_nullable(object);
    }
    let no_key = Schema::Object(ObjectBuilder::new().schema_type(Type::Null).build());
    let mut variants = Vec::new();
    for (operations, atomic, key) in [
        (&Write::ALL[..], false, &key),
        (&ATOMIC_OPERATIONS[..], true, &no_key),
    ] {
        for operation in operations {
            if let Some(schema) = variant(*operation, key.clone()) {
                variants.push((batch_variant(*operation, atomic), schema));
            }
        }
    }
    // One of the variants of a batch of each kind, by reference.
    let one_of = |atomic: bool| -> OneOfBuilder {
        variants
            .iter()
            .filter(|(name, _)| name.starts_with("Atomic") == atomic)
            .fold(OneOfBuilder::new(), |one_of, (name, _)| {
                one_of.item(Ref::from_schema_name(name))
            })
    };
    let any_of = |atomic: bool| -> serde_json::Value {
        serde_json::to_value(Schema::OneOf(one_of(atomic).build())).unwrap_or_default()
    };
    let modes = serde_json::json!([
        { "properties": { "atomic": { "enum": [false, null] } } },
        {
            "required": ["atomic"],
            "properties": { "atomic": { "enum": [true] }, "operations": { "items": any_of(true) } },
        },
    ]);
    let mut request = ObjectBuilder::new()
        .description(Some(format!(
            "Body of `POST /credits/batch`: 1 to {BATCH_OPERATIONS_MAX} operations. Not atomic: \
             each its own command, exactly as if sent alone, applied in order for each user. \
             Atomic: adds, deducts and holds of one user (every operation names the same \
             `user_id`), without their own `idempotency_key`, applied in one transaction or not \
             at all."
        )))
        .property(
            "atomic",
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
                .description(Some("`true`: all or none (default `false`).")),
        )
        .property(
            "operations",
            ArrayBuilder::new()
                .items(one_of(false))
                .min_items(Some(1))
                .max_items(Some(BATCH_OPERATIONS_MAX)),
        )
        .required("operations")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build();
    // utoipa's `Object` has no `oneOf` beside its properties: it is written through its
    // flattened extensions, as `not` is.
    request
        .extensions
        .get_or_insert_with(Default::default)
        .insert("oneOf".into(), modes);
    for (name, schema) in variants {
        components.schemas.insert(name, schema.into());
    }
    // The derived `BatchOperation` (just `op` and `idempotency_key`) is replaced by the variants.
    components.schemas.remove("BatchOperation");
    components
        .schemas
        .insert("BatchRequest".into(), Schema::Object(request).into());
}

fn rule_schema(rule: Rule) -> Schema {
    rule.schema().0
}

/// `not: both given`: both present and neither `null`. utoipa's `Object` has no `not`; its
/// extensions serialize flat into the schema, so the keyword is written there.
fn exclude_both(body: &mut Object, first: &str, second: &str) {
    let present = |property: &str| -> serde_json::Value {
        match body.properties.get(property) {
            Some(RefOr::T(Schema::Object(object))) => match &object.schema_type {
                SchemaType::Array(types) => {
                    let types: Vec<_> = types.iter().filter(|t| **t != Type::Null).collect();
                    serde_json::json!({ "type": types.first() })
                }
                other => serde_json::json!({ "type": other }),
            },
            _ => serde_json::json!({}),
        }
    };
    let not = serde_json::json!({
        "required": [first, second],
        "properties": { first: present(first), second: present(second) },
    });
    body.extensions
        .get_or_insert_with(Default::default)
        .insert("not".into(), not);
    let words = format!("Give `{first}` or `{second}`, not both.");
    body.description = Some(sentences(body.description.take(), &words));
}

/// Replaces a body property's schema with its rule's, keeping its nullability (an optional
/// field may be sent as `null`, which counts as absent) and its description.
fn stamp(schema: &mut RefOr<Schema>, rule: Rule) {
    let (schema_type, description) = match schema {
        RefOr::T(Schema::Object(derived)) => (&derived.schema_type, &mut derived.description),
        RefOr::T(Schema::Array(derived)) => (&derived.schema_type, &mut derived.description),
        _ => return,
    };
    let nullable = matches!(schema_type, SchemaType::Array(types) if types.contains(&Type::Null));
    let description = description.take();
    let (mut stamped, words) = rule.schema();
    match &mut stamped {
        Schema::Object(object) => {
            if nullable {
                make_nullable(object);
            }
            object.description = Some(sentences(description, &words));
        }
        Schema::Array(array) => {
            if nullable {
                array.schema_type = SchemaType::from_iter([Type::Array, Type::Null]);
            }
            array.description = Some(sentences(description, &words));
        }
        _ => {}
    }
    *schema = stamped.into();
}

fn make_nullable(object: &mut Object) {
    object.schema_type = match std::mem::take(&mut object.schema_type) {
        SchemaType::Type(only) => SchemaType::from_iter([only, Type::Null]),
        other => other,
    };
}

/// A description followed by the rule in words.
fn sentences(description: Option<String>, words: &str) -> String {
    match description.map(|text| text.trim().to_string()) {
        Some(text) if !text.is_empty() && !words.is_empty() => format!("{text} {words}"),
        Some(text) if !text.is_empty() => text,
        _ => words.to_string(),
    }
}
