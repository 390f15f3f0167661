//! Conditional GETs: every JSON answer carries a strong `ETag` (a digest of the body), and
//! `If-None-Match` with that tag gets `304 Not Modified` and no body.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Answers `body` as JSON, or 304 when the client already has it.
pub fn respond<T: Serialize>(request_headers: &HeaderMap, body: &T) -> Response {
    match encode(body) {
        Ok((bytes, etag)) => respond_encoded(request_headers, bytes, &etag),
        Err(err) => http_kit::problem::common::internal(&err).into_response(),
    }
}

/// `body` as JSON bytes, and its strong `ETag` (a digest of them).
pub fn encode<T: Serialize>(body: &T) -> Result<(Bytes, HeaderValue), serde_json::Error> {
    let bytes = serde_json::to_vec(body)?;
    let digest = Sha256::digest(&bytes);
    let etag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let etag = HeaderValue::from_str(&etag).expect("hex digits in quotes are a header value");
    Ok((Bytes::from(bytes), etag))
}

/// Answers JSON already encoded by [`encode`], or 304 when the client already has it.
pub fn respond_encoded(request_headers: &HeaderMap, bytes: Bytes, etag: &HeaderValue) -> Response {
    let matches = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes());
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    // Clients may cache, but must revalidate (cheaply, with If-None-Match).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
