use domain::money::Currency;
use domain::ports::Catalog;
use domain::text::Sku;
use infra::catalog::PgCatalog;
use infra::commands::{CommandOptions, ExecutorPolicy};
use sqlx::PgPool;

use crate::helpers::{inventory, register, t};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_catalog_knows_registered_skus_and_their_currency(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    items
        .execute("EUR-1", register("EUR-1", 1), CommandOptions::default())
        .await
        .unwrap();
    let usd = domain::inventory::InventoryCommand::Register {
        sku: Sku::parse("USD-1").unwrap(),
        name: domain::text::ItemName::parse("Cup").unwrap(),
        unit_price: domain::money::Money::new(5, Currency::parse("USD").unwrap()).unwrap(),
        initial_stock: 0,
        at: t(0),
    };
    items
        .execute("USD-1", usd, CommandOptions::default())
        .await
        .unwrap();
    let skus = ["EUR-1", "USD-1", "NOPE"].map(|s| Sku::parse(s).unwrap());
    let facts = PgCatalog::new(pool).facts_for(&skus).await.unwrap();
    assert_eq!(
        facts.currency_of(&skus[0]),
        Some(Currency::parse("EUR").unwrap())
    );
    assert_eq!(
        facts.currency_of(&skus[1]),
        Some(Currency::parse("USD").unwrap())
    );
    assert_eq!(facts.currency_of(&skus[2]), None);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn registrations_are_cached_and_unknown_skus_are_asked_again(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    items
        .execute("A-1", register("A-1", 1), CommandOptions::default())
        .await
        .unwrap();
    let catalog = PgCatalog::new(pool.clone());
    let a = [Sku::parse("A-1").unwrap()];
    let b = [Sku::parse("B-1").unwrap()];
    assert!(
        catalog
            .facts_for(&a)
            .await
            .unwrap()
            .currency_of(&a[0])
            .is_some()
    );
    assert_eq!(
        catalog.facts_for(&b).await.unwrap().currency_of(&b[0]),
        None
    );

    // An item registered after a miss is found: misses are not cached.
    items
        .execute("B-1", register("B-1", 1), CommandOptions::default())
        .await
        .unwrap();
    assert!(
        catalog
            .facts_for(&b)
            .await
            .unwrap()
            .currency_of(&b[0])
            .is_some()
    );

    // Both are now answered from memory, without the database.
    pool.close().await;
    let both = [a[0].clone(), b[0].clone()];
    let facts = catalog.facts_for(&both).await.unwrap();
    assert!(facts.currency_of(&both[0]).is_some() && facts.currency_of(&both[1]).is_some());
}
