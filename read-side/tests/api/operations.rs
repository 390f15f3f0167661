//! Probes, the OpenAPI document and the docs page of the query API.

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::System;

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_query_api_documents_every_route_and_answers_probes(pool: PgPool) {
    let system = System::spawn(pool).await;
    assert_eq!(system.get("/livez").await.status(), StatusCode::OK);
    assert_eq!(system.get("/readyz").await.status(), StatusCode::OK);
    let spec: Value = system.get_json("/openapi.json").await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/orders/{id}",
        "/customers/{id}/orders",
        "/inventory/{sku}",
        "/inventory",
        "/stats/sales",
        "/projections",
        "/sagas",
        "/livez",
        "/readyz",
    ] {
        assert!(
            spec["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
    let docs = system.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(!docs.text().await.unwrap().contains("https://"));
    system.stop().await;
}
