//! The query API: serves the read models the projections keep, with read-your-writes.
//!
//! - [`startup`]: build and run the service ([`Application`]).
//! - [`http`]: routes, the error format, parameters, conditional GETs, OpenAPI.
//! - [`consistency`]: waiting until a projection has applied a command's position (the
//!   consistency token), driven by the projectors' notifications.
//! - [`cache`]: `GET /orders/{id}` from memory when the answer is provably the model's
//!   (entries dropped by following the log).
//! - [`handlers`]: one thin function per route: parse, call one query, answer a DTO.
//! - [`queries`]: the SQL over the read-model views, returning row types.
//!
//! Deliberately not here: writing read models (the `projections` crate) and commands.

pub mod cache;
pub mod consistency;
pub mod handlers;
pub mod http;
pub mod queries;
pub mod startup;
pub mod state;

pub use startup::Application;

/// The projections behind each endpoint, by the names they register under.
pub mod serving {
    pub const ORDER_DETAILS: &str = "order_details";
    pub const CUSTOMER_ORDERS: &str = "customer_orders";
    pub const INVENTORY: &str = "inventory";
    pub const SALES_DAILY: &str = "sales_daily";
}
