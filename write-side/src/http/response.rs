//! Success responses of commands: the aggregate id, its new version, the position of its
//! latest event and the consistency token the query API accepts, with an `ETag` of the
//! version.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infra::commands::Committed;
use serde::Serialize;
use utoipa::ToSchema;

/// Set on a response that replays the outcome of an earlier request with the same
/// `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// An inventory command took effect.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemAccepted {
    #[schema(example = "MUG-BLUE")]
    pub sku: String,
    /// The item's version after the command; also its `ETag`.
    #[schema(example = 2)]
    pub version: u64,
    /// Global position of the item's latest event.
    #[schema(example = 1042)]
    pub position: Option<i64>,
    /// Send it as `X-Consistency-Token` to read your write from the query API:
    /// `<position>.<transaction id>` when this request appended (the query API then knows
    /// where the event is in the log without looking it up), else the position.
    #[schema(example = "1042.771093")]
    pub consistency_token: Option<String>,
}

/// An order command took effect.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAccepted {
    #[schema(example = "0f8fad5b-d9cb-469f-a165-70867728950e")]
    pub order_id: String,
    /// The order's version after the command; also its `ETag`.
    #[schema(example = 1)]
    pub version: u64,
    /// Global position of the order's latest event.
    #[schema(example = 1043)]
    pub position: Option<i64>,
    /// Send it as `X-Consistency-Token` to read your write from the query API:
    /// `<position>.<transaction id>` when this request appended (the query API then knows
    /// where the event is in the log without looking it up), else the position.
    #[schema(example = "1043.771094")]
    pub consistency_token: Option<String>,
}

/// A command's HTTP response: status, JSON body and headers.
#[derive(Debug)]
pub struct Accepted<B> {
    status: StatusCode,
    body: B,
    version: u64,
    location: Option<String>,
    replayed: bool,
}

impl Accepted<ItemAccepted> {
    pub fn item(status: StatusCode, committed: Committed) -> Self {
        let location = (status == StatusCode::CREATED)
            .then(|| format!("/inventory/{}", committed.aggregate_id));
        Self {
            status,
            version: committed.version,
            location,
            replayed: committed.replayed,
            body: ItemAccepted {
                consistency_token: committed.token().map(|token| token.to_string()),
                sku: committed.aggregate_id,
                version: committed.version,
                position: committed.position,
            },
        }
    }
}

impl Accepted<OrderAccepted> {
    pub fn order(status: StatusCode, committed: Committed) -> Self {
        let location =
            (status == StatusCode::CREATED).then(|| format!("/orders/{}", committed.aggregate_id));
        Self {
            status,
            version: committed.version,
            location,
            replayed: committed.replayed,
            body: OrderAccepted {
                consistency_token: committed.token().map(|token| token.to_string()),
                order_id: committed.aggregate_id,
                version: committed.version,
                position: committed.position,
            },
        }
    }
}

impl<B: Serialize> IntoResponse for Accepted<B> {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", self.version)) {
            headers.insert(header::ETAG, etag);
        }
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(header::LOCATION, location);
        }
        if self.replayed {
            headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}
