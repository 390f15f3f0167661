use std::collections::BTreeSet;

use super::{
    CancelReason, CatalogFacts, OrderCommand, OrderEvent, OrderLines, OrderState, PricedLine,
    ReservedLine,
};
use crate::Timestamp;
use crate::money::{Currency, Money, MoneyError};
use crate::rejection::{Rejection, RejectionKind};
use crate::text::Sku;

/// Why an order command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("no order exists with this id")]
    NotPlaced,
    #[error("this order has already been placed")]
    AlreadyPlaced,
    #[error(
        "unknown SKU(s) {}: register them with POST /inventory first",
        join(skus)
    )]
    UnknownSkus { skus: Vec<Sku> },
    #[error(
        "the SKUs of one order must share a currency, found {}",
        join(currencies)
    )]
    MixedCurrencies { currencies: Vec<Currency> },
    #[error("the reserved lines do not match the order's lines")]
    ReservationMismatch,
    #[error("the order total is too large")]
    AmountTooLarge,
    #[error("the order's stock has not been reserved yet")]
    NotReserved,
    #[error("the order has not been confirmed (paid) yet, so it cannot ship")]
    NotConfirmed,
    #[error("the order was cancelled ({reason})")]
    Cancelled { reason: CancelReason },
    #[error("the order has already shipped and can no longer be cancelled")]
    AlreadyShipped,
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Rejection for OrderError {
    fn code(&self) -> &'static str {
        match self {
            OrderError::NotPlaced => "order_not_found",
            OrderError::AlreadyPlaced => "order_already_placed",
            OrderError::UnknownSkus { .. } => "unknown_sku",
            OrderError::MixedCurrencies { .. } => "mixed_currencies",
            OrderError::ReservationMismatch => "reservation_mismatch",
            OrderError::AmountTooLarge => "amount_too_large",
            OrderError::NotReserved => "order_not_reserved",
            OrderError::NotConfirmed => "order_not_confirmed",
            OrderError::Cancelled { .. } => "order_cancelled",
            OrderError::AlreadyShipped => "order_already_shipped",
        }
    }

    fn kind(&self) -> RejectionKind {
        match self {
            OrderError::NotPlaced => RejectionKind::NotFound,
            _ => RejectionKind::RuleViolated,
        }
    }
}

/// Decides what a command does to an order.
///
/// Commands a saga may retry are idempotent: recording a reservation again, confirming a
/// confirmed order, shipping a shipped one or cancelling a cancelled one emit nothing.
pub fn decide(command: OrderCommand, state: &OrderState) -> Result<Vec<OrderEvent>, OrderError> {
    match (command, state) {
        (
            OrderCommand::Place {
                customer_id,
                lines,
                card_token,
                catalog,
                at,
            },
            OrderState::Empty,
        ) => {
            let currency = single_currency(&lines, &catalog)?;
            Ok(vec![OrderEvent::Placed {
                customer_id,
                lines,
                card_token,
                currency,
                at,
            }])
        }
        (OrderCommand::Place { .. }, _) => Err(OrderError::AlreadyPlaced),

        (
            OrderCommand::RecordStockReserved { lines, at },
            OrderState::Pending {
                lines: ordered,
                currency,
            },
        ) => price_lines(ordered, *currency, lines, at),
        (
            OrderCommand::RecordStockReserved { .. },
            OrderState::Reserved { .. } | OrderState::Confirmed { .. } | OrderState::Shipped { .. },
        ) => Ok(vec![]),

        (OrderCommand::Confirm { at }, OrderState::Reserved { .. }) => {
            Ok(vec![OrderEvent::Confirmed { at }])
        }
        (
            OrderCommand::Confirm { .. },
            OrderState::Confirmed { .. } | OrderState::Shipped { .. },
        ) => Ok(vec![]),
        (OrderCommand::Confirm { .. }, OrderState::Pending { .. }) => Err(OrderError::NotReserved),

        (OrderCommand::Ship { at }, OrderState::Confirmed { .. }) => {
            Ok(vec![OrderEvent::Shipped { at }])
        }
        (OrderCommand::Ship { .. }, OrderState::Shipped { .. }) => Ok(vec![]),
        (OrderCommand::Ship { .. }, OrderState::Pending { .. } | OrderState::Reserved { .. }) => {
            Err(OrderError::NotConfirmed)
        }

        (
            OrderCommand::Cancel { reason, at },
            OrderState::Pending { .. } | OrderState::Reserved { .. } | OrderState::Confirmed { .. },
        ) => Ok(vec![OrderEvent::Cancelled { reason, at }]),
        // The first reason stands; a later cancel (a saga retry, a second click) changes nothing.
        (OrderCommand::Cancel { .. }, OrderState::Cancelled { .. }) => Ok(vec![]),
        (OrderCommand::Cancel { .. }, OrderState::Shipped { .. }) => {
            Err(OrderError::AlreadyShipped)
        }

        (
            OrderCommand::RecordStockReserved { .. }
            | OrderCommand::Confirm { .. }
            | OrderCommand::Ship { .. },
            OrderState::Cancelled { reason },
        ) => Err(OrderError::Cancelled { reason: *reason }),
        (
            OrderCommand::RecordStockReserved { .. }
            | OrderCommand::Confirm { .. }
            | OrderCommand::Ship { .. }
            | OrderCommand::Cancel { .. },
            OrderState::Empty,
        ) => Err(OrderError::NotPlaced),
    }
}

