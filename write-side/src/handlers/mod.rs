//! Command handlers: extract, parse into a command, execute, map the outcome. No SQL and no
//! business rules here; the request DTOs live beside their handlers.

pub mod inventory;
pub mod orders;
pub mod sagas;
