use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{OrderLines, ReservedLine};
use crate::Timestamp;
use crate::ids::CustomerId;
use crate::money::Currency;
use crate::text::{CardToken, Sku};

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place {
        customer_id: CustomerId,
        lines: OrderLines,
        card_token: CardToken,
        /// Looked up by the caller for the SKUs of `lines`.
        catalog: CatalogFacts,
        at: Timestamp,
    },
    /// Stock is held for every line, at these unit prices (taken from `StockReserved`).
    RecordStockReserved {
        lines: Vec<ReservedLine>,
        at: Timestamp,
    },
    /// The payment was captured.
    Confirm {
        at: Timestamp,
    },
    Ship {
        at: Timestamp,
    },
    Cancel {
        reason: CancelReason,
        at: Timestamp,
    },
}

/// What the catalog knew about the SKUs of an order when it was placed: for each SKU that
/// is registered, the currency it is priced in. A SKU missing from the map is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogFacts {
    currencies: BTreeMap<Sku, Currency>,
}

impl CatalogFacts {
    pub fn new(currencies: impl IntoIterator<Item = (Sku, Currency)>) -> Self {
        Self {
            currencies: currencies.into_iter().collect(),
        }
    }

    pub fn currency_of(&self, sku: &Sku) -> Option<Currency> {
        self.currencies.get(sku).copied()
    }
}

/// Why an order was cancelled. Part of the public API: codes are never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    CustomerRequest,
    OutOfStock,
    PaymentDeclined,
    PaymentTimeout,
}

impl CancelReason {
    pub const ALL: [CancelReason; 4] = [
        CancelReason::CustomerRequest,
        CancelReason::OutOfStock,
        CancelReason::PaymentDeclined,
        CancelReason::PaymentTimeout,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CancelReason::CustomerRequest => "customer_request",
            CancelReason::OutOfStock => "out_of_stock",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::PaymentTimeout => "payment_timeout",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "reason must be one of \"customer_request\", \"out_of_stock\", \"payment_declined\", \"payment_timeout\""
)]
pub struct UnknownCancelReason;

impl FromStr for CancelReason {
    type Err = UnknownCancelReason;
    fn from_str(text: &str) -> Result<Self, UnknownCancelReason> {
        CancelReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or(UnknownCancelReason)
    }
}
