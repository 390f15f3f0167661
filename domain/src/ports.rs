//! Ports: what the domain's callers need from the outside world, as traits over domain
//! types. `infra` implements them; only the binaries' `main` picks an implementation.

use std::future::Future;

use crate::Timestamp;
use crate::ids::OrderId;
use crate::money::Money;
use crate::order::CatalogFacts;
use crate::text::{AuthorizationId, CardToken, DeclineReason, Sku};

/// Where "now" comes from. Commands carry their time; the edge asks this port for it, so
/// tests can pin it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// What the catalog (the registered inventory items) knows about SKUs.
pub trait Catalog: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// For each of `skus` that is registered, the currency it is priced in. Unknown SKUs
    /// are simply absent from the answer; only a failure to look is an error.
    fn facts_for(
        &self,
        skus: &[Sku],
    ) -> impl Future<Output = Result<CatalogFacts, Self::Error>> + Send;
}

/// What the order fulfilment saga asks the payment gateway to do. Every call carries an
/// idempotency key derived from the saga's step, so a retried call never charges twice.
pub trait PaymentGateway: Send + Sync {
    /// Asks the card's issuer to hold `amount`.
    fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> impl Future<Output = Result<AuthorizationOutcome, GatewayError>> + Send;

    /// Takes the held amount.
    fn capture(
        &self,
        authorization: &AuthorizationId,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Releases a hold that will not be captured.
    fn void(
        &self,
        authorization: &AuthorizationId,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Gives back `amount` of a captured payment.
    fn refund(
        &self,
        authorization: &AuthorizationId,
        amount: Money,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// The authorization an `authorize` call with this key made, if any: after a call whose
    /// answer was lost (a timeout), this tells whether something must be voided.
    fn find_authorization(
        &self,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<Option<AuthorizationId>, GatewayError>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub order_id: OrderId,
    pub amount: Money,
    pub card_token: CardToken,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationOutcome {
    Approved(AuthorizationId),
    Declined(DeclineReason),
}

/// A gateway call that did not produce an answer about the payment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer (timeout, connection failure, 5xx, circuit breaker open): try again later.
    #[error("the payment gateway is unavailable: {0}")]
    Unavailable(String),
    /// The gateway refused the request itself (4xx other than a decline): retrying the same
    /// request will not help.
    #[error("the payment gateway refused the request: {0}")]
    Refused(String),
}
