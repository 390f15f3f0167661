//! Group commit: commands that arrive together share a transaction, and each still gets
//! its own answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use domain::inventory::{InventoryCommand, InventoryError, InventoryItem};
use infra::commands::{CommandExecutor, CommandOptions, ExecuteError, ExecutorPolicy};
use infra::event_store::EventLog;
use sqlx::PgPool;

use crate::helpers::{inventory, keyed, register, registered_item, restock, t};

fn order(n: u8) -> domain::ids::OrderId {
    domain::ids::OrderId::from(uuid::Uuid::from_bytes([n; 16]))
}

/// The transaction that wrote each event of a stream, by sequence.
async fn transactions(pool: &PgPool, sku: &str) -> HashMap<i64, String> {
    sqlx::query_as::<_, (i64, String)>(
        "SELECT sequence, transaction_id::text FROM events
          WHERE aggregate_type = 'inventory_item' AND aggregate_id = $1",
    )
    .bind(sku)
    .fetch_all(pool)
    .await
    .expect("test setup")
    .into_iter()
    .collect()
}

/// Sends commands `1..=commands` (each `command(i)` says which item, what and how) from a
/// process of its own (a runtime and a pool of its own), kills it once a fifth is
/// acknowledged, the rest queued or in a batch (every task stops where it is, every
/// connection closes), and returns the acknowledged ones.
fn dying_process(
    pool: &PgPool,
    commands: u32,
    command: impl Fn(u32) -> (&'static str, InventoryCommand, CommandOptions) + Send + Sync + 'static,
) -> HashSet<u32> {
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let connect = pool.connect_options().as_ref().clone();
    let command = Arc::new(command);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test setup");
        runtime.block_on(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_with(connect)
                .await
                .expect("test setup");
            let items = inventory(&pool, ExecutorPolicy::without_snapshots());
            let count = Arc::new(AtomicUsize::new(0));
            for i in 1..=commands {
                let (items, acked, count) = (items.clone(), acked_tx.clone(), count.clone());
                let (sku, command, options) = command(i);
                tokio::spawn(async move {
                    if items.execute(sku, command, options).await.is_ok() {
                        let _ = acked.send(i);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            while count.load(Ordering::SeqCst) < commands as usize / 5 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        runtime.shutdown_background();
    })
    .join()
    .expect("the dying process's thread");
    acked_rx.try_iter().collect()
}

/// Fifty commands on one aggregate at once, from one process: every one commits, in far
/// fewer transactions than commands, and none conflicts (one attempt each is allowed).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn commands_on_one_aggregate_share_transactions_and_never_conflict(pool: PgPool) {
    registered_item(&pool, "HOT").await;
    let items = inventory(
        &pool,
        ExecutorPolicy {
            max_attempts: 1,
            ..ExecutorPolicy::without_snapshots()
        },
    );
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let items = items.clone();
            tokio::spawn(async move {
                items
                    .execute("HOT", restock(1), CommandOptions::default())
                    .await
            })
        })
        .collect();
    let mut committed = Vec::new();
    for task in tasks {
        committed.push(task.await.unwrap().expect("no conflict, no failure"));
    }
    let versions: HashSet<u64> = committed.iter().map(|c| c.version).collect();
    assert_eq!(versions, (2..=51).collect());
    // Each command reports the position of its own event.
    let stream = EventLog::new(pool.clone())
        .read_stream("inventory_item", "HOT")
        .await
        .unwrap();
    for c in &committed {
        let event = &stream[usize::try_from(c.version).unwrap() - 1];
        assert_eq!(c.position, Some(event.position));
    }
    let transactions: HashSet<String> = transactions(&pool, "HOT")
        .await
        .into_iter()
        .filter(|(sequence, _)| *sequence > 1)
        .map(|(_, tx)| tx)
        .collect();
    assert!(
        transactions.len() < 25,
        "50 concurrent commands took {} transactions",
        transactions.len()
    );
}

/// One batch with a refused command, a replayed key, a key used twice and plain commands on
/// two aggregates: each gets its own answer, the refused one stores nothing and does not
/// burn its key.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn each_command_of_a_batch_gets_its_own_answer(pool: PgPool) {
    let setup = registered_item(&pool, "A").await;
    setup
        .execute("B", register("B", 0), CommandOptions::default())
        .await
        .unwrap();
    // A fresh executor (another process): nothing cached, every state is loaded.
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    let requests: Vec<(&str, InventoryCommand, CommandOptions)> = vec![
        ("A", restock(1), keyed("ka", 1)),
        ("NOPE", restock(1), keyed("kn", 2)),
        ("B", restock(2), CommandOptions::default()),
        ("A", restock(1), keyed("ka", 1)),
        ("A", restock(4), CommandOptions::default()),
    ];
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(id, command, options)| {
            let items = items.clone();
            tokio::spawn(async move { items.execute(id, command, options).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let first = outcomes[0].as_ref().unwrap();
    assert!(matches!(
        outcomes[1],
        Err(ExecuteError::Rejected(InventoryError::NotRegistered))
    ));
    let b = outcomes[2].as_ref().unwrap();
    let again = outcomes[3].as_ref().unwrap();
    let plain = outcomes[4].as_ref().unwrap();
    assert_eq!((b.version, b.appended), (2, 1));
    assert!(again.replayed, "the repeated key replays the first outcome");
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    let mut a_versions = [first.version, plain.version];
    a_versions.sort_unstable();
    assert_eq!(a_versions, [2, 3]);
    // A and B's commands shared one transaction.
    let a = transactions(&pool, "A").await;
    let b_tx = transactions(&pool, "B").await;
    assert_eq!(a[&2], a[&3]);
    assert_eq!(a[&2], b_tx[&2]);
    // Two registrations and three restocks; nothing for NOPE.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 5);
    // The refused command's key was given back: once NOPE exists, the key runs.
    items
        .execute("NOPE", register("NOPE", 0), CommandOptions::default())
        .await
        .unwrap();
    let retried = items
        .execute("NOPE", restock(1), keyed("kn", 2))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(retried.version, 2);
}

/// A no-op decided after another command of the same batch appended reports that append's
/// position, the aggregate's latest.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_no_op_after_an_append_in_the_same_batch_reports_its_position(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let items: CommandExecutor<InventoryItem> =
        inventory(&pool, ExecutorPolicy::without_snapshots());
    let reserve = InventoryCommand::Reserve {
        order_id: order(1),
        quantity: domain::money::Quantity::new(1).unwrap(),
        at: t(2),
    };
    // Releasing an order that reserved nothing changes nothing.
    let release = InventoryCommand::Release {
        order_id: order(2),
        at: t(3),
    };
    let (first, second) = {
        let (a, b) = (items.clone(), items.clone());
        let first =
            tokio::spawn(async move { a.execute("SKU", reserve, CommandOptions::default()).await });
        let second =
            tokio::spawn(async move { b.execute("SKU", release, CommandOptions::default()).await });
        (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        )
    };
    assert_eq!((first.version, first.appended), (2, 1));
    assert_eq!((second.version, second.appended), (2, 0));
    assert_eq!(second.position, first.position);
}

/// With group commit off, each command has a transaction of its own.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn without_group_commit_each_command_has_its_own_transaction(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let items = inventory(
        &pool,
        ExecutorPolicy::without_snapshots().without_group_commit(),
    );
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let items = items.clone();
            tokio::spawn(async move {
                items
                    .execute("SKU", restock(1), CommandOptions::default())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let transactions: HashSet<String> = transactions(&pool, "SKU").await.into_values().collect();
    assert_eq!(transactions.len(), 11);
}

/// A process dies (its runtime is torn down, connections and all) while batches are in
/// flight. Every command it acknowledged is stored; retried with their keys, all commands
/// take effect exactly once: the acknowledged ones replay, the others run (or replay, when
/// the batch committed but the answer was lost with the process).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_process_dying_mid_batch_loses_no_acknowledged_command_and_applies_none_twice(
    pool: PgPool,
) {
    const COMMANDS: u32 = 500;
    registered_item(&pool, "SKU").await;
    let acked = dying_process(&pool, COMMANDS, |i| {
        ("SKU", restock(1), keyed(&format!("k{i}"), 1))
    });
    eprintln!(
        "{} of {COMMANDS} commands acknowledged before the kill",
        acked.len()
    );
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    for i in 1..=COMMANDS {
        let retried = items
            .execute("SKU", restock(1), keyed(&format!("k{i}"), 1))
            .await
            .expect("the retry succeeds");
        if acked.contains(&i) {
            assert!(retried.replayed, "acknowledged command {i} was lost");
        }
    }
    let restocks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE aggregate_id = 'SKU' AND event_type = 'InventoryItemRestocked'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        restocks, COMMANDS as i64,
        "each command took effect exactly once"
    );
}

