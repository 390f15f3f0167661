//! Probes: `/livez` says the process serves HTTP; `/readyz` also checks PostgreSQL.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: answers as long as the process can serve requests. Checks no dependency, so a
/// database outage does not get healthy processes restarted.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: PostgreSQL answers within two seconds.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "PostgreSQL is unreachable", body = super::error::Problem,
            content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    let ping = infra::db::ping(&app.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(Json(Health { status: "ready" })),
        Ok(Err(err)) => Err(ApiError::Unavailable(
            anyhow::Error::new(err).context("PostgreSQL ping failed"),
        )),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "PostgreSQL ping timed out"
        ))),
    }
}
