//! How a dashboard page becomes a response: a template rendered with the security headers,
//! redirects that carry a notice to the next page, and the formatting of credits and times
//! the templates use ([`filters`]).

use std::collections::HashMap;

use askama::Template;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::notice::Said;

/// A rendered page with the dashboard's headers: HTML, nothing from another origin, never
/// framed or cached.
pub fn html(status: StatusCode, page: &impl Template) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "dashboard page did not render");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response();
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// 303 to `to`.
pub fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// 303 to `path` with what a write said, as a notice code ([`super::notice`]).
pub fn redirect_with(path: &str, said: Said) -> Response {
    redirect(&format!("{path}?{}", said.query()))
}

/// Percent-encodes a path segment or query value.
pub fn url(text: &str) -> String {
    askama::filters::urlencode_strict(text)
        .map(|encoded| encoded.to_string())
        .unwrap_or_default()
}

/// What the previous write said, shown at the top of the page it redirected to.
pub struct Notice {
    /// A success rather than a failure.
    pub ok: bool,
    pub message: String,
}

impl Notice {
    /// The notice a page's query carries (`notice`, `balance`), if it names a known code.
    pub fn from_query(query: &HashMap<String, String>) -> Option<Self> {
        Said::from_query(query.get("notice"), query.get("balance")).map(|said| Self {
            ok: said.ok(),
            message: said.message(),
        })
    }
}

/// Thousands separated by a narrow no-break space, sign kept (`−` for negatives).
pub fn credits(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if amount < 0 {
        format!("−{out}")
    } else {
        out
    }
}

/// The templates' formatting filters: `{{ amount|credits }}`, `{{ time|when }}`.
pub mod filters {
    use chrono::{DateTime, Utc};

    /// [`super::credits`].
    #[askama::filter_fn]
    pub fn credits(amount: &i64, _: &dyn askama::Values) -> askama::Result<String> {
        let text = super::credits(*amount);
        Ok(text)
    }

    /// [`super::credits`] with a `+` before what was added.
    #[askama::filter_fn]
    pub fn signed_credits(amount: &i64, _: &dyn askama::Values) -> askama::Result<String> {
        let text = super::credits(*amount);
        Ok(if *amount > 0 {
            format!("+{text}")
        } else {
            text
        })
    }

    /// `2024-05-06 07:08:09` (UTC, to the second).
    #[askama::filter_fn]
    pub fn when(time: &DateTime<Utc>, _: &dyn askama::Values) -> askama::Result<String> {
        let text = time.format("%Y-%m-%d %H:%M:%S").to_string();
        Ok(text)
    }

    /// `2024-05-06 07:08` (UTC, to the minute).
    #[askama::filter_fn]
    pub fn minute(time: &DateTime<Utc>, _: &dyn askama::Values) -> askama::Result<String> {
        let text = time.format("%Y-%m-%d %H:%M").to_string();
        Ok(text)
    }

    /// `2024-05-06` (the UTC day).
    #[askama::filter_fn]
    pub fn day(time: &DateTime<Utc>, _: &dyn askama::Values) -> askama::Result<String> {
        let text = time.format("%Y-%m-%d").to_string();
        Ok(text)
    }

    /// The time as the JSON API writes it.
    #[askama::filter_fn]
    pub fn rfc3339(time: &DateTime<Utc>, _: &dyn askama::Values) -> askama::Result<String> {
        let text = crate::responses::rfc3339(*time);
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::notice::Code;
    use tally_common::error_code::ErrorCode;

    #[test]
    fn credits_group_thousands_with_a_narrow_space_and_keep_the_sign() {
        assert_eq!(credits(0), "0");
        assert_eq!(credits(999), "999");
        assert_eq!(credits(1_000), "1\u{202f}000");
        assert_eq!(credits(-2_501_350), "−2\u{202f}501\u{202f}350");
    }

    #[test]
    fn a_notice_is_read_from_its_code_and_unknown_codes_say_nothing() {
        let query = HashMap::from([
            ("notice".to_string(), "done".to_string()),
            ("balance".to_string(), "1000".to_string()),
        ]);
        let notice = Notice::from_query(&query).expect("a notice");
        assert!(notice.ok);
        assert_eq!(notice.message, "Done: the balance is now 1\u{202f}000.");
        let forged = HashMap::from([("notice".to_string(), "Call us now".to_string())]);
        assert!(Notice::from_query(&forged).is_none());
        assert!(Notice::from_query(&HashMap::new()).is_none());
    }

    #[test]
    fn a_redirect_carries_a_code_not_text() {
        let response = redirect_with(
            "/dashboard/x",
            Said::with_balance(Code::Refused(ErrorCode::InsufficientCredits), Some(40)),
        );
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()[header::LOCATION],
            "/dashboard/x?notice=insufficient_credits&balance=40"
        );
    }
}
