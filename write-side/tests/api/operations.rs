//! Probes, the OpenAPI document, the docs page, and shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn liveness_and_readiness_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let live = app.get("/livez").await;
    assert_eq!(live.status(), StatusCode::OK);
    assert!(live.headers().get("x-request-id").is_some());
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn readiness_fails_when_postgresql_is_gone_but_liveness_does_not(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.pool.close().await;
    assert_problem(
        app.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert_eq!(app.get("/livez").await.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_openapi_document_lists_every_route(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/inventory",
        "/inventory/{sku}/restock",
        "/orders",
        "/orders/{id}/cancel",
        "/orders/{id}/ship",
        "/sagas/{order_id}/retry",
        "/livez",
        "/readyz",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    assert!(spec["components"]["schemas"]["ProblemBody"].is_object());
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_docs_page_is_served_from_the_binary(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    // Offline: the page loads its scripts from this server, not from a CDN.
    assert!(!html.contains("https://"), "{html}");
    let script = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn shutdown_stops_the_server(pool: PgPool) {
    let http = infra::config::HttpSettings {
        addr: ([127, 0, 0, 1], 0).into(),
        request_timeout: Duration::from_secs(5),
    };
    let app = write_side::Application::build_with_pool(pool, &http)
        .await
        .unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let url = format!("http://{addr}/livez");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), StatusCode::OK);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(
        reqwest::get(&url).await.is_err(),
        "nothing listens any more"
    );
}
