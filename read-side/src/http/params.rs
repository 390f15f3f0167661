//! Query parameters, cursors and the consistency token, each parsed into a clear 400.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequestParts, Query};
use axum::http::Uri;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use infra::event_store::{Checkpoint, ConsistencyToken};
use serde::de::DeserializeOwned;

use super::error::{FieldError, QueryError};
use crate::state::AppState;

/// Parses the query string into `T`, or a 400 naming the problem.
pub fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, QueryError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(params)| params)
        .map_err(|rejection| QueryError::InvalidQuery {
            errors: vec![FieldError::new("", rejection.body_text())],
        })
}

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// `limit`: 1 to 100, 20 when absent.
pub fn limit(value: Option<&str>) -> Result<i64, FieldError> {
    let Some(value) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// Opaque cursors: base64url of `<kind>:<value>`, so a cursor of one list is refused by
/// another.
pub fn encode_cursor(kind: &str, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

pub fn decode_cursor(kind: &str, cursor: Option<&str>) -> Result<Option<String>, QueryError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| QueryError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| QueryError::InvalidCursor)?;
    text.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(|value| Some(value.to_owned()))
        .ok_or(QueryError::InvalidCursor)
}

/// How long a read may wait for its consistency token by default, and at most.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// `wait`: `500ms`, `2s`, `1.5s`, or a number of milliseconds; at most 10 s.
pub fn wait(value: Option<&str>) -> Result<Duration, FieldError> {
    let Some(value) = value else {
        return Ok(DEFAULT_WAIT);
    };
    let invalid = || {
        FieldError::new(
            "wait",
            "must be a duration such as 500ms or 2s, at most 10s",
        )
    };
    let value = value.trim();
    let duration = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(seconds) = value.strip_suffix('s') {
        seconds
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_WAIT.as_secs_f64())
            .map(Duration::from_secs_f64)
    } else {
        value.parse::<u64>().ok().map(Duration::from_millis)
    }
    .ok_or_else(invalid)?;
    if duration > MAX_WAIT {
        return Err(invalid());
    }
    Ok(duration)
}

/// Read-your-writes: `X-Consistency-Token` (the `consistency_token` a command returned,
/// `<position>.<transaction id>`, or its `position`) and `?wait=`. The handler calls `ensure` with the projection it reads from.
/// `Cache-Control: no-cache` asks for an answer from the database, not from memory.
#[derive(Debug, Clone, Copy)]
pub struct ReadAfter {
    pub token: Option<ConsistencyToken>,
    pub wait: Duration,
    pub no_cache: bool,
}

impl ReadAfter {
    /// Returns once the projection has applied the token's event (with the token's place in
    /// the log); a 503 problem if it has not within the wait, or cannot (halted).
    pub async fn ensure(
        &self,
        app: &AppState,
        projection: &'static str,
    ) -> Result<Option<Checkpoint>, QueryError> {
        match self.token {
            Some(token) => Ok(Some(
                app.checkpoints
                    .wait_until_applied(projection, token, self.wait)
                    .await?,
            )),
            None => Ok(None),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReadAfter {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, QueryError> {
        let token = match parts.headers.get("x-consistency-token") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .map(|text| text.trim().trim_matches('"'))
                    .and_then(|text| text.parse::<ConsistencyToken>().ok())
                    .ok_or_else(|| QueryError::InvalidConsistencyToken {
                        detail: "send the `consistency_token` (or the `position`) a command \
                                 returned: `<position>` or `<position>.<transaction id>`, \
                                 positive integers"
                            .to_owned(),
                    })?,
            ),
        };
        let params: HashMap<String, String> = query(&parts.uri)?;
        let wait = wait(params.get("wait").map(String::as_str))
            .map_err(|err| QueryError::InvalidQuery { errors: vec![err] })?;
        let no_cache = parts
            .headers
            .get_all(axum::http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|directive| {
                let directive = directive.trim();
                directive.eq_ignore_ascii_case("no-cache")
                    || directive.eq_ignore_ascii_case("no-store")
            });
        Ok(Self {
            token,
            wait,
            no_cache,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded_durations() {
        assert_eq!(wait(None).unwrap(), DEFAULT_WAIT);
        assert_eq!(wait(Some("500ms")).unwrap(), Duration::from_millis(500));
        assert_eq!(wait(Some("1.5s")).unwrap(), Duration::from_millis(1500));
        assert_eq!(wait(Some("250")).unwrap(), Duration::from_millis(250));
        assert!(wait(Some("11s")).is_err());
        assert!(wait(Some("20000")).is_err());
        assert!(wait(Some("soon")).is_err());
        assert!(wait(Some("-1s")).is_err());
    }

    #[test]
    fn limits_are_between_one_and_a_hundred() {
        assert_eq!(limit(None).unwrap(), 20);
        assert_eq!(limit(Some("100")).unwrap(), 100);
        assert!(limit(Some("0")).is_err());
        assert!(limit(Some("101")).is_err());
        assert!(limit(Some("ten")).is_err());
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_list() {
        let cursor = encode_cursor("sku", "MUG-1");
        assert_eq!(
            decode_cursor("sku", Some(&cursor)).unwrap().as_deref(),
            Some("MUG-1")
        );
        assert!(decode_cursor("pos", Some(&cursor)).is_err());
        assert!(decode_cursor("sku", Some("!!!")).is_err());
        assert_eq!(decode_cursor("sku", None).unwrap(), None);
    }
}
