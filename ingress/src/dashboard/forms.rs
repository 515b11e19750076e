//! What a ledger write form carries and what it leaves behind: its amount and description
//! (checked, with the notice shown when wrong), its idempotency key, and the notice the write's
//! answer leaves on the next page.

use std::collections::HashMap;

use serde_json::Value;
use tally_common::error_code::ErrorCode;
use tally_common::limits::{AMOUNT_MAX, AMOUNT_MIN, DESCRIPTION_CHARS_MAX};

use super::notice::{Code, Said};
use crate::error::ApiError;
use crate::submit::Answer;
use crate::validate;

/// The idempotency key a write form carries (a UUID drawn when the page was rendered), so a
/// double click or a resent form applies once; with the hash of what the form says.
pub fn idempotency(form: &HashMap<String, String>, path: &str) -> Option<(String, String)> {
    let key = uuid::Uuid::parse_str(form.get("idempotency_key")?).ok()?;
    let fields: serde_json::Map<String, Value> = form
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "csrf" | "idempotency_key"))
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    Some((
        format!("dashboard:{key}"),
        validate::request_hash("POST", path, &fields),
    ))
}

/// The form's `amount`: a whole number of credits within the API's limits; `None` when empty
/// and not `required`.
pub fn amount(form: &HashMap<String, String>, required: bool) -> Result<Option<i64>, Code> {
    match form
        .get("amount")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
    {
        None if required => Err(Code::AmountRequired),
        None => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(amount) if (AMOUNT_MIN..=AMOUNT_MAX).contains(&amount) => Ok(Some(amount)),
            _ => Err(Code::AmountInvalid),
        },
    }
}

/// The form's `description`, trimmed; `None` when empty.
pub fn description(form: &HashMap<String, String>) -> Result<Option<String>, Code> {
    let text = form
        .get("description")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    match text {
        Some(text) if text.chars().count() > DESCRIPTION_CHARS_MAX => Err(Code::DescriptionTooLong),
        text => Ok(text),
    }
}

/// The notice a write submitted for the dashboard leaves on the next page.
pub fn outcome_notice(submitted: Result<Answer, ApiError>) -> Said {
    match submitted {
        Ok(Answer::Finished(outcome)) if outcome.http_status == 200 => {
            Said::with_balance(Code::Done, outcome.body["balance_after"].as_i64())
        }
        Ok(Answer::Finished(outcome)) => {
            let code = outcome.body["error"]
                .as_str()
                .and_then(Code::parse)
                .filter(|code| matches!(code, Code::Refused(_)))
                .unwrap_or(Code::Refused(ErrorCode::Internal));
            let spendable = outcome.body["available"]
                .as_i64()
                .or(outcome.body["balance"].as_i64());
            Said::with_balance(code, spendable)
        }
        Ok(Answer::Accepted { .. }) => Said::new(Code::Accepted),
        Err(error) => Said::new(Code::Refused(error.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn amount_is_a_whole_number_within_the_api_limits() {
        assert_eq!(amount(&form(&[("amount", " 25 ")]), true), Ok(Some(25)));
        assert_eq!(amount(&form(&[("amount", "")]), false), Ok(None));
        assert!(amount(&form(&[]), true).is_err());
        assert!(amount(&form(&[("amount", "0")]), true).is_err());
        assert!(amount(&form(&[("amount", "1.5")]), true).is_err());
    }

    #[test]
    fn description_is_trimmed_and_empty_means_none() {
        assert_eq!(
            description(&form(&[("description", "  why ")])),
            Ok(Some("why".into()))
        );
        assert_eq!(description(&form(&[("description", "   ")])), Ok(None));
        let long = "a".repeat(DESCRIPTION_CHARS_MAX + 1);
        assert!(description(&form(&[("description", &long)])).is_err());
    }

    #[test]
    fn the_idempotency_key_ignores_the_csrf_token_but_not_the_fields() {
        let key = "11111111-1111-4111-8111-111111111111";
        let first = form(&[("idempotency_key", key), ("csrf", "a"), ("amount", "5")]);
        let second = form(&[("idempotency_key", key), ("csrf", "b"), ("amount", "5")]);
        let other = form(&[("idempotency_key", key), ("csrf", "a"), ("amount", "6")]);
        let path = "/dashboard/apps/x/users/y/adjust";
        assert_eq!(idempotency(&first, path), idempotency(&second, path));
        assert_ne!(idempotency(&first, path), idempotency(&other, path));
        assert_eq!(
            idempotency(&first, path).map(|(key, _)| key),
            Some(format!("dashboard:{key}"))
        );
        assert_eq!(idempotency(&form(&[("amount", "5")]), path), None);
    }
}
