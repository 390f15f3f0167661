//! Ports: what the domain's callers need from the outside world, as traits over domain
//! types. `infra` implements them; only the binaries' `main` picks an implementation.

use std::future::Future;

use crate::Timestamp;
use crate::order::CatalogFacts;
use crate::text::Sku;

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
