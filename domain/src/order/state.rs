use std::fmt;

use serde::{Deserialize, Serialize};

use super::{CancelReason, OrderEvent, OrderLines};
use crate::money::{Currency, Money};

/// The lifecycle of an order, holding only what decisions need (read models hold the rest).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderState {
    #[default]
    Empty,
    Pending {
        lines: OrderLines,
        currency: Currency,
    },
    Reserved {
        total: Money,
    },
    Confirmed {
        total: Money,
    },
    Shipped {
        total: Money,
    },
    Cancelled {
        reason: CancelReason,
    },
}

/// The status names of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Reserved,
    Confirmed,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OrderState {
    /// `None` before the order is placed.
    pub fn status(&self) -> Option<OrderStatus> {
        match self {
            OrderState::Empty => None,
            OrderState::Pending { .. } => Some(OrderStatus::Pending),
            OrderState::Reserved { .. } => Some(OrderStatus::Reserved),
            OrderState::Confirmed { .. } => Some(OrderStatus::Confirmed),
            OrderState::Shipped { .. } => Some(OrderStatus::Shipped),
            OrderState::Cancelled { .. } => Some(OrderStatus::Cancelled),
        }
    }
}

/// Folds one event into the state. Total: an event that `decide` never emits from a state
/// leaves that state unchanged, because history cannot be refused.
pub fn evolve(state: OrderState, event: OrderEvent) -> OrderState {
    match event {
        OrderEvent::Placed {
            lines, currency, ..
        } => match state {
            OrderState::Empty => OrderState::Pending { lines, currency },
            other => other,
        },
        OrderEvent::StockReserved { total, .. } => match state {
            OrderState::Pending { .. } => OrderState::Reserved { total },
            other => other,
        },
        OrderEvent::Confirmed { .. } => match state {
            OrderState::Reserved { total } => OrderState::Confirmed { total },
            other => other,
        },
        OrderEvent::Shipped { .. } => match state {
            OrderState::Confirmed { total } => OrderState::Shipped { total },
            other => other,
        },
        OrderEvent::Cancelled { reason, .. } => match state {
            OrderState::Pending { .. }
            | OrderState::Reserved { .. }
            | OrderState::Confirmed { .. } => OrderState::Cancelled { reason },
            other => other,
        },
    }
}