/// Every SKU must be known, and all must be priced in one currency.
fn single_currency(lines: &OrderLines, catalog: &CatalogFacts) -> Result<Currency, OrderError> {
    let unknown: Vec<Sku> = lines
        .skus()
        .filter(|sku| catalog.currency_of(sku).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(OrderError::UnknownSkus { skus: unknown });
    }
    let currencies: BTreeSet<Currency> = lines
        .skus()
        .filter_map(|sku| catalog.currency_of(sku))
        .collect();
    let mut iter = currencies.iter();
    match (iter.next(), iter.next()) {
        (Some(currency), None) => Ok(*currency),
        _ => Err(OrderError::MixedCurrencies {
            currencies: currencies.into_iter().collect(),
        }),
    }
}

/// Checks that the reservation covers exactly the ordered lines, then prices them in the
/// order's line order.
fn price_lines(
    ordered: &OrderLines,
    currency: Currency,
    mut reserved: Vec<ReservedLine>,
    at: Timestamp,
) -> Result<Vec<OrderEvent>, OrderError> {
    if reserved.len() != ordered.len() {
        return Err(OrderError::ReservationMismatch);
    }
    let mut priced = Vec::with_capacity(ordered.len());
    let mut total = Money::zero(currency);
    for line in ordered.iter() {
        let index = reserved
            .iter()
            .position(|r| r.sku == line.sku && r.quantity == line.quantity)
            .ok_or(OrderError::ReservationMismatch)?;
        let ReservedLine { unit_price, .. } = reserved.swap_remove(index);
        if unit_price.currency() != currency {
            return Err(OrderError::MixedCurrencies {
                currencies: vec![currency, unit_price.currency()],
            });
        }
        let line_total = unit_price.times(line.quantity).map_err(money_error)?;
        total = total.checked_add(line_total).map_err(money_error)?;
        priced.push(PricedLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price,
            line_total,
        });
    }
    Ok(vec![OrderEvent::StockReserved {
        lines: priced,
        total,
        at,
    }])
}

fn money_error(err: MoneyError) -> OrderError {
    match err {
        MoneyError::CurrencyMismatch { left, right } => OrderError::MixedCurrencies {
            currencies: vec![left, right],
        },
        MoneyError::Overflow | MoneyError::Negative | MoneyError::UnknownCurrency { .. } => {
            OrderError::AmountTooLarge
        }
    }
}
