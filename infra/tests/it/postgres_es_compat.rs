//! Our `events` table is postgres-es's, extended: postgres-es and cqrs-es still read and
//! write it, and what they write joins the global log.

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{CqrsFramework, EventStore};
use domain::inventory::{InventoryItem, InventoryState};
use infra::commands::{CommandOptions, ExecutorPolicy};
use infra::event_store::{Checkpoint, EventLog};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

use crate::helpers::{follow, inventory, register, restock};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn postgres_es_loads_what_we_wrote_and_what_it_writes_joins_the_log(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    items
        .execute("SKU", register("SKU", 4), CommandOptions::default())
        .await
        .unwrap();
    items
        .execute("SKU", restock(1), CommandOptions::default())
        .await
        .unwrap();

    let store: PersistedEventStore<PostgresEventRepository, InventoryItem> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
    let context = store.load_aggregate("SKU").await.unwrap();
    let InventoryState::Registered(levels) = context.aggregate.state() else {
        panic!("postgres-es should see a registered item");
    };
    assert_eq!(levels.on_hand(), 5);

    let cqrs = CqrsFramework::new(store, vec![], ());
    cqrs.execute("SKU", restock(2)).await.unwrap();
    let events = follow(&EventLog::new(pool.clone()), Checkpoint::START, 3).await;
    assert_eq!(events.len(), 3);
    let written_by_postgres_es = &events[2];
    assert_eq!(written_by_postgres_es.sequence, 3);
    assert!(written_by_postgres_es.position > events[1].position);
    assert_eq!(written_by_postgres_es.event_type, "InventoryItemRestocked");
    // And our executor continues the stream postgres-es extended.
    let next = items
        .execute("SKU", restock(1), CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(next.version, 4);
}
