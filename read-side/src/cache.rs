//! The order cache: `GET /orders/{id}` answers from memory when it can prove the answer is
//! the read model's.
//!
//! An entry is the response body of one order, read from `order_details` together with the
//! projection's checkpoint in the same statement (`as_of`: the row reflects every event up
//! to it, and none after). The cache follows the global log itself, gap-safe like any
//! follower, and drops an order's entry when it sees a later event that `order_details`
//! applies to that order (the order's and its payment's events, and the inventory events
//! that name it). So an entry whose order has no event in `(as_of, followed]` is the model's
//! answer for every checkpoint in `[as_of, max(as_of, followed)]`, and:
//!
//! - a read is answered from memory only if that range reaches its consistency token (after
//!   the usual wait for the projection) and the checkpoint this process last heard
//!   `order_details` report (its notices, or its row read every second); otherwise from the
//!   database. So a read never gets an answer older than the database gave when the
//!   projection's last notice arrived: without a token, what it may miss is only a batch
//!   whose notice is still on its way (the database may already show it);
//! - and only while the follower is healthy (it read the log within [`STALE_AFTER`]).
//!
//! An entry read before the follower saw an event of its order can arrive after the follower
//! passed that event: the follower keeps the last checkpoint at which it saw each order
//! touched (down to a floor), and an entry older than that, or than the floor, is not
//! stored. Anything that changes the model without an event (a rebuild's swap, an
//! operator's reset, a lost notification connection) bumps the [`Checkpoints`] epoch, and
//! the cache starts empty again; a read begun before the bump is not stored.
//!
//! A read with `Cache-Control: no-cache` goes to the database (and refreshes the entry).
//! Rows without a log checkpoint (a database fed from Kafka, where `projection_state` has no
//! checkpoint) are never cached. Bounded: at most `capacity` orders, oldest stored first out.
//!
//! [`Checkpoints`]: crate::consistency::Checkpoints

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderValue;
use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::Order;
use domain::payment::Payment;
use infra::event_store::{Checkpoint, EventLog, StoredEvent};
use infra::projection::events::{DomainEvent, decode};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::consistency::Checkpoints;
use crate::serving;

/// Orders kept by default (`READ_CACHE_ORDERS`); about 1.5 KB each.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Without a successful read of the log for this long, the cache answers nothing.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How often the follower reads the log when no projection progress wakes it.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Orders the follower remembers as touched before it raises the floor and forgets them.
const TOUCHED_LIMIT: usize = 100_000;

/// What an event means for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// `order_details` does not read it.
    Nothing,
    /// It may change this order's answer.
    Order(Uuid),
    /// It cannot be read: forget everything, to be safe.
    Everything,
}

/// Which order's answer `event` may change: a superset of what `order_details` applies.
pub fn touches(event: &StoredEvent) -> Touch {
    let aggregate = event.aggregate_type.as_str();
    if aggregate == Order::TYPE || aggregate == Payment::TYPE {
        // A payment's id is its order's.
        return Uuid::try_parse(&event.aggregate_id).map_or(Touch::Everything, Touch::Order);
    }
    if aggregate != InventoryItem::TYPE {
        return Touch::Nothing;
    }
    match decode(event) {
        Ok(DomainEvent::Inventory(
            InventoryEvent::Reserved { order_id, .. }
            | InventoryEvent::Released { order_id, .. }
            | InventoryEvent::Committed { order_id, .. },
        )) => Touch::Order(order_id.as_uuid()),
        Ok(_) => Touch::Nothing,
        Err(_) => Touch::Everything,
    }
}

/// One cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    pub etag: HeaderValue,
}

#[derive(Debug)]
struct Entry {
    cached: Cached,
    as_of: Checkpoint,
    /// Which insertion this is, so the eviction queue skips entries replaced since.
    stored: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Uuid, Entry>,
    queue: VecDeque<(Uuid, u64)>,
    stored: u64,
    /// Every event up to here has been seen (`None` until the follower starts).
    followed: Option<Checkpoint>,
    /// When the follower last read the log.
    followed_at: Option<Instant>,
    /// Entries read before this are not stored (their touches may be forgotten).
    floor: Checkpoint,
    /// The last checkpoint at which each order was touched, above `floor`.
    touched: HashMap<Uuid, Checkpoint>,
    /// The [`Checkpoints`] epoch the entries belong to.
    epoch: u64,
}

impl Inner {
    fn forget_all(&mut self) {
        self.entries.clear();
        self.queue.clear();
        self.touched.clear();
        self.floor = self.followed.unwrap_or_default();
    }

