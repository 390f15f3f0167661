//! Text value types: SKUs, item names, card tokens and free-text reasons.
//!
//! Each parses once, at the edge, and can then be trusted. None of them admits control
//! characters: a NUL in particular is accepted by PostgreSQL's `json` type on write but
//! breaks `->>` and casts later, so it must never reach an event.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a piece of text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} must be at most {max} characters long")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} must not contain control characters such as NUL or newline")]
    ControlCharacter { what: &'static str },
    #[error("{what} may contain only {allowed}")]
    Forbidden {
        what: &'static str,
        allowed: &'static str,
    },
}

fn check_length(text: &str, what: &'static str, max: usize) -> Result<(), TextError> {
    if text.is_empty() {
        return Err(TextError::Empty { what });
    }
    if text.chars().count() > max {
        return Err(TextError::TooLong { what, max });
    }
    Ok(())
}

fn check_no_control(text: &str, what: &'static str) -> Result<(), TextError> {
    if text.chars().any(char::is_control) {
        return Err(TextError::ControlCharacter { what });
    }
    Ok(())
}

/// A stock keeping unit: the id of an inventory item.
///
/// 1 to 64 characters: ASCII letters, digits, `-`, `_` and `.`, starting with a letter or a
/// digit. Case-sensitive and never normalised, because it is the aggregate id as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        const WHAT: &str = "sku";
        check_length(&text, WHAT, Self::MAX_LEN)?;
        check_no_control(&text, WHAT)?;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let starts_well = text.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !starts_well || !text.chars().all(allowed) {
            return Err(TextError::Forbidden {
                what: WHAT,
                allowed: "ASCII letters, digits, '-', '_' and '.', starting with a letter or digit",
            });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = TextError;
    fn try_from(text: String) -> Result<Self, TextError> {
        Self::parse(text)
    }
}

impl From<Sku> for String {
    fn from(sku: Sku) -> String {
        sku.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Human-readable free text (an item name, a decline reason): 1 to `MAX` characters after
/// trimming, no control characters.
macro_rules! free_text {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            /// Trims surrounding whitespace, then checks length and characters.
            pub fn parse(text: impl AsRef<str>) -> Result<Self, TextError> {
                let text = text.as_ref().trim();
                check_length(text, $what, Self::MAX_LEN)?;
                check_no_control(text, $what)?;
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TextError;
            fn try_from(text: String) -> Result<Self, TextError> {
                Self::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

free_text!(
    /// The display name of an inventory item.
    ItemName,
    "name",
    200
);
free_text!(
    /// Why a payment provider declined a payment, as it told us.
    DeclineReason,
    "decline reason",
    200
);

/// The payment gateway's reference to an authorization: opaque, 1 to 128 visible ASCII
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthorizationId(String);

impl AuthorizationId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        const WHAT: &str = "authorization id";
        check_length(&text, WHAT, Self::MAX_LEN)?;
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TextError::Forbidden {
                what: WHAT,
                allowed: "visible ASCII characters",
            });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AuthorizationId {
    type Error = TextError;
    fn try_from(text: String) -> Result<Self, TextError> {
        Self::parse(text)
    }
}

impl From<AuthorizationId> for String {
    fn from(id: AuthorizationId) -> String {
        id.0
    }
}

impl fmt::Display for AuthorizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An opaque token for the customer's card, issued by the payment provider. We never see
/// card numbers; the token is what the payment gateway charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CardToken(String);

impl CardToken {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        const WHAT: &str = "card_token";
        check_length(&text, WHAT, Self::MAX_LEN)?;
        check_no_control(&text, WHAT)?;
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(TextError::Forbidden {
                what: WHAT,
                allowed: "ASCII letters, digits, '-' and '_'",
            });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CardToken {
    type Error = TextError;
    fn try_from(text: String) -> Result<Self, TextError> {
        Self::parse(text)
    }
}

impl From<CardToken> for String {
    fn from(token: CardToken) -> String {
        token.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_the_documented_alphabet() {
        assert_eq!(Sku::parse("ABC-1_x.2").unwrap().as_str(), "ABC-1_x.2");
    }

    #[test]
    fn sku_rejects_nul_and_spaces_and_leading_punctuation() {
        assert!(matches!(
            Sku::parse("A\0B"),
            Err(TextError::ControlCharacter { .. })
        ));
        assert!(matches!(
            Sku::parse("A B"),
            Err(TextError::Forbidden { .. })
        ));
        assert!(matches!(
            Sku::parse("-AB"),
            Err(TextError::Forbidden { .. })
        ));
        assert!(matches!(Sku::parse(""), Err(TextError::Empty { .. })));
        assert!(matches!(
            Sku::parse("A".repeat(65)),
            Err(TextError::TooLong { max: 64, .. })
        ));
    }

    #[test]
    fn item_name_is_trimmed_and_refuses_control_characters() {
        assert_eq!(ItemName::parse("  Blue mug ").unwrap().as_str(), "Blue mug");
        assert!(matches!(
            ItemName::parse("   "),
            Err(TextError::Empty { .. })
        ));
        assert!(matches!(
            ItemName::parse("mug\u{0}"),
            Err(TextError::ControlCharacter { .. })
        ));
        assert_eq!(
            ItemName::parse("é".repeat(200))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            200
        );
    }

    #[test]
    fn card_token_is_restricted_to_token_characters() {
        assert!(CardToken::parse("tok_visa").is_ok());
        assert!(matches!(
            CardToken::parse("4111 1111"),
            Err(TextError::Forbidden { .. })
        ));
    }

    #[test]
    fn deserialising_validates_too() {
        assert!(serde_json::from_str::<Sku>("\"bad sku\"").is_err());
        assert_eq!(
            serde_json::from_str::<Sku>("\"SKU-1\"").unwrap(),
            Sku::parse("SKU-1").unwrap()
        );
    }
}
