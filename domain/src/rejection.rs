//! What every aggregate's error type has in common, so that adapters can map rejections
//! without knowing each aggregate.

/// The kind of rule a rejected command broke. Adapters translate this into their own terms
/// (the HTTP API maps `NotFound` to 404 and `RuleViolated` to 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The command addressed an aggregate that does not exist yet.
    NotFound,
    /// The aggregate exists, and its state forbids the command.
    RuleViolated,
}

/// A domain error: a rejection of a command, never an IO failure.
pub trait Rejection: std::error::Error {
    /// A stable snake_case code, part of the public API contract. Never rename one.
    fn code(&self) -> &'static str;

    fn kind(&self) -> RejectionKind {
        RejectionKind::RuleViolated
    }
}