    /// Drops everything if the model changed without an event since the entries were read.
    fn sync_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.forget_all();
            self.epoch = epoch;
        }
    }

    fn healthy(&self) -> bool {
        self.followed_at
            .is_some_and(|at| at.elapsed() < STALE_AFTER)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct OrderCache {
    inner: Mutex<Inner>,
    capacity: usize,
    checkpoints: Arc<Checkpoints>,
}

/// What a reader captures before it reads the database, to store what it read.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket {
    epoch: u64,
}

impl OrderCache {
    /// A cache of at most `capacity` orders (0: none).
    pub fn new(capacity: usize, checkpoints: Arc<Checkpoints>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            capacity,
            checkpoints,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The order's answer if it is the model's for a read after `token` (the token's place
    /// in the log; `None` for a read without one) and after everything this process knows
    /// `order_details` to have applied: never older than the database's answer was when
    /// the projection's last notice arrived.
    pub fn get(&self, order_id: Uuid, token: Option<Checkpoint>) -> Option<Cached> {
        if self.capacity == 0 {
            return None;
        }
        let epoch = self.checkpoints.epoch();
        let applied = self.checkpoints.known(serving::ORDER_DETAILS);
        let needed = token.max(applied).unwrap_or_default();
        let mut inner = self.lock();
        inner.sync_epoch(epoch);
        if !inner.healthy() {
            return None;
        }
        let followed = inner.followed?;
        let entry = inner.entries.get(&order_id)?;
        (entry.as_of.max(followed) >= needed).then(|| entry.cached.clone())
    }

    /// Taken before reading the database; hand it to [`put`](Self::put).
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket {
            epoch: self.checkpoints.epoch(),
        }
    }

    /// Stores what a read found, unless it may already be stale: read before an event of
    /// the order the follower has seen, below the floor, or before a reset.
    pub fn put(&self, ticket: ReadTicket, order_id: Uuid, as_of: Checkpoint, cached: Cached) {
        if self.capacity == 0 || as_of == Checkpoint::START {
            return;
        }
        let epoch = self.checkpoints.epoch();
        let mut inner = self.lock();
        inner.sync_epoch(epoch);
        if ticket.epoch != epoch || inner.followed.is_none() || as_of < inner.floor {
            return;
        }
        if inner.touched.get(&order_id).is_some_and(|at| *at > as_of) {
            return;
        }
        if inner
            .entries
            .get(&order_id)
            .is_some_and(|entry| entry.as_of > as_of)
        {
            return;
        }
        inner.stored += 1;
        let stored = inner.stored;
        inner.entries.insert(
            order_id,
            Entry {
                cached,
                as_of,
                stored,
            },
        );
        inner.queue.push_back((order_id, stored));
        while inner.entries.len() > self.capacity {
            let Some((oldest, stored)) = inner.queue.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&oldest)
                .is_some_and(|e| e.stored == stored)
            {
                inner.entries.remove(&oldest);
            }
        }
        // Replaced and evicted entries leave stale keys behind; keep the queue bounded.
        if inner.queue.len() > 2 * self.capacity.max(1) {
            let Inner { queue, entries, .. } = &mut *inner;
            queue.retain(|(id, stored)| entries.get(id).is_some_and(|e| e.stored == *stored));
        }
    }

    /// Where the follower starts: every event after `at` will be passed to `saw`.
    pub fn start_following(&self, at: Checkpoint) {
        let mut inner = self.lock();
        inner.followed = Some(at);
        inner.followed_at = Some(Instant::now());
        inner.forget_all();
    }

    /// The follower read `events`, the log's next events in order (possibly none): drops
    /// the entries they make stale.
    pub fn saw(&self, events: &[StoredEvent]) {
        let mut inner = self.lock();
        inner.followed_at = Some(Instant::now());
        for event in events {
            let at = event.checkpoint();
            match touches(event) {
                Touch::Nothing => {}
                Touch::Order(order_id) => {
                    let touched = inner.touched.entry(order_id).or_insert(at);
                    *touched = (*touched).max(at);
                    if inner.entries.get(&order_id).is_some_and(|e| e.as_of < at) {
                        inner.entries.remove(&order_id);
                    }
                }
                Touch::Everything => {
                    inner.followed = Some(at);
                    inner.forget_all();
                }
            }
            inner.followed = Some(at);
        }
        if inner.touched.len() > TOUCHED_LIMIT {
            inner.touched.clear();
            inner.floor = inner.followed.unwrap_or_default();
        }
    }

