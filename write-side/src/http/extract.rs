//! Extractors that parse a command request: the JSON body (strictly), `Idempotency-Key`,
//! `If-Match`, and the correlation id. Each failure is an `ApiError` with a precise message.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, Method, header};
use infra::commands::{CommandOptions, ExpectedVersion, IdempotencyKey};
use infra::event_store::EventMetadata;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{ApiError, FieldError};

/// The largest request body accepted: 64 KiB, enough for an order of 100 lines.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body type. `deny_unknown_fields` on every implementor, so a typo in a field
/// name is an error rather than silently ignored.
pub trait CommandBody: DeserializeOwned {
    /// Whether an empty body is allowed (and read as `{}`).
    const OPTIONAL: bool = false;
}

/// A parsed command request: its body and how the command is to be executed.
#[derive(Debug)]
pub struct CommandRequest<T> {
    pub body: T,
    pub options: CommandOptions,
}

impl<S: Send + Sync, T: CommandBody> FromRequest<S> for CommandRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let expected_version = if_match(&parts.headers)?;
        let key = idempotency_key(&parts.headers)?;
        let correlation_id = correlation_id(&parts.headers)?;
        if let Some(length) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok())
            && length > BODY_LIMIT
        {
            return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT });
        }
        let bytes = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|err| {
                let too_large = err
                    .into_inner()
                    .downcast::<http_body_util::LengthLimitError>()
                    .is_ok();
                if too_large {
                    ApiError::PayloadTooLarge { limit: BODY_LIMIT }
                } else {
                    ApiError::MalformedJson {
                        detail: "the body could not be read".to_owned(),
                    }
                }
            })?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            if !T::OPTIONAL {
                return Err(ApiError::InvalidBody {
                    errors: vec![FieldError::new("", "a JSON object is required")],
                });
            }
            Value::Object(serde_json::Map::new())
        } else {
            if !is_json(&parts.headers) {
                return Err(ApiError::UnsupportedMediaType);
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|err| ApiError::MalformedJson {
                detail: err.to_string(),
            })?
        };
        if let Some(pointer) = find_nul(&value, &mut String::new()) {
            return Err(ApiError::Validation {
                errors: vec![FieldError::new(
                    pointer,
                    "must not contain the NUL character (\\u0000)",
                )],
            });
        }
        let request_hash = request_hash(&parts.method, parts.uri.path(), &value);
        let body: T = serde_path_to_error::deserialize(value.clone()).map_err(|err| {
            let pointer = pointer_of(err.path());
            ApiError::InvalidBody {
                errors: vec![FieldError::new(pointer, err.into_inner())],
            }
        })?;
        let idempotency = match key {
            None => None,
            Some(key) => Some(IdempotencyKey::new(&key, request_hash).map_err(|err| {
                ApiError::InvalidHeader {
                    header: "Idempotency-Key",
                    detail: err.to_string(),
                }
            })?),
        };
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let metadata = EventMetadata {
            correlation_id: Some(correlation_id),
            causation_id: None,
            idempotency_key: None,
            extra: request_id
                .map(|id| BTreeMap::from([("request_id".to_owned(), id)]))
                .unwrap_or_default(),
        };
        Ok(Self {
            body,
            options: CommandOptions {
                expected_version,
                idempotency,
                metadata,
                new_aggregate: false,
            },
        })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `If-Match: "3"` expects version 3; `If-Match: *` expects the resource to exist. Weak
/// tags (`W/"3"`) never match, as RFC 9110 requires of If-Match; lists are refused.
fn if_match(headers: &HeaderMap) -> Result<Option<ExpectedVersion>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = |detail: &str| ApiError::InvalidHeader {
        header: "If-Match",
        detail: detail.to_owned(),
    };
    let text = value.to_str().map_err(|_| invalid("must be ASCII"))?.trim();
    if text == "*" {
        return Ok(Some(ExpectedVersion::Exists));
    }
    if text.contains(',') {
        return Err(invalid("give a single ETag, such as \"3\""));
    }
    if text.starts_with("W/") {
        // A weak tag never matches under the strong comparison If-Match uses.
        return Ok(Some(ExpectedVersion::Exactly(u64::MAX)));
    }
    let version = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|inner| inner.parse::<u64>().ok())
        .ok_or_else(|| {
            invalid("must be an ETag returned by this API, such as \"3\" (with the quotes), or *")
        })?;
    Ok(Some(ExpectedVersion::Exactly(version)))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ApiError::InvalidHeader {
        header: "Idempotency-Key",
        detail: "must be visible ASCII".to_owned(),
    })?;
    // The IETF draft sends the key as a structured-field string: accept it quoted or bare.
    let text = text.trim();
    let key = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    Ok(Some(key.to_owned()))
}

