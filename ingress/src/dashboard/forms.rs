//! What a ledger write form carries and what it leaves behind: its amount and description
//! (checked, with the notice shown when wrong), its idempotency key, and the notice the write's
//! answer leaves on the next page.

use std::collections::HashMap;

use serde_json::Value;
use tally_common::credit_type::CreditType;
use tally_common::error_code::ErrorCode;
use tally_common::events::{EventType, SUBSCRIBE_ALL};
use tally_common::limits::{AMOUNT_MAX, AMOUNT_MIN, DESCRIPTION_CHARS_MAX};

use super::notice::{Code, Said};
use crate::error::ApiError;
use crate::routes::{alerts, endpoints};
use crate::submit::Answer;
use crate::validate;

/// What an endpoint form's checkbox of an event type is named: this, then the type's name.
pub const EVENT_FIELD_PREFIX: &str = "event.";

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

/// The form's `credit_type`, trimmed; the default type when empty.
pub fn credit_type(form: &HashMap<String, String>) -> Result<CreditType, Code> {
    match form.get("credit_type").map(|text| text.trim()) {
        None | Some("") => Ok(CreditType::default()),
        Some(text) => CreditType::parse(text).map_err(|_| Code::CreditTypeInvalid),
    }
}

/// The event types ticked on an endpoint form (one checkbox per type, named
/// [`EVENT_FIELD_PREFIX`] and the type), as the API checks them ([`endpoints::subscriptions`]);
/// none ticked: every type.
pub fn subscriptions(form: &HashMap<String, String>) -> Result<Vec<String>, Code> {
    let mut ticked: Vec<Value> = form
        .keys()
        .filter_map(|name| name.strip_prefix(EVENT_FIELD_PREFIX))
        .map(|event| Value::String(event.to_string()))
        .collect();
    if ticked.is_empty() {
        ticked.push(Value::String(SUBSCRIBE_ALL.into()));
    }
    // In the order the page lists them, whatever order the form's fields came in.
    ticked.sort_by_key(|event| {
        EventType::ALL
            .iter()
            .position(|known| Some(known.as_str()) == event.as_str())
    });
    endpoints::subscriptions(ticked).map_err(|error| Code::for_invalid(&error))
}

/// The form's `thresholds`: whole numbers separated by commas or spaces, as the API checks
/// them ([`alerts::thresholds`]); empty: none.
pub fn thresholds(form: &HashMap<String, String>) -> Result<Vec<i64>, Code> {
    let text = form
        .get("thresholds")
        .map(String::as_str)
        .unwrap_or_default();
    let items = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<i64>()
                .map(Value::from)
                .map_err(|_| Code::ThresholdsInvalid)
        })
        .collect::<Result<Vec<Value>, Code>>()?;
    alerts::thresholds(items).map_err(|error| Code::for_invalid(&error))
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
    fn ticked_event_types_are_checked_like_the_api_and_none_means_every_type() {
        let none = form(&[("url", "https://example.com")]);
        assert_eq!(subscriptions(&none), Ok(vec!["*".to_string()]));
        let two = form(&[("event.balance.low", "on"), ("event.credits.added", "on")]);
        assert_eq!(
            subscriptions(&two),
            Ok(vec!["credits.added".to_string(), "balance.low".to_string()])
        );
        let forged = form(&[("event.balance.high", "on")]);
        assert_eq!(subscriptions(&forged), Err(Code::EventsInvalid));
    }

    #[test]
    fn thresholds_are_whole_numbers_separated_by_commas_or_spaces() {
        let text = |value: &str| thresholds(&form(&[("thresholds", value)]));
        assert_eq!(text("100, 1000 5"), Ok(vec![1000, 100, 5]));
        assert_eq!(text(" "), Ok(vec![]));
        assert_eq!(thresholds(&form(&[])), Ok(vec![]));
        for refused in ["ten", "0", "1.5", "1,2,3,4,5,6,7,8,9,10,11"] {
            assert_eq!(text(refused), Err(Code::ThresholdsInvalid), "{refused}");
        }
    }

    #[test]
    fn credit_type_defaults_when_empty_and_is_checked_otherwise() {
        assert_eq!(credit_type(&form(&[])), Ok(CreditType::default()));
        assert_eq!(
            credit_type(&form(&[("credit_type", " gpu_minutes ")])).map(|t| t.as_str().to_string()),
            Ok("gpu_minutes".to_string())
        );
        assert_eq!(
            credit_type(&form(&[("credit_type", "No Spaces")])),
            Err(Code::CreditTypeInvalid)
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
