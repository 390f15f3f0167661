//! Building and running the query API.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use infra::config::{HttpSettings, Settings};
use infra::db::Pool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::consistency::Checkpoints;
use crate::state::AppState;

/// A bound, ready-to-run query API, with its checkpoint watcher running.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    watcher: JoinHandle<()>,
}

impl Application {
    /// Connects to PostgreSQL, migrates (unless disabled), binds `READ_ADDR`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let options = infra::db::connect_options(&settings.database)?;
        let pool = infra::db::connect(options, &settings.database).await?;
        if settings.database.migrate_on_start {
            infra::db::migrate(&pool).await?;
        }
        Self::build_with_pool(pool, &settings.read_api).await
    }

    /// Binds `http.addr` (port 0 picks a free port, as tests do) and wires the routes.
    pub async fn build_with_pool(pool: Pool, http: &HttpSettings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(http.addr)
            .await
            .with_context(|| format!("failed to bind {}", http.addr))?;
        let checkpoints = Checkpoints::new(pool.clone());
        let watcher = tokio::spawn(checkpoints.clone().watch());
        let state = AppState { pool, checkpoints };
        let router = crate::http::router(state, http.request_timeout);
        Ok(Self {
            listener,
            router,
            watcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes, then drains in-flight requests (at most `drain`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let result =
            http_kit::serve::run_until_stopped(self.listener, self.router, shutdown, drain).await;
        // Cancel the watcher and wait for it, so its LISTEN connection is back in the pool
        // (a pool being closed waits for it).
        self.watcher.abort();
        let _ = self.watcher.await;
        result
    }
}
