//! `Copy`, the binary `COPY` encoder rebuilds write their folded rows with, against the real
//! database: every type it writes, NULLs, and rows past a chunk's end.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use infra::projection::{ApplyError, CHUNK_ROWS, Copy, CopyChunk, CopySink};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Writes each chunk at once on one connection, and keeps what it was given.
struct Direct {
    conn: PgConnection,
    chunks: Vec<(usize, bool)>,
}

impl Direct {
    /// On a connection of its own, after `create` made the table.
    async fn with_table(pool: &PgPool, create: &str) -> Self {
        sqlx::query(create)
            .execute(pool)
            .await
            .expect("the table is made");
        Self {
            conn: pool.acquire().await.expect("a connection").detach(),
            chunks: Vec::new(),
        }
    }
}

#[async_trait]
impl CopySink for Direct {
    async fn copy(&mut self, chunk: CopyChunk) -> Result<(), ApplyError> {
        self.chunks.push((chunk.rows, chunk.any_order));
        let mut copy = self.conn.copy_in_raw(&chunk.statement).await?;
        copy.send(chunk.data).await?;
        copy.finish().await?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Written {
    id: Uuid,
    n: i64,
    small: i32,
    flag: bool,
    at: DateTime<Utc>,
    label: Option<String>,
    doc: serde_json::Value,
    maybe: Option<i64>,
}

fn row(i: u32) -> Written {
    let n = i64::from(i);
    Written {
        id: Uuid::from_u128(u128::from(i) * 7_919 + 1),
        n: n - 3,
        small: i32::try_from(i % 1_000).expect("below 1,000") - 500,
        flag: i.is_multiple_of(3),
        // Microseconds, before and after PostgreSQL's epoch (2000-01-01).
        at: Utc
            .timestamp_opt(946_684_800 + (n - 2) * 86_399, 123_456_000)
            .unwrap(),
        label: (!i.is_multiple_of(4)).then(|| format!("tab\there, quote ' \\ and é {i}")),
        doc: serde_json::json!({ "i": i, "lines": [{ "sku": "A-1", "q": 2 }], "x": null }),
        maybe: (!i.is_multiple_of(5)).then_some(n * 1_000_000_007),
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn copy_writes_every_type_and_nulls_in_chunks(pool: PgPool) {
    let mut sink = Direct::with_table(
        &pool,
        "CREATE TABLE copied (id uuid PRIMARY KEY, n bigint NOT NULL, small integer NOT NULL,
                              flag boolean NOT NULL, at timestamptz NOT NULL, label text,
                              doc jsonb NOT NULL, maybe bigint)",
    )
    .await;
    let count = u32::try_from(CHUNK_ROWS).expect("a few thousand") + 2;
    let mut copy = Copy::into(
        &mut sink,
        "copied",
        "id, n, small, flag, at, label, doc, maybe",
        false,
    );
    for r in (0..count).map(row) {
        copy.uuid(r.id)
            .int(r.n)
            .int4(r.small)
            .bool(r.flag)
            .timestamp(r.at)
            .opt_text(r.label.as_deref())
            .json(&r.doc)
            .opt_int(r.maybe);
        copy.end_row().await.unwrap();
    }
    copy.finish().await.unwrap();
    assert_eq!(sink.chunks, vec![(CHUNK_ROWS, false), (2, false)]);

    let written: Vec<Written> = sqlx::query_as("SELECT * FROM copied ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: Vec<Written> = (0..count).map(row).collect();
    assert_eq!(written.len(), CHUNK_ROWS + 2);
    for (written, expected) in written.iter().zip(&expected) {
        assert_eq!(written, expected);
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_copy_of_no_rows_sends_nothing_and_a_wrong_type_fails_loudly(pool: PgPool) {
    let mut sink = Direct::with_table(&pool, "CREATE TABLE narrow (small integer NOT NULL)").await;
    Copy::into(&mut sink, "narrow", "small", true)
        .finish()
        .await
        .unwrap();
    assert!(sink.chunks.is_empty(), "no statement for no rows");

    // A bigint into an integer column: the binary format converts nothing.
    let mut copy = Copy::into(&mut sink, "narrow", "small", true);
    copy.int(1);
    copy.end_row().await.unwrap();
    let err = copy.finish().await.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22P03")),
        "{err:?}"
    );
}
