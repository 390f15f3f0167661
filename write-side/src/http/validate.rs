//! Collects every invalid field of a request body, so one 400 lists them all.

use super::error::{ApiError, FieldError};

#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value, or records the error at `pointer`.
    pub fn field<T, E: ToString>(&mut self, pointer: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.errors.push(FieldError::new(pointer, err));
                None
            }
        }
    }

    pub fn error(&mut self, pointer: &str, detail: impl ToString) {
        self.errors.push(FieldError::new(pointer, detail));
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation {
                errors: self.errors,
            })
        }
    }
}

/// Unwraps what `Validator::field` returned after `finish` said every field was valid.
pub fn valid<T>(value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "a field was invalid after validation passed"
        ))
    })
}
