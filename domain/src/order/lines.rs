use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::money::{Money, Quantity};
use crate::text::Sku;

/// One line of an order as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// The lines of an order: 1 to 100 of them, each SKU at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<OrderLine>", into = "Vec<OrderLine>")]
pub struct OrderLines(Vec<OrderLine>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderLinesError {
    #[error("an order needs at least one line")]
    Empty,
    #[error("an order may have at most {max} lines")]
    TooMany { max: usize },
    #[error("SKU {sku} appears on more than one line; put the whole quantity on one line")]
    DuplicateSku { sku: Sku },
}

impl OrderLines {
    pub const MAX_LINES: usize = 100;

    pub fn new(lines: Vec<OrderLine>) -> Result<Self, OrderLinesError> {
        if lines.is_empty() {
            return Err(OrderLinesError::Empty);
        }
        if lines.len() > Self::MAX_LINES {
            return Err(OrderLinesError::TooMany {
                max: Self::MAX_LINES,
            });
        }
        let mut seen = BTreeSet::new();
        for line in &lines {
            if !seen.insert(&line.sku) {
                return Err(OrderLinesError::DuplicateSku {
                    sku: line.sku.clone(),
                });
            }
        }
        Ok(Self(lines))
    }

    pub fn iter(&self) -> impl Iterator<Item = &OrderLine> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        // Never true; present because clippy expects it beside `len`.
        self.0.is_empty()
    }

    pub fn skus(&self) -> impl Iterator<Item = &Sku> {
        self.0.iter().map(|line| &line.sku)
    }
}

impl TryFrom<Vec<OrderLine>> for OrderLines {
    type Error = OrderLinesError;
    fn try_from(lines: Vec<OrderLine>) -> Result<Self, OrderLinesError> {
        Self::new(lines)
    }
}

impl From<OrderLines> for Vec<OrderLine> {
    fn from(lines: OrderLines) -> Self {
        lines.0
    }
}

/// A line with the price it was reserved at, and the line total computed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
    /// `unit_price * quantity`, computed at decision time so readers never recompute it.
    pub line_total: Money,
}

/// A line as the inventory item reserved it: the quantity held and the unit price it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}
