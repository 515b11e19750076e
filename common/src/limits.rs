//! Every limit of the API in one place, named and documented.

/// Smallest credit amount a write accepts.
pub const AMOUNT_MIN: i64 = 1;
/// Largest credit amount a single write accepts (10^12).
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// Longest `user_id`, in bytes.
pub const USER_ID_BYTES_MAX: usize = 255;
/// Longest `credit_type`, in characters (`a-z`, `0-9`, `_`, `-`).
pub const CREDIT_TYPE_CHARS_MAX: usize = 64;
/// Longest `description`, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 1_000;
/// Most keys a `metadata` object may have (Stripe's rule).
pub const METADATA_KEYS_MAX: usize = 50;
/// Longest `Idempotency-Key` header, in characters.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest lifetime of expiring credits granted by an add (`expires_in_seconds`): ten years.
pub const CREDIT_LIFETIME_SECONDS_MAX: i64 = 10 * 365 * 24 * 3600;
/// Default and longest lifetime of a hold, in seconds.
pub const HOLD_SECONDS_DEFAULT: i64 = 900;
pub const HOLD_SECONDS_MAX: i64 = 86_400;
/// Most operations in one `POST /credits/batch`.
pub const BATCH_OPERATIONS_MAX: usize = 1_000;
/// Largest body of `POST /credits/batch`, in bytes.
pub const BATCH_BODY_BYTES_MAX: usize = 1024 * 1024;
/// History and list pages: default and largest page size.
pub const PAGE_LIMIT_DEFAULT: i64 = 50;
pub const PAGE_LIMIT_MAX: i64 = 200;
/// Number of partitions of the command stream. Fixed for the life of a stream: changing it
/// would move users between partitions and break per-user order.
pub const PARTITIONS_DEFAULT: u32 = 64;
/// Most outbound event endpoints an app may have (deleted ones do not count).
pub const WEBHOOK_ENDPOINTS_MAX: i64 = 16;
/// Most thresholds in one list of balance alerts.
pub const ALERT_THRESHOLDS_MAX: usize = 10;
