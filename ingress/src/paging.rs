//! Keyset paging, shared by every list the API serves: the `limit` parameter, the page cut
//! from a query's `limit + 1` rows, and the opaque cursor that points past it.

use std::collections::HashMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use tally_common::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PAGE_LIMIT_MIN};
use uuid::Uuid;

use crate::error::ApiError;

/// Page size from `limit` (1..=200, default 50).
pub fn page_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match text.parse::<i64>() {
            Ok(limit) if (PAGE_LIMIT_MIN..=PAGE_LIMIT_MAX).contains(&limit) => Ok(limit),
            _ => Err(ApiError::field(
                "limit",
                format!("must be an integer from {PAGE_LIMIT_MIN} to {PAGE_LIMIT_MAX}"),
            )),
        },
    }
}

/// Splits the `limit + 1` rows of a keyset query into the page and whether more follow.
pub fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, more)
}

/// Opaque cursors: a versioned tag and a position, base64url-encoded.
pub fn encode_cursor(kind: &str, position: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// The position inside a cursor of `kind`; 400 naming `cursor` for anything this API did not issue.
pub fn decode_cursor(kind: &str, cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    if text.contains('\0') {
        return Err(bad());
    }
    text.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::to_string)
        .ok_or_else(bad)
}

/// The cursor after a row of a list ordered by `(created_at, id)`, newest first.
pub fn encode_time_cursor(kind: &str, created_at: DateTime<Utc>, id: Uuid) -> String {
    encode_cursor(kind, &format!("{}|{id}", created_at.timestamp_micros()))
}

/// The `cursor` query parameter of a list ordered by `(created_at, id)`: the position to
/// continue before, or `None` for the first page.
pub fn time_cursor(
    kind: &str,
    query: &HashMap<String, String>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    let Some(cursor) = query.get("cursor") else {
        return Ok(None);
    };
    let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
    let position = decode_cursor(kind, cursor)?;
    let (micros, id) = position.split_once('|').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad())?)))
}
