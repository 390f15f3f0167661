//! `GET /projections`: how every read model is doing.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use infra::projection::status::{self, ProjectionStatus};

use crate::http::conditional;
use crate::http::error::QueryError;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionsReport {
    /// The highest position taken in the log.
    pub head_position: i64,
    #[schema(value_type = Vec<Object>)]
    pub projections: Vec<ProjectionStatus>,
}

/// Every projection: version, checkpoint, lag, state, last error, parked events.
#[utoipa::path(get, path = "/projections", tag = "operations",
    responses((status = 200, description = "Every projection", body = ProjectionsReport)))]
#[tracing::instrument(skip_all)]
pub async fn list_projections(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let (projections, head_position) = status::status(&app.pool, None).await?;
    let report = ProjectionsReport {
        head_position,
        projections,
    };
    Ok(conditional::respond(&headers, &report))
}
