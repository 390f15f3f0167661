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

use crate::cache::{DEFAULT_CAPACITY, OrderCache};
use crate::consistency::Checkpoints;
use crate::state::AppState;

/// A bound, ready-to-run query API, with its checkpoint watcher running.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    watcher: JoinHandle<()>,
    follower: JoinHandle<()>,
}

impl Application {
    /// Connects to PostgreSQL, migrates (unless disabled), binds `READ_ADDR`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let options = infra::db::connect_options(&settings.database)?;
        let pool = infra::db::connect(options, &settings.database).await?;
        if settings.database.migrate_on_start {
            infra::db::migrate(&pool).await?;
        }
        Self::build_with(pool, &settings.read_api, settings.read_cache_orders).await
    }

    /// Binds `http.addr` (port 0 picks a free port, as tests do) and wires the routes, with
    /// the default order cache.
    pub async fn build_with_pool(pool: Pool, http: &HttpSettings) -> anyhow::Result<Self> {
        Self::build_with(pool, http, DEFAULT_CAPACITY).await
    }

    /// The same, caching at most `cached_orders` orders (0: no cache).
    pub async fn build_with(
        pool: Pool,
        http: &HttpSettings,
        cached_orders: usize,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(http.addr)
            .await
            .with_context(|| format!("failed to bind {}", http.addr))?;
        let checkpoints = Checkpoints::new(pool.clone());
        let watcher = tokio::spawn(checkpoints.clone().watch());
        let orders = OrderCache::new(cached_orders, checkpoints.clone());
        let follower = tokio::spawn(orders.clone().follow(pool.clone()));
        let state = AppState {
            pool,
            checkpoints,
            orders,
        };
        let router = crate::http::router(state, http.request_timeout);
        Ok(Self {
            listener,
            router,
            watcher,
            follower,
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
        // Cancel the watcher and the cache's follower and wait for them, so their connections
        // are back in the pool (a pool being closed waits for them).
        self.watcher.abort();
        self.follower.abort();
        let _ = self.watcher.await;
        let _ = self.follower.await;
        result
    }
}
