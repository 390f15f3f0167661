//! What every handler can reach.

use std::sync::Arc;

use infra::db::Pool;

use crate::cache::OrderCache;
use crate::consistency::Checkpoints;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: Pool,
    pub checkpoints: Arc<Checkpoints>,
    pub orders: Arc<OrderCache>,
}

impl axum::extract::FromRef<AppState> for Pool {
    fn from_ref(state: &AppState) -> Pool {
        state.pool.clone()
    }
}