/// The caller's `X-Correlation-Id` (a UUID), or a new one for a new flow.
fn correlation_id(headers: &HeaderMap) -> Result<Uuid, ApiError> {
    match headers.get("x-correlation-id") {
        None => Ok(Uuid::new_v4()),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| Uuid::try_parse(text.trim()).ok())
            .ok_or(ApiError::InvalidHeader {
                header: "X-Correlation-Id",
                detail: "must be a UUID".to_owned(),
            }),
    }
}

/// Where the first NUL character is, as a JSON pointer, in keys or string values.
fn find_nul(value: &Value, pointer: &mut String) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => Some(pointer.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let len = pointer.len();
            pointer.push_str(&format!("/{index}"));
            let found = find_nul(item, pointer);
            pointer.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = pointer.len();
            pointer.push('/');
            pointer.push_str(&escape_pointer(key));
            let found = if key.contains('\0') {
                Some(pointer.clone())
            } else {
                find_nul(item, pointer)
            };
            pointer.truncate(len);
            found
        }),
        _ => None,
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer(key));
            }
            Segment::Enum { variant } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer(variant));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// SHA-256 of the method, the path and the body in canonical form (object keys sorted), so
/// the same request sent with other whitespace or key order counts as the same request.
fn request_hash(method: &Method, path: &str, body: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    write_canonical(body, &mut hasher);
    hasher.finalize().into()
}

fn write_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            hasher.update(b"{");
            for (key, item) in sorted {
                hasher.update(serde_json::to_string(key).unwrap_or_default().as_bytes());
                hasher.update(b":");
                write_canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn if_match_accepts_a_strong_etag_or_a_star() {
        assert_eq!(
            if_match(&headers("if-match", "\"3\"")).unwrap(),
            Some(ExpectedVersion::Exactly(3))
        );
        assert_eq!(
            if_match(&headers("if-match", "*")).unwrap(),
            Some(ExpectedVersion::Exists)
        );
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert!(if_match(&headers("if-match", "3")).is_err());
        assert!(if_match(&headers("if-match", "\"1\", \"2\"")).is_err());
        assert_eq!(
            if_match(&headers("if-match", "W/\"3\"")).unwrap(),
            Some(ExpectedVersion::Exactly(u64::MAX))
        );
    }

    #[test]
    fn nul_characters_are_found_in_values_and_keys() {
        assert_eq!(
            find_nul(&json!({"a": [{"b": "x\u{0}"}]}), &mut String::new()),
            Some("/a/0/b".to_owned())
        );
        assert_eq!(
            find_nul(&json!({"k\u{0}": 1}), &mut String::new()),
            Some("/k\u{0}".to_owned())
        );
        assert_eq!(find_nul(&json!({"a": "fine"}), &mut String::new()), None);
    }

    #[test]
    fn the_request_hash_ignores_key_order_but_not_values_or_paths() {
        let a = request_hash(&Method::POST, "/x", &json!({"a": 1, "b": [1, 2]}));
        let b = request_hash(&Method::POST, "/x", &json!({"b": [1, 2], "a": 1}));
        let c = request_hash(&Method::POST, "/x", &json!({"a": 2, "b": [1, 2]}));
        let d = request_hash(&Method::POST, "/y", &json!({"a": 1, "b": [1, 2]}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn idempotency_keys_may_be_quoted() {
        assert_eq!(
            idempotency_key(&headers("idempotency-key", "\"abc\"")).unwrap(),
            Some("abc".to_owned())
        );
        assert_eq!(
            idempotency_key(&headers("idempotency-key", "abc")).unwrap(),
            Some("abc".to_owned())
        );
    }
}
