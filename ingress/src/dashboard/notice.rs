//! What a write says on the page its redirect leads to. The redirect carries a code from a fixed
//! list (`?notice=done&balance=400`), never text: a link made by someone else can only make a
//! page show one of the dashboard's own messages, not words of its choosing.

use tally_common::apps::{APP_NAME_CHARS_MAX, WEBHOOK_SECRET_CHARS_MAX};
use tally_common::credit_type::InvalidCreditType;
use tally_common::error_code::ErrorCode;
use tally_common::limits::{AMOUNT_MAX, AMOUNT_MIN, DESCRIPTION_CHARS_MAX};
use tally_common::webhook::Provider;

use super::render::credits;
use crate::error::ApiError;

/// A notice: what happened, and for some codes the balance it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Said {
    pub code: Code,
    /// The balance after a write, or what can be spent when a write is refused for want of it.
    pub balance: Option<i64>,
}

impl Said {
    pub fn new(code: Code) -> Self {
        Self {
            code,
            balance: None,
        }
    }

    pub fn with_balance(code: Code, balance: Option<i64>) -> Self {
        Self { code, balance }
    }

    /// The query string that carries it.
    pub fn query(&self) -> String {
        match self.balance {
            Some(balance) => format!("notice={}&balance={balance}", self.code.as_str()),
            None => format!("notice={}", self.code.as_str()),
        }
    }

    /// A success rather than a failure.
    pub fn ok(&self) -> bool {
        matches!(
            self.code,
            Code::Done | Code::Accepted | Code::KeyRevoked | Code::SecretAdded(_)
        )
    }

    /// What the page says.
    pub fn message(&self) -> String {
        let balance = self.balance.map(credits);
        match (self.code, balance) {
            (Code::Done, Some(balance)) => format!("Done: the balance is now {balance}."),
            (Code::Done, None) => "Done.".into(),
            (Code::Accepted, _) => "Accepted: it will be applied in a moment.".into(),
            (Code::KeyRevoked, _) => "Key revoked: it stops working within 5 seconds.".into(),
            (Code::SecretAdded(provider), _) => {
                format!("The {provider} secret was added; it is accepted within 5 seconds.")
            }
            (Code::AmountRequired, _) => "amount: is required".into(),
            (Code::AmountInvalid, _) => {
                format!("amount: must be a whole number from {AMOUNT_MIN} to {AMOUNT_MAX}")
            }
            (Code::DescriptionTooLong, _) => {
                format!("description: is longer than {DESCRIPTION_CHARS_MAX} characters")
            }
            (Code::ActionMissing, _) => "action: choose add or deduct".into(),
            (Code::CreditTypeInvalid, _) => format!("credit_type: {InvalidCreditType}"),
            (Code::ConfirmMissing, _) => "confirm: tick the box to refund".into(),
            (Code::NameInvalid, _) => format!("name: must be 1 to {APP_NAME_CHARS_MAX} characters"),
            (Code::ProviderInvalid, _) => "provider: must be stripe or polar".into(),
            (Code::SecretInvalid, _) => {
                format!("secret: must be 1 to {WEBHOOK_SECRET_CHARS_MAX} characters")
            }
            (Code::Refused(code), balance) => refused(code, balance),
        }
    }

    /// The notice a page's query carries, if it names a known code.
    pub fn from_query(notice: Option<&String>, balance: Option<&String>) -> Option<Self> {
        let code = Code::parse(notice?)?;
        let balance = balance.and_then(|balance| balance.parse().ok());
        Some(Self { code, balance })
    }
}

/// Why a write was refused, by its error code.
fn refused(code: ErrorCode, balance: Option<String>) -> String {
    match (code, balance) {
        (ErrorCode::InsufficientCredits, Some(balance)) => {
            format!("Not enough credits: {balance} can be spent; nothing was changed.")
        }
        (ErrorCode::InsufficientCredits, None) => "Not enough credits; nothing was changed.".into(),
        (ErrorCode::AlreadyRefunded, _) => "Nothing is left to refund on this entry.".into(),
        (ErrorCode::NotRefundable, _) => "This kind of entry cannot be refunded.".into(),
        (ErrorCode::BalanceOverflow, _) => {
            "The balance would pass the largest there can be; nothing was changed.".into()
        }
        (ErrorCode::HoldNotActive, _) => "The hold is no longer active.".into(),
        (ErrorCode::IdempotencyConflict, _) => {
            "This form was already sent with other values; reload the page.".into()
        }
        (ErrorCode::IdempotencyInProgress, _) => {
            "This form is still being applied; reload the page in a moment.".into()
        }
        (ErrorCode::NotFound, _) => "Not found; nothing was changed.".into(),
        (ErrorCode::RateLimited, _) => {
            "Too many requests; nothing was changed. Try again in a moment.".into()
        }
        (ErrorCode::Unavailable, _) => {
            "The service is unreachable; nothing was changed. Try again.".into()
        }
        (ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge, _) => {
            "The request was refused as invalid; nothing was changed.".into()
        }
        _ => "The write failed; look at the history before trying again.".into(),
    }
}