    /// Follows the log until the pool closes, woken by `order_details`' progress and every
    /// second.
    pub async fn follow(self: Arc<Self>, pool: PgPool) {
        if self.capacity == 0 {
            return;
        }
        let log = EventLog::new(pool.clone());
        let mut progress = self.checkpoints.subscribe(serving::ORDER_DETAILS);
        while !pool.is_closed() {
            let start = match last_checkpoint(&pool).await {
                Ok(start) => start,
                Err(err) => {
                    tracing::warn!(error = %err, "order cache: cannot find the end of the log");
                    tokio::time::sleep(POLL_EVERY).await;
                    continue;
                }
            };
            self.start_following(start);
            let mut at = start;
            loop {
                match log.read_after(at, 1_000).await {
                    Ok(events) => {
                        self.saw(&events);
                        match events.last() {
                            Some(last) => {
                                at = last.checkpoint();
                                continue;
                            }
                            None => {
                                let _ = tokio::time::timeout(POLL_EVERY, progress.changed()).await;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "order cache: cannot read the log; answering from the database");
                        tokio::time::sleep(POLL_EVERY).await;
                        break;
                    }
                }
                if pool.is_closed() {
                    return;
                }
            }
        }
    }
}

/// The last event in log order, or the start: the follower begins there (an event before
/// it that commits later is older than any checkpoint an entry can be stored with).
async fn last_checkpoint(pool: &PgPool) -> Result<Checkpoint, sqlx::Error> {
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text, position FROM events
          ORDER BY transaction_id DESC, position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(last
        .map(|(transaction_id, position)| Checkpoint {
            transaction_id: transaction_id.parse().unwrap_or(0),
            position,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(
        aggregate_type: &str,
        aggregate_id: &str,
        tx: u64,
        payload: serde_json::Value,
    ) -> StoredEvent {
        StoredEvent {
            event_id: Uuid::new_v4(),
            position: tx as i64,
            transaction_id: tx,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: 1,
            event_type: "Whatever".to_owned(),
            event_version: "1".to_owned(),
            payload,
            metadata: json!({}),
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            recorded_at: chrono::Utc::now(),
        }
    }

    fn order_event(order_id: Uuid, tx: u64) -> StoredEvent {
        event("order", &order_id.to_string(), tx, json!({}))
    }

    fn at(tx: u64) -> Checkpoint {
        Checkpoint {
            transaction_id: tx,
            position: tx as i64,
        }
    }

    fn cached(text: &str) -> Cached {
        Cached {
            body: Bytes::from(text.to_owned()),
            etag: HeaderValue::from_static("\"e\""),
        }
    }

    fn body(cache: &OrderCache, order_id: Uuid, token: Option<Checkpoint>) -> Option<String> {
        cache
            .get(order_id, token)
            .map(|c| String::from_utf8(c.body.to_vec()).unwrap())
    }

    /// A cache whose follower started at `start`, on a pool that never connects.
    fn cache(capacity: usize, start: u64) -> Arc<OrderCache> {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let cache = OrderCache::new(capacity, Checkpoints::new(pool));
        cache.start_following(at(start));
        cache
    }

    #[tokio::test]
    async fn events_touch_the_orders_whose_details_they_change() {
        let order_id = Uuid::new_v4();
        let id = order_id.to_string();
        assert_eq!(touches(&order_event(order_id, 1)), Touch::Order(order_id));
        assert_eq!(
            touches(&event("payment", &id, 1, json!({}))),
            Touch::Order(order_id)
        );
        let released = json!({"Released": {
            "order_id": id, "quantity": 1, "at": "2026-11-26T00:00:00Z"}});
        assert_eq!(
            touches(&event("inventory_item", "MUG", 1, released)),
            Touch::Order(order_id)
        );
        let restocked = json!({"Restocked": {"quantity": 5, "at": "2026-11-26T00:00:00Z"}});
        assert_eq!(
            touches(&event("inventory_item", "MUG", 1, restocked)),
            Touch::Nothing
        );
        assert_eq!(
            touches(&event("shipment", "S-1", 1, json!({}))),
            Touch::Nothing
        );
        // What cannot be read might touch anything.
        assert_eq!(
            touches(&event("inventory_item", "MUG", 1, json!({"Mystery": {}}))),
            Touch::Everything
        );
        assert_eq!(
            touches(&event("order", "not-a-uuid", 1, json!({}))),
            Touch::Everything
        );
    }

    #[test]
    fn every_event_order_details_reads_is_one_the_cache_follows() {
        use domain::order::OrderEvent;
        use domain::payment::PaymentEvent;
        use infra::projection::Projection;
        // Order and payment events touch their aggregate's order; of the inventory events,
        // `touches` follows those that name an order. A new input of the projection must be
        // followed here too, or cached answers would miss it.
        let inventory_naming_an_order = ["StockReserved", "StockReleased", "StockCommitted"];
        let reads = projections::order_details::OrderDetailsProjection
            .event_types()
            .expect("order_details names its event types");
        for event_type in reads {
            assert!(
                OrderEvent::TYPES.contains(event_type)
                    || PaymentEvent::TYPES.contains(event_type)
                    || inventory_naming_an_order.contains(event_type),
                "order_details reads {event_type}, which the order cache does not follow"
            );
        }
    }

    #[tokio::test]
    async fn an_entry_is_served_until_an_event_of_its_order_is_seen_after_it() {
        let cache = cache(10, 10);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        cache.put(cache.ticket(), b, at(10), cached("b@10"));
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@10"));
        // An event of another order, and one the entry already reflects, change nothing.
        cache.saw(&[order_event(b, 11)]);
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@10"));
        assert_eq!(body(&cache, b, None), None);
        cache.saw(&[order_event(a, 12)]);
        assert_eq!(body(&cache, a, None), None);
    }

    #[tokio::test]
    async fn an_event_the_entry_already_reflects_keeps_it() {
        let cache = cache(10, 10);
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(15), cached("a@15"));
        cache.saw(&[order_event(a, 12)]);
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@15"));
    }

    #[tokio::test]
    async fn a_read_that_arrives_after_the_follower_saw_a_later_event_is_not_stored() {
        let cache = cache(10, 10);
        let a = Uuid::new_v4();
        let ticket = cache.ticket();
        // The database answered at 11; meanwhile the follower saw the order change at 12.
        cache.saw(&[order_event(a, 12)]);
        cache.put(ticket, a, at(11), cached("a@11"));
        assert_eq!(body(&cache, a, None), None);
        // A read that reflects 12 is stored.
        cache.put(cache.ticket(), a, at(12), cached("a@12"));
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@12"));
        // An older answer never replaces a newer one.
        cache.put(cache.ticket(), a, at(11), cached("a@11"));
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@12"));
    }

    #[tokio::test]
    async fn reads_below_the_floor_or_without_a_checkpoint_are_not_stored() {
        let cache = cache(10, 20);
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(19), cached("a@19"));
        assert_eq!(body(&cache, a, None), None);
        cache.put(cache.ticket(), a, Checkpoint::START, cached("kafka-fed"));
        assert_eq!(body(&cache, a, None), None);
    }

    #[tokio::test]
    async fn a_token_beyond_what_the_entry_is_known_to_reflect_goes_to_the_database() {
        let cache = cache(10, 10);
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        assert_eq!(body(&cache, a, Some(at(10))).as_deref(), Some("a@10"));
        // The follower has not read up to 14: an event of the order may be there.
        assert_eq!(body(&cache, a, Some(at(14))), None);
        cache.saw(&[order_event(Uuid::new_v4(), 14)]);
        assert_eq!(body(&cache, a, Some(at(14))).as_deref(), Some("a@10"));
    }

    #[tokio::test]
    async fn a_read_without_a_token_is_never_older_than_what_the_projection_reported() {
        let cache = cache(10, 10);
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        // The projection says it applied up to 14; the follower has not read that far.
        cache.checkpoints.advance(serving::ORDER_DETAILS, at(14));
        assert_eq!(body(&cache, a, None), None);
        cache.saw(&[order_event(Uuid::new_v4(), 14)]);
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@10"));
    }

    #[tokio::test]
    async fn a_reset_empties_the_cache_and_refuses_reads_begun_before_it() {
        let cache = cache(10, 10);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        let before = cache.ticket();
        cache.checkpoints.bump_epoch();
        assert_eq!(body(&cache, a, None), None);
        cache.put(before, b, at(10), cached("b@10"));
        assert_eq!(body(&cache, b, None), None);
        cache.put(cache.ticket(), b, at(10), cached("b@10"));
        assert_eq!(body(&cache, b, None).as_deref(), Some("b@10"));
    }

    #[tokio::test]
    async fn an_unreadable_event_empties_the_cache() {
        let cache = cache(10, 10);
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        cache.saw(&[event("order", "not-a-uuid", 11, json!({}))]);
        assert_eq!(body(&cache, a, None), None);
        // Stored again once read at or after it.
        cache.put(cache.ticket(), a, at(11), cached("a@11"));
        assert_eq!(body(&cache, a, None).as_deref(), Some("a@11"));
    }

    #[tokio::test]
    async fn the_oldest_stored_order_goes_first_when_full() {
        let cache = cache(2, 10);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            cache.put(cache.ticket(), *id, at(10), cached("x"));
        }
        assert_eq!(cache.len(), 2);
        assert!(body(&cache, ids[0], None).is_none());
        assert!(body(&cache, ids[2], None).is_some());
        let off = self::cache(0, 10);
        off.put(off.ticket(), ids[0], at(10), cached("x"));
        assert!(off.is_empty());
    }

    #[tokio::test]
    async fn nothing_is_served_before_the_follower_starts() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let cache = OrderCache::new(10, Checkpoints::new(pool));
        let a = Uuid::new_v4();
        cache.put(cache.ticket(), a, at(10), cached("a@10"));
        assert_eq!(body(&cache, a, None), None);
    }
}
