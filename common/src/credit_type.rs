//! Credit types: the kinds of balance one user may hold ("credits", "image", "chat" …). Every
//! balance, lot, hold and entry belongs to one type; a request that names none means
//! [`CreditType::DEFAULT`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::CREDIT_TYPE_CHARS_MAX;

/// A validated credit type name: 1 to [`CREDIT_TYPE_CHARS_MAX`] of `a-z`, `0-9`, `_` and `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CreditType(String);

/// Why a text is not a credit type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to {CREDIT_TYPE_CHARS_MAX} characters of a-z, 0-9, _ and -")]
pub struct InvalidCreditType;

impl CreditType {
    /// The type of every request that names none, and of all credits granted before types
    /// existed.
    pub const DEFAULT: &'static str = "credits";

    pub fn parse(text: &str) -> Result<Self, InvalidCreditType> {
        let valid = (1..=CREDIT_TYPE_CHARS_MAX).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidCreditType)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for CreditType {
    fn default() -> Self {
        Self(Self::DEFAULT.to_string())
    }
}

impl fmt::Display for CreditType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl TryFrom<String> for CreditType {
    type Error = InvalidCreditType;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<CreditType> for String {
    fn from(credit_type: CreditType) -> Self {
        credit_type.0
    }
}

impl AsRef<str> for CreditType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_lowercase_letters_digits_underscores_and_dashes_are_types() {
        for name in ["credits", "image", "gpt-4o_tokens", "a", &"x".repeat(64)] {
            assert_eq!(CreditType::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for name in ["", "Image", "chat credits", "é", "a.b", &"x".repeat(65)] {
            assert_eq!(CreditType::parse(name), Err(InvalidCreditType), "{name:?}");
        }
    }

    #[test]
    fn the_default_is_credits_and_is_left_out_of_the_wire_form() {
        assert!(CreditType::default().is_default());
        assert_eq!(CreditType::default().as_str(), "credits");
        let decoded: CreditType = serde_json::from_str("\"image\"").unwrap();
        assert_eq!(decoded.as_str(), "image");
        assert!(serde_json::from_str::<CreditType>("\"Bad\"").is_err());
    }
}