/// Every notice there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Done,
    Accepted,
    KeyRevoked,
    SecretAdded(Provider),
    AmountRequired,
    AmountInvalid,
    DescriptionTooLong,
    ActionMissing,
    CreditTypeInvalid,
    ConfirmMissing,
    NameInvalid,
    ProviderInvalid,
    SecretInvalid,
    /// The write's answer was this error.
    Refused(ErrorCode),
}

/// The codes that are not an error code, as their query spelling.
const FIXED: [(&str, Code); 14] = [
    ("done", Code::Done),
    ("accepted", Code::Accepted),
    ("key_revoked", Code::KeyRevoked),
    ("stripe_secret_added", Code::SecretAdded(Provider::Stripe)),
    ("polar_secret_added", Code::SecretAdded(Provider::Polar)),
    ("amount_required", Code::AmountRequired),
    ("amount_invalid", Code::AmountInvalid),
    ("description_too_long", Code::DescriptionTooLong),
    ("action_missing", Code::ActionMissing),
    ("credit_type_invalid", Code::CreditTypeInvalid),
    ("confirm_missing", Code::ConfirmMissing),
    ("name_invalid", Code::NameInvalid),
    ("provider_invalid", Code::ProviderInvalid),
    ("secret_invalid", Code::SecretInvalid),
];

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused(code) => code.as_str(),
            fixed => FIXED
                .iter()
                .find(|(_, code)| *code == fixed)
                .map(|(name, _)| *name)
                .expect("every fixed code is listed"),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        FIXED
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, code)| *code)
            .or_else(|| {
                serde_json::from_value::<ErrorCode>(serde_json::Value::String(text.into()))
                    .ok()
                    .map(Self::Refused)
            })
    }

    /// The code of a form the admin checks refused, by the field they name.
    pub fn for_invalid(error: &ApiError) -> Self {
        match error {
            ApiError::InvalidRequest {
                field: Some(field), ..
            } => match field.as_str() {
                "name" => Self::NameInvalid,
                "provider" => Self::ProviderInvalid,
                "secret" => Self::SecretInvalid,
                _ => Self::Refused(ErrorCode::InvalidRequest),
            },
            other => Self::Refused(other.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_its_query() {
        let codes = FIXED
            .iter()
            .map(|(_, code)| *code)
            .chain([ErrorCode::InsufficientCredits, ErrorCode::Internal].map(Code::Refused));
        for code in codes {
            let said = Said::with_balance(code, Some(12));
            let query = said.query();
            let mut fields = query
                .split('&')
                .map(|field| field.split_once('=').unwrap().1);
            let (notice, balance) = (
                fields.next().map(String::from),
                fields.next().map(String::from),
            );
            assert_eq!(
                Said::from_query(notice.as_ref(), balance.as_ref()),
                Some(said)
            );
        }
    }

    #[test]
    fn text_in_a_link_is_never_shown() {
        let text = "Your account is locked: call +1 555 0100".to_string();
        assert_eq!(Said::from_query(Some(&text), None), None);
        let said = Said::from_query(Some(&"done".to_string()), Some(&text)).unwrap();
        assert_eq!(said.message(), "Done.");
    }

    #[test]
    fn messages_say_what_happened() {
        assert_eq!(
            Said::with_balance(Code::Done, Some(400)).message(),
            "Done: the balance is now 400."
        );
        assert!(Said::new(Code::Refused(ErrorCode::Unavailable))
            .message()
            .contains("nothing was changed"));
        assert!(!Said::new(Code::Refused(ErrorCode::Unavailable)).ok());
        assert!(Said::new(Code::SecretAdded(Provider::Polar)).ok());
    }
}
