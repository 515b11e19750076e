//! Keyset paging, shared by every list the API serves: the `limit` parameter, the page cut
//! from a query's `limit + 1` rows, and the opaque cursor that points past it.

use std::collections::HashMap;

use base64::Engine;
use tally_common::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PAGE_LIMIT_MIN};

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
