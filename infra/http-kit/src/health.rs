//! Probes: `/livez` says the process serves HTTP; `/readyz` also checks PostgreSQL. A
//! router using `readyz` needs `Pool: FromRef<its state>`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use infra::db::Pool;
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{Problem, common};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: answers as long as the process can serve requests. It checks no dependency, so
/// a database outage does not get healthy processes restarted.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: PostgreSQL answers within two seconds.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "PostgreSQL is unreachable", body = crate::ProblemBody,
            content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(pool): State<Pool>) -> Result<Json<Health>, Problem> {
    match tokio::time::timeout(Duration::from_secs(2), infra::db::ping(&pool)).await {
        Ok(Ok(())) => Ok(Json(Health { status: "ready" })),
        Ok(Err(err)) => Err(common::unavailable(
            anyhow::Error::new(err)
                .context("PostgreSQL ping failed")
                .as_ref(),
        )),
        Err(_) => Err(common::unavailable(
            anyhow::anyhow!("PostgreSQL ping timed out").as_ref(),
        )),
    }
}
