//! After-commit notifications: coalesced, and the latest call says what is sent.

use std::time::Duration;

use infra::event_store::notify::Notifier;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

const CHANNEL: &str = "ordo_test_notices";

/// The payloads that arrive until `quiet` passes without one.
async fn received(listener: &mut PgListener, quiet: Duration) -> Vec<String> {
    let mut payloads = Vec::new();
    while let Ok(Ok(notification)) = tokio::time::timeout(quiet, listener.recv()).await {
        payloads.push(notification.payload().to_owned());
    }
    payloads
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn coalesced_notifications_send_what_the_latest_commit_said(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let notifier = Notifier::on(pool.clone(), CHANNEL, "name".to_owned());

    // A burst of checkpoints: whatever is coalesced, the last one sent is the latest.
    for position in 1..=50 {
        notifier.committed_with(format!("name running 7 {position}"));
    }
    let payloads = received(&mut listener, Duration::from_millis(500)).await;
    assert!(!payloads.is_empty() && payloads.len() <= 50, "{payloads:?}");
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("name running 7 50")
    );

    // A plain commit after a checkpoint not sent yet (both before the notifier's task runs:
    // this runtime has one thread): the notifier's own payload replaces it, since it tells
    // listeners to read the row, which says more than the older checkpoint.
    notifier.committed_with("name running 7 51".to_owned());
    notifier.committed();
    let payloads = received(&mut listener, Duration::from_millis(500)).await;
    assert!(!payloads.is_empty(), "nothing sent");
    assert!(payloads.iter().all(|p| p == "name"), "{payloads:?}");
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn notifiers_sharing_a_task_each_send_their_own_latest(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener
        .listen_all([CHANNEL, "ordo_test_other"])
        .await
        .unwrap();
    let first = Notifier::on(pool.clone(), CHANNEL, "first".to_owned());
    let second = first.sharing(CHANNEL, "second".to_owned());
    let other = first.sharing("ordo_test_other", String::new());

    // Pending together (this runtime has one thread: nothing is sent before the await).
    first.committed_with("first running 1 1".to_owned());
    first.committed_with("first running 1 2".to_owned());
    second.committed();
    other.committed();
    let mut payloads = received(&mut listener, Duration::from_millis(500)).await;
    payloads.sort();
    assert_eq!(payloads, ["", "first running 1 2", "second"]);
}
