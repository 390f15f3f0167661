//! `POST /sagas/{order_id}/retry`: an operator's retry of a failed or stuck saga.

use axum::Json;
use axum::extract::{Path, State};
use domain::ids::OrderId;
use http_kit::ProblemBody as Problem;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::ApiError;
use crate::sagas::store::{self, Retried};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAccepted {
    pub order_id: String,
    /// `resumed` (a failed saga goes back to the stage it failed in) or `rescheduled` (a
    /// waiting saga runs now).
    #[schema(example = "resumed")]
    pub outcome: &'static str,
}

/// Retries a fulfilment saga now: a failed one from the stage it failed in, a waiting one at
/// once, with its attempt count reset. See `GET /sagas?state=failed` on the query API.
#[utoipa::path(post, path = "/sagas/{order_id}/retry", tag = "operations",
    params(("order_id" = String, Path, description = "The order whose saga to retry")),
    responses(
        (status = 202, description = "The saga is due now", body = RetryAccepted),
        (status = 400, description = "Invalid order id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No saga for this order, or a runner is working on it right now (`saga_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The saga has finished (`saga_finished`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
pub async fn retry_saga(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<RetryAccepted>), ApiError> {
    let id: OrderId =
        order_id.parse().map_err(
            |err: domain::ids::InvalidId| ApiError::InvalidPathParameter {
                name: "order_id",
                detail: err.to_string(),
            },
        )?;
    let outcome = match store::retry(&app.pool, id)
        .await
        .map_err(|err| ApiError::Internal(err.into()))?
    {
        Retried::Resumed => "resumed",
        Retried::Rescheduled => "rescheduled",
        Retried::Finished => {
            return Err(ApiError::Rejected {
                code: "saga_finished",
                detail: "the saga has completed or been cancelled; there is nothing to retry"
                    .to_owned(),
            });
        }
        Retried::NotFound => {
            return Err(ApiError::NotFound {
                code: "saga_not_found",
                detail: "no saga for this order is waiting (it does not exist, or a runner holds it right now)"
                    .to_owned(),
            });
        }
    };
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(RetryAccepted {
            order_id: id.to_string(),
            outcome,
        }),
    ))
}
