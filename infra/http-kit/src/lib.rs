//! HTTP plumbing shared by the command API (`write-side`) and the query API (`read-side`),
//! so both speak the same error format and log the same way:
//!
//! - [`problem`]: RFC 9457 `application/problem+json` responses;
//! - [`middleware`]: request ids, problem bodies for bare error responses, one log line per
//!   failed request with its cause, panics as 500s;
//! - [`stack`]: the middleware stack and the fallback for unknown routes;
//! - [`health`]: `/livez` and `/readyz`.
//!
//! It lives beside `infra` rather than in it, because `infra` knows nothing of HTTP.
//! Deliberately not here: routes, and anything specific to one API.

pub mod health;
pub mod middleware;
pub mod problem;
pub mod serve;
pub mod stack;

pub use problem::{FieldError, Problem, ProblemBody};
