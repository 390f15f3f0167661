//! Serving a router until shutdown, with a bounded drain.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

/// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
/// finish, for at most `drain`.
pub async fn run_until_stopped(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let serve = std::pin::pin!(serve.into_future());
    tokio::select! {
        result = serve => result.context("the HTTP server failed"),
        () = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?drain, "in-flight requests did not finish in time; exiting");
            Ok(())
        }
    }
}
