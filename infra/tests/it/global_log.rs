//! The global log never skips an event committed out of position order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::money::Quantity;
use infra::event_store::stream::append;
use infra::event_store::{Checkpoint, EventLog, EventMetadata};
use sqlx::PgPool;

use crate::helpers::{follow, registered_item, t};

fn restocked(units: u32) -> InventoryEvent {
    InventoryEvent::Restocked {
        quantity: Quantity::new(units).expect("quantity"),
        at: t(1),
    }
}

/// The events already in the log, and the checkpoint after them.
async fn settled(log: &EventLog, count: usize) -> Checkpoint {
    let events = follow(log, Checkpoint::START, count).await;
    assert_eq!(events.len(), count);
    events.last().map_or(Checkpoint::START, |e| e.checkpoint())
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_event_committed_after_a_later_position_is_read_exactly_once(pool: PgPool) {
    infra::telemetry::init_for_tests();
    registered_item(&pool, "EARLY").await;
    registered_item(&pool, "LATE").await;
    let log = EventLog::new(pool.clone());
    let start = settled(&log, 2).await;

    // Transaction A takes the lower position and stays open...
    let mut slow = pool.begin().await.unwrap();
    append::<InventoryItem>(
        &mut slow,
        "EARLY",
        1,
        &[restocked(1)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    // ...while transaction B takes a higher position and commits first.
    let mut fast = pool.begin().await.unwrap();
    let fast_appended = append::<InventoryItem>(
        &mut fast,
        "LATE",
        1,
        &[restocked(2)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    fast.commit().await.unwrap();

    // A reader that follows positions alone sees B now and checkpoints past A: the bug.
    let naive: Vec<i64> = sqlx::query_scalar("SELECT position FROM events WHERE position > $1")
        .bind(start.position)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(naive, vec![fast_appended.last_position]);

    // The gap-safe reader returns nothing while A is open: B is not settled yet.
    assert!(log.read_after(start, 100).await.unwrap().is_empty());

    slow.commit().await.unwrap();
    let events = follow(&log, start, 2).await;
    let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    // A's transaction id is older, so it comes first, even though its position is lower
    // than B's only by accident of timing: the order is (transaction_id, position).
    assert_eq!(ids, ["EARLY", "LATE"]);
    assert!(events[0].position < events[1].position);
    assert!(events[0].checkpoint() < events[1].checkpoint());
    // Nothing more, and no repeats, after the last checkpoint.
    assert!(
        log.read_after(events[1].checkpoint(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    // And the order is stable: reading again from the start gives the same sequence.
    let again = follow(&log, start, 2).await;
    assert_eq!(again, events);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rolled_back_transaction_leaves_no_event_and_blocks_nothing(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let log = EventLog::new(pool.clone());
    let start = settled(&log, 1).await;
    let mut aborted = pool.begin().await.unwrap();
    append::<InventoryItem>(
        &mut aborted,
        "SKU",
        1,
        &[restocked(1)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    aborted.rollback().await.unwrap();
    let mut committed = pool.begin().await.unwrap();
    append::<InventoryItem>(
        &mut committed,
        "SKU",
        1,
        &[restocked(2)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    committed.commit().await.unwrap();
    let events = follow(&log, start, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        serde_json::from_value::<InventoryEvent>(events[0].payload.clone()).unwrap(),
        restocked(2)
    );
}

/// Many writers commit in random order while a reader follows: every event arrives exactly
/// once and checkpoints only grow.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_reader_following_concurrent_writers_sees_every_event_once(pool: PgPool) {
    const WRITERS: usize = 8;
    const EVENTS_PER_WRITER: usize = 40;
    let n_items = WRITERS;
    for i in 0..n_items {
        registered_item(&pool, &format!("SKU-{i}")).await;
    }
    let log = EventLog::new(pool.clone());
    let start = settled(&log, n_items).await;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let log = log.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checkpoint = start;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = log.read_after(checkpoint, 16).await.unwrap();
                for event in &batch {
                    assert!(
                        event.checkpoint() > checkpoint,
                        "checkpoints must only grow"
                    );
                    checkpoint = event.checkpoint();
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                if finished && seen.len() >= WRITERS * EVENTS_PER_WRITER {
                    return seen;
                }
                if empty {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let sku = format!("SKU-{w}");
                for i in 0..EVENTS_PER_WRITER {
                    let mut tx = pool.begin().await.unwrap();
                    // Take an xid early and do other work before appending, so transaction
                    // order and position order disagree often.
                    sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    if (w + i) % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    let version = 1 + i as u64;
                    append::<InventoryItem>(
                        &mut tx,
                        &sku,
                        version,
                        &[restocked(1)],
                        &EventMetadata::default(),
                    )
                    .await
                    .unwrap();
                    if (w * 7 + i) % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), reader)
        .await
        .expect("the reader catches up")
        .unwrap();
    assert_eq!(seen.len(), WRITERS * EVENTS_PER_WRITER);
    let unique: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    // Per aggregate, events arrive in sequence order.
    for w in 0..WRITERS {
        let sku = format!("SKU-{w}");
        let sequences: Vec<i64> = seen
            .iter()
            .filter(|e| e.aggregate_id == sku)
            .map(|e| e.sequence)
            .collect();
        assert_eq!(
            sequences,
            (2..2 + EVENTS_PER_WRITER as i64).collect::<Vec<_>>()
        );
    }
    assert_eq!(seen[0].aggregate_type, InventoryItem::TYPE);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn head_is_the_highest_position_taken(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    assert_eq!(log.head().await.unwrap(), 0);
    registered_item(&pool, "A").await;
    registered_item(&pool, "B").await;
    let events = follow(&log, Checkpoint::START, 2).await;
    assert_eq!(log.head().await.unwrap(), events[1].position);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn stored_events_carry_ids_transaction_ids_and_metadata(pool: PgPool) {
    let correlation_id = uuid::Uuid::new_v4();
    let mut tx = pool.begin().await.unwrap();
    let metadata = EventMetadata {
        correlation_id: Some(correlation_id),
        causation_id: None,
        idempotency_key: Some("key-1".to_owned()),
        extra: [("request_id".to_owned(), "r-1".to_owned())].into(),
    };
    append::<InventoryItem>(&mut tx, "SKU", 0, &[restocked(1), restocked(2)], &metadata)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let events = EventLog::new(pool.clone())
        .read_stream("inventory_item", "SKU")
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].event_id, events[1].event_id);
    assert_eq!(
        events[0].transaction_id, events[1].transaction_id,
        "one transaction"
    );
    assert!(events[0].position < events[1].position);
    assert_eq!(events[0].event_type, "InventoryItemRestocked");
    assert_eq!(events[0].event_version, "1.0");
    assert_eq!(events[0].correlation_id, Some(correlation_id));
    assert_eq!(events[0].idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(events[0].metadata, serde_json::json!({"request_id": "r-1"}));
}

/// Transaction ids are ordered as numbers, also where their decimal forms would sort the
/// other way ("1000" < "999" as text).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn transaction_ids_are_ordered_numerically(pool: PgPool) {
    for (aggregate_id, transaction_id) in [("c", "1000"), ("b", "999"), ("a", "99")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, transaction_id)
             VALUES ('test', $1, 1, 'Tested', '1.0', '{}', $2::xid8)",
        )
        .bind(aggregate_id)
        .bind(transaction_id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let events = follow(&EventLog::new(pool), Checkpoint::START, 3).await;
    let transaction_ids: Vec<u64> = events.iter().map(|e| e.transaction_id).collect();
    assert_eq!(transaction_ids, [99, 999, 1000]);
}

/// A decoding read returns every event, in order, but payloads only of the types asked for,
/// handed to the decoder as their JSON text.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_decoding_read_skips_only_the_payloads_of_other_types(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let mut tx = pool.begin().await.unwrap();
    append::<InventoryItem>(
        &mut tx,
        "SKU",
        1,
        &[restocked(4)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let full = follow(&EventLog::new(pool.clone()), Checkpoint::START, 2).await;
    // The same events; the payloads asked for handed over as their text (and those alone),
    // none kept as a tree.
    let decoding = infra::event_store::log::read_after_decoding(
        &pool,
        Checkpoint::START,
        10,
        &["InventoryItemRestocked"],
        |stored, text| {
            (
                stored.event_id,
                serde_json::from_str::<serde_json::Value>(text).unwrap(),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(decoding.len(), 2);
    assert_eq!(decoding[0].1, None, "not asked for");
    assert_eq!(
        decoding[1].1,
        Some((full[1].event_id, full[1].payload.clone()))
    );
    for ((stored, _), full) in decoding.iter().zip(&full) {
        assert_eq!(stored.payload, serde_json::Value::Null);
        assert_eq!(stored.metadata, serde_json::Value::Null);
        let without_payload = infra::event_store::StoredEvent {
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            ..full.clone()
        };
        assert_eq!(*stored, without_payload);
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_stream_reads_backwards_a_page_at_a_time(pool: PgPool) {
    registered_item(&pool, "MUG").await;
    let mut tx = pool.begin().await.unwrap();
    append::<InventoryItem>(
        &mut tx,
        "MUG",
        1,
        &[restocked(1), restocked(2), restocked(3), restocked(4)],
        &EventMetadata::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let log = EventLog::new(pool.clone());
    let sequences = |page: Vec<infra::event_store::StoredEvent>| -> Vec<i64> {
        page.iter().map(|e| e.sequence).collect()
    };
    let newest = log
        .read_stream_backwards(InventoryItem::TYPE, "MUG", None, 2)
        .await
        .unwrap();
    assert_eq!(sequences(newest), [5, 4]);
    let older = log
        .read_stream_backwards(InventoryItem::TYPE, "MUG", Some(4), 2)
        .await
        .unwrap();
    assert_eq!(sequences(older), [3, 2]);
    let oldest = log
        .read_stream_backwards(InventoryItem::TYPE, "MUG", Some(2), 2)
        .await
        .unwrap();
    assert_eq!(sequences(oldest), [1]);
    assert!(
        log.read_stream_backwards(InventoryItem::TYPE, "MUG", Some(1), 2)
            .await
            .unwrap()
            .is_empty()
    );
}