/// A batch without idempotency keys appends on its own (no transaction around it), and in
/// the order of its aggregates' ids whatever order its commands came in, so two processes'
/// batches never wait for each other in a cycle.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_batch_appends_its_aggregates_in_the_order_of_their_ids(pool: PgPool) {
    let skus: Vec<String> = (0..8).rev().map(|i| format!("SKU-{i}")).collect();
    for sku in &skus {
        registered_item(&pool, sku).await;
    }
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    // Queued in descending order of id, while the first batch commits.
    let tasks: Vec<_> = (0..3)
        .flat_map(|_| skus.clone())
        .map(|sku| {
            let items = items.clone();
            tokio::spawn(async move {
                items
                    .execute(&sku, restock(1), CommandOptions::default())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("committed");
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text, aggregate_id, sequence FROM events
          WHERE event_type = 'InventoryItemRestocked' ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_transaction: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
    for (transaction, id, sequence) in &rows {
        by_transaction
            .entry(transaction)
            .or_default()
            .push((id, *sequence));
    }
    let mut spanning = 0;
    for appended in by_transaction.values() {
        let mut sorted = appended.clone();
        sorted.sort();
        assert_eq!(appended, &sorted, "appended out of id order");
        if appended
            .iter()
            .map(|(id, _)| id)
            .collect::<HashSet<_>>()
            .len()
            > 1
        {
            spanning += 1;
        }
    }
    assert!(
        spanning > 0,
        "no batch held two aggregates: {by_transaction:?}"
    );
}

/// A process dies while batches without idempotency keys are in flight, each batch's append
/// committing on its own. Every command it acknowledged is stored, none twice (each restock
/// carries a quantity of its own).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_process_dying_mid_batch_without_keys_loses_no_acknowledged_command(pool: PgPool) {
    const COMMANDS: u32 = 400;
    let skus = ["A", "B", "C"];
    for sku in skus {
        registered_item(&pool, sku).await;
    }
    let acked = dying_process(&pool, COMMANDS, move |units| {
        let sku = skus[units as usize % skus.len()];
        (sku, restock(units), CommandOptions::default())
    });
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT jsonb_path_query_first(payload, '$.**.quantity')::bigint FROM events
          WHERE event_type = 'InventoryItemRestocked'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let distinct: HashSet<u32> = stored.iter().map(|&q| u32::try_from(q).unwrap()).collect();
    assert_eq!(distinct.len(), stored.len(), "a command took effect twice");
    assert!(
        acked.is_subset(&distinct),
        "acknowledged commands were lost: {:?}",
        acked.difference(&distinct).collect::<Vec<_>>()
    );
    assert!(acked.len() >= COMMANDS as usize / 5);
}

/// Sequences of one aggregate in log order, `(transaction_id, position)`.
async fn in_log_order(pool: &PgPool, sku: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY transaction_id, position",
    )
    .bind(sku)
    .fetch_all(pool)
    .await
    .expect("read the log")
}

/// A transaction gets its id at its first write, and the log is in the order of those ids:
/// a batch that claimed a key (a write) before reading an aggregate could append after an
/// event it read, under a smaller id, and readers of the log would see the two swapped.
/// Here a batch's second key is held by a request in flight while another process appends
/// to the batch's aggregate; the batch reads the aggregate before it claims, so its events
/// come after that append in the log too.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_batch_waiting_for_a_key_never_appends_before_what_it_read(pool: PgPool) {
    let other_process = registered_item(&pool, "SKU").await;
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    // A request in flight elsewhere holds two keys.
    let mut held = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, aggregate_type, aggregate_id)
         SELECT k, '\\x00', 'inventory_item', 'ELSEWHERE' FROM UNNEST(ARRAY['held-0', 'held-1']) k",
    )
    .execute(&mut *held)
    .await
    .unwrap();
    let run = |key: &'static str| {
        let items = items.clone();
        tokio::spawn(async move { items.execute("SKU", restock(1), keyed(key, 1)).await })
    };
    // The first batch waits for held-0 and gives up (its command runs alone, and waits on);
    // meanwhile the next two queue, and make the second batch: it claims `first`, then waits
    // for held-1.
    let blocker = run("held-0");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let first = run("first");
    let second = run("held-1");
    tokio::time::sleep(std::time::Duration::from_millis(280)).await;
    // While it waits, another process appends to the same aggregate.
    other_process
        .execute("SKU", restock(1), CommandOptions::default())
        .await
        .unwrap();
    held.rollback().await.unwrap();
    for task in [blocker, first, second] {
        task.await.unwrap().expect("committed");
    }
    let sequences = in_log_order(&pool, "SKU").await;
    assert_eq!(sequences, (1..=5).collect::<Vec<_>>(), "the log's order");
}

/// Two processes (two executors, each with its own cache and batches) write one aggregate
/// at once, with idempotency keys: the log holds its events in sequence order.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_processes_writing_one_aggregate_keep_its_events_in_order_in_the_log(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let processes = [
        inventory(&pool, ExecutorPolicy::without_snapshots()),
        inventory(&pool, ExecutorPolicy::without_snapshots()),
    ];
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let items = processes[i % 2].clone();
            tokio::spawn(async move {
                let options = keyed(&format!("k{i}"), 1);
                items.execute("SKU", restock(1), options).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("committed");
    }
    let sequences = in_log_order(&pool, "SKU").await;
    assert_eq!(sequences, (1..=301).collect::<Vec<_>>(), "the log's order");
}
