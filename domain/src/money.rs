//! Money and quantities. Amounts are integer minor units with an ISO 4217 currency, never
//! floating point; quantities are never zero.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// Active ISO 4217 codes (2025), without XXX ("no currency") and XTS ("testing"). A code we
/// do not know is refused rather than stored, because a typo would split revenue reports.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR",
    "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// An ISO 4217 currency code such as `EUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Accepts exactly an active ISO 4217 code in upper case.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match ISO_4217.binary_search(&code) {
            Ok(_) => {
                let bytes = code.as_bytes();
                Ok(Self([bytes[0], bytes[1], bytes[2]]))
            }
            Err(_) => Err(MoneyError::UnknownCurrency {
                code: code.chars().take(16).collect(),
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        // The bytes came from an ASCII entry of ISO_4217.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(code: String) -> Result<Self, MoneyError> {
        Self::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-negative amount of money. Prices, totals, charges and refunds are all magnitudes,
/// so a negative amount is a bug or bad input, and is refused at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMoney", into = "RawMoney")]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

/// The serde shape of `Money`, matching the HTTP API: `{"amount_minor": 1999, "currency": "EUR"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMoney {
    amount_minor: i64,
    currency: Currency,
}

impl TryFrom<RawMoney> for Money {
    type Error = MoneyError;
    fn try_from(raw: RawMoney) -> Result<Self, MoneyError> {
        Money::new(raw.amount_minor, raw.currency)
    }
}

impl From<Money> for RawMoney {
    fn from(money: Money) -> Self {
        RawMoney {
            amount_minor: money.amount_minor,
            currency: money.currency,
        }
    }
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount_minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_minor: 0,
            currency,
        }
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.amount_minor == 0
    }

    /// Sums two amounts of the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    /// Subtracts `other`, refusing to go below zero.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self.amount_minor - other.amount_minor;
        Money::new(amount_minor, self.currency)
    }

    /// The price of `quantity` units at this unit price.
    pub fn times(self, quantity: Quantity) -> Result<Money, MoneyError> {
        let amount_minor = self
            .amount_minor
            .checked_mul(i64::from(quantity.get()))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.amount_minor, self.currency)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency {code:?} is not an active ISO 4217 code (use upper case, e.g. \"EUR\")")]
    UnknownCurrency { code: String },
    #[error("amounts of money must not be negative")]
    Negative,
    #[error("amount is too large")]
    Overflow,
    #[error("cannot combine {left} with {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
}

/// A number of units, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(NonZeroU32);

impl Quantity {
    /// The most units one command may move. Keeps every sum of quantities far from overflow.
    pub const MAX: u32 = 1_000_000_000;

    pub fn new(units: u32) -> Result<Self, QuantityError> {
        if units > Self::MAX {
            return Err(QuantityError::TooLarge { max: Self::MAX });
        }
        NonZeroU32::new(units).map(Self).ok_or(QuantityError::Zero)
    }

    /// Parses a number from an API payload, where it may be negative or huge.
    pub fn from_i64(units: i64) -> Result<Self, QuantityError> {
        if units < 1 {
            return Err(QuantityError::Zero);
        }
        u32::try_from(units)
            .map_err(|_| QuantityError::TooLarge { max: Self::MAX })
            .and_then(Self::new)
    }

    pub fn get(&self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for Quantity {
    type Error = QuantityError;
    fn try_from(units: u32) -> Result<Self, QuantityError> {
        Self::new(units)
    }
}

impl From<Quantity> for u32 {
    fn from(quantity: Quantity) -> u32 {
        quantity.get()
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity must be at least 1")]
    Zero,
    #[error("quantity must be at most {max}")]
    TooLarge { max: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn the_currency_list_is_sorted_so_binary_search_works() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn currency_must_be_a_known_upper_case_code() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(matches!(
            Currency::parse("eur"),
            Err(MoneyError::UnknownCurrency { .. })
        ));
        assert!(matches!(
            Currency::parse("ABC"),
            Err(MoneyError::UnknownCurrency { .. })
        ));
        assert!(Currency::parse("XXX").is_err());
    }

    #[test]
    fn money_is_never_negative() {
        assert_eq!(Money::new(-1, eur()), Err(MoneyError::Negative));
        let ten = Money::new(10, eur()).unwrap();
        let eleven = Money::new(11, eur()).unwrap();
        assert_eq!(ten.checked_sub(eleven), Err(MoneyError::Negative));
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let usd = Currency::parse("USD").unwrap();
        let ten_eur = Money::new(10, eur()).unwrap();
        assert!(matches!(
            ten_eur.checked_add(Money::new(1, usd).unwrap()),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        let huge = Money::new(i64::MAX, eur()).unwrap();
        assert_eq!(
            huge.times(Quantity::new(2).unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            ten_eur
                .times(Quantity::new(3).unwrap())
                .unwrap()
                .amount_minor(),
            30
        );
    }

    #[test]
    fn money_serialises_in_the_api_shape() {
        let money = Money::new(1999, eur()).unwrap();
        let json = serde_json::to_value(money).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"amount_minor": 1999, "currency": "EUR"})
        );
        assert_eq!(serde_json::from_value::<Money>(json).unwrap(), money);
        assert!(
            serde_json::from_value::<Money>(
                serde_json::json!({"amount_minor": -5, "currency": "EUR"})
            )
            .is_err()
        );
    }

    #[test]
    fn quantity_is_between_one_and_max() {
        assert_eq!(Quantity::from_i64(0), Err(QuantityError::Zero));
        assert_eq!(Quantity::from_i64(-3), Err(QuantityError::Zero));
        assert!(Quantity::from_i64(i64::from(Quantity::MAX) + 1).is_err());
        assert_eq!(Quantity::from_i64(7).unwrap().get(), 7);
        assert!(serde_json::from_str::<Quantity>("0").is_err());
    }
}
