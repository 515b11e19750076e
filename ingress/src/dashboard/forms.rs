//! What a ledger write form carries and what it leaves behind: its amount and description
//! (checked, with the message a notice shows when wrong), its idempotency key, and the notice
//! the write's answer leaves on the next page.

use std::collections::HashMap;

use serde_json::Value;
use tally_common::credit_type::CreditType;
use tally_common::limits::{AMOUNT_MAX, AMOUNT_MIN, DESCRIPTION_CHARS_MAX};

use super::render::credits;
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
pub fn amount(form: &HashMap<String, String>, required: bool) -> Result<Option<i64>, String> {
    match form
        .get("amount")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
    {
        None if required => Err("amount: is required".into()),
        None => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(amount) if (AMOUNT_MIN..=AMOUNT_MAX).contains(&amount) => Ok(Some(amount)),
            _ => Err(format!(
                "amount: must be a whole number from {AMOUNT_MIN} to {AMOUNT_MAX}"
            )),
        },
    }
}

/// The form's `description`, trimmed; `None` when empty.
pub fn description(form: &HashMap<String, String>) -> Result<Option<String>, String> {
    let text = form
        .get("description")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    match text {
        Some(text) if text.chars().count() > DESCRIPTION_CHARS_MAX => {
            Err("description: is longer than 1,000 characters".into())
        }
        text => Ok(text),
    }
}

/// The notice a write submitted for the dashboard leaves on the next page.
pub fn outcome_message(submitted: Result<Answer, ApiError>) -> Result<String, String> {
    match submitted.map_err(|error| error.to_string())? {
        Answer::Finished(outcome) if outcome.http_status == 200 => {
            let balance = credits(outcome.body["balance_after"].as_i64().unwrap_or_default());
            Ok(match outcome.body["credit_type"].as_str() {
                Some(credit_type) if credit_type != CreditType::DEFAULT => {
                    format!("Done: the {credit_type} balance is now {balance}.")
                }
                _ => format!("Done: the balance is now {balance}."),
            })
        }
        Answer::Finished(outcome) => Err(outcome.body["message"]
            .as_str()
            .unwrap_or("the write was not accepted")
            .to_string()),
        Answer::Accepted { .. } => Ok("Accepted: it will be applied in a moment.".to_string()),
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
    fn the_notice_names_the_balance_written_unless_it_is_the_default_one() {
        let applied = |body: Value| {
            outcome_message(Ok(Answer::Finished(tally_common::command::Outcome {
                command_id: uuid::Uuid::nil(),
                status: tally_common::command::Status::Applied,
                http_status: 200,
                body,
            })))
        };
        assert_eq!(
            applied(serde_json::json!({ "balance_after": 1500, "credit_type": "image" })),
            Ok("Done: the image balance is now 1\u{202f}500.".into())
        );
        assert_eq!(
            applied(serde_json::json!({ "balance_after": 5, "credit_type": "credits" })),
            Ok("Done: the balance is now 5.".into())
        );
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
