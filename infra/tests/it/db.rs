use infra::config::load_from;
use infra::db;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn every_session_carries_our_settings(_: PgPoolOptions, connect: PgConnectOptions) {
    let settings = load_from(|name| match name {
        "DATABASE_LOCK_TIMEOUT_MS" => Some("1234".to_owned()),
        "DATABASE_STATEMENT_TIMEOUT_MS" => Some("5678".to_owned()),
        _ => None,
    })
    .unwrap()
    .database;
    let pool = db::connect(db::tune(connect, &settings), &settings)
        .await
        .unwrap();
    let show = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(show("lock_timeout").await, "1234ms");
    assert_eq!(show("statement_timeout").await, "5678ms");
    // JIT compiled our short statements for hundreds of milliseconds each (see db::tune).
    assert_eq!(show("jit").await, "off");
    pool.close().await;
}
