//! SQL over the read-model views. Each function is one query; rows are plain structs that
//! the handlers turn into response DTOs.

pub mod customers;
pub mod inventory;
pub mod orders;
pub mod projections;
pub mod sagas;
pub mod sales;
