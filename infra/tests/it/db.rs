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
    // A generic plan made while a table was tiny must not scan it once it has grown.
    assert_eq!(show("enable_seqscan").await, "off");
    pool.close().await;
}

/// A pooled connection that died while it sat idle (PostgreSQL restarted, say) is replaced
/// when handed out, rather than failing the first statement sent on it.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_connection_that_died_while_idle_is_replaced(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let settings = load_from(|name| match name {
        "DATABASE_MAX_CONNECTIONS" => Some("1".to_owned()),
        _ => None,
    })
    .unwrap()
    .database;
    let pool = db::connect(db::tune(connect.clone(), &settings), &settings)
        .await
        .unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await
        .unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(ended);
    tokio::time::sleep(db::IDLE_BEFORE_PING + std::time::Duration::from_millis(200)).await;
    let now: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a live connection");
    assert_ne!(now, backend);
    pool.close().await;
}
