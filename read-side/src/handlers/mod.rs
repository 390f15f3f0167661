//! Query handlers: parse, optionally wait for a consistency token, run one query, answer a
//! response DTO (never a row type).

pub mod customers;
pub mod inventory;
pub mod orders;
pub mod projections;
pub mod sagas;
pub mod stats;

use serde::Serialize;
use utoipa::ToSchema;

/// An amount in minor units of an ISO 4217 currency, as the command API takes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoneyView {
    #[schema(example = 1250)]
    pub amount_minor: i64,
    #[schema(example = "EUR")]
    pub currency: String,
}

impl MoneyView {
    pub fn new(amount_minor: i64, currency: &str) -> Self {
        Self {
            amount_minor,
            currency: currency.to_owned(),
        }
    }
}
