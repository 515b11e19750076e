//! Every limit of the API in one place, named and documented. The validator checks requests
//! against these constants and the OpenAPI document states them from the same constants
//! (`ingress/src/openapi/constraints.rs`), so the two cannot disagree.

/// Smallest credit amount a write accepts.
pub const AMOUNT_MIN: i64 = 1;
/// Largest credit amount a single write accepts (10^12).
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// Shortest and longest `user_id`, in bytes of UTF-8.
pub const USER_ID_BYTES_MIN: usize = 1;
pub const USER_ID_BYTES_MAX: usize = 255;
/// Longest `credit_type`, in characters (`a-z`, `0-9`, `_`, `-`).
pub const CREDIT_TYPE_CHARS_MAX: usize = 64;
/// Longest `description`, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 1_000;
/// Most keys a `metadata` object may have (Stripe's rule).
pub const METADATA_KEYS_MAX: usize = 50;
/// Shortest and longest metadata key, and longest metadata value, in characters (Stripe's limits).
pub const METADATA_KEY_CHARS_MIN: usize = 1;
pub const METADATA_KEY_CHARS_MAX: usize = 40;
pub const METADATA_VALUE_CHARS_MAX: usize = 500;
/// Shortest and longest `Idempotency-Key` header, in characters.
pub const IDEMPOTENCY_KEY_CHARS_MIN: usize = 1;
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Most operations in one `POST /credits/batch`.
pub const BATCH_OPERATIONS_MAX: usize = 1_000;
/// Largest body of `POST /credits/batch`, in bytes.
pub const BATCH_BODY_BYTES_MAX: usize = 1024 * 1024;
/// History and list pages: smallest, default and largest page size.
pub const PAGE_LIMIT_MIN: i64 = 1;
pub const PAGE_LIMIT_DEFAULT: i64 = 50;
pub const PAGE_LIMIT_MAX: i64 = 200;
/// A hold's lifetime (`expires_in_seconds` of `POST /credits/hold`): shortest, default and
/// longest, in seconds.
pub const HOLD_SECONDS_MIN: i64 = 1;
pub const HOLD_SECONDS_DEFAULT: i64 = 900;
pub const HOLD_SECONDS_MAX: i64 = 86_400;
/// Lifetime of expiring credits (`expires_in_seconds` of `POST /credits/add`): shortest and
/// longest (ten years), in seconds.
pub const CREDIT_LIFETIME_SECONDS_MIN: i64 = 1;
pub const CREDIT_LIFETIME_SECONDS_MAX: i64 = 10 * 365 * 24 * 3600;
/// Number of partitions of the command stream. Fixed for the life of a stream: changing it
/// would move users between partitions and break per-user order.
pub const PARTITIONS_DEFAULT: u32 = 64;
/// Most outbound event endpoints an app may have (deleted ones do not count).
pub const WEBHOOK_ENDPOINTS_MAX: i64 = 16;
/// Most thresholds in one list of balance alerts.
pub const ALERT_THRESHOLDS_MAX: usize = 10;

/// Longest product id (a Stripe Price id, a Polar Product id), in characters.
pub const PRODUCT_ID_CHARS_MAX: usize = 255;
/// Longest lifetime of credits bought through a payment (a product's or the metadata's
/// `expires_in_days`), in days.
pub const PLAN_EXPIRES_IN_DAYS_MAX: i64 = 3650;
/// Longest Stripe object id Tally stores (`cus_…`, `pm_…`), in characters.
pub const STRIPE_ID_CHARS_MAX: usize = 255;
/// Length of a currency code (ISO 4217, lowercase as Stripe writes it).
pub const CURRENCY_CHARS: usize = 3;
/// Auto top-up charges per user and credit type per calendar month: the default and the most.
pub const TOPUPS_PER_MONTH_DEFAULT: i64 = 10;
pub const TOPUPS_PER_MONTH_MAX: i64 = 1_000;
/// Longest Stripe secret key, in characters.
pub const STRIPE_KEY_CHARS_MAX: usize = 255;
