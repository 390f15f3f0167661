//! The consumer runtime: a Kafka consumer group whose effects are deduplicated by an inbox.
//!
//! Per batch, in one PostgreSQL transaction: the batch's event ids go into `consumer_inbox`
//! (`ON CONFLICT DO NOTHING`), the handler applies only the events that were new, and the
//! transaction commits. Only then are the offsets committed to Kafka. A crash between the
//! two means the batch is delivered again, finds its ids in the inbox, and changes nothing.
//!
//! The inbox row and the effect commit together, so two members briefly holding the same
//! partition during a rebalance serialise on the inbox's primary key: the second waits for
//! the first, then finds the ids taken.
//!
//! A batch whose handler fails is rolled back and retried with backoff (the partition
//! halts on it, as a projection halts on a poison event); a message that is not an
//! [`Envelope`] at all is logged and skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Envelope, client_config};
use crate::config::KafkaSettings;

/// What a consumer does with the events that are new to it.
#[async_trait]
pub trait InboxHandler: Send + Sync + 'static {
    /// Names the inbox and, unless configured otherwise, the consumer group.
    fn name(&self) -> String;

    /// Applies events, in the order each partition delivered them, inside the consumer's
    /// transaction (the inbox rows are already written in it). An error rolls back both.
    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError>;
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("event {event_id} was rejected: {reason}")]
    Rejected { event_id: Uuid, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("failed to create the Kafka consumer")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("failed to subscribe to {topics:?}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("failed to receive from Kafka")]
    Receive(#[source] rdkafka::error::KafkaError),
    #[error("the consumer's database operation failed: {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the handler failed")]
    Handler(#[source] HandlerError),
    /// The test hook stopped the consumer between its effect and its offset commit.
    #[error("stopped on purpose after the effect, before the offset commit")]
    Crashed,
}

fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> ConsumerError {
    move |source| ConsumerError::Database { operation, source }
}

/// Called with each committed batch, before its offsets are committed; `true` stops the
/// consumer there, as a crash would. For tests.
pub type CrashHook = Arc<dyn Fn(&[Envelope]) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct ConsumerConfig {
    /// The consumer group; defaults to the handler's name.
    pub group_id: Option<String>,
    pub topics: Vec<String>,
    pub batch_size: usize,
    /// How long a batch waits to fill once its first message arrived.
    pub batch_wait: Duration,
    pub max_backoff: Duration,
    pub session_timeout: Duration,
    pub crash_after_effect: Option<CrashHook>,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// Every topic the relay publishes to.
    pub fn all_topics(settings: &KafkaSettings) -> Self {
        Self {
            group_id: None,
            topics: super::all_topics(&settings.topic_prefix),
            batch_size: 500,
            batch_wait: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            crash_after_effect: None,
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub malformed: usize,
}

/// Counters of a running consumer, shared with whoever holds [`InboxConsumer::stats`].
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Partitions currently assigned to this member.
    pub assigned_partitions: AtomicU64,
    pub received: AtomicU64,
    pub applied: AtomicU64,
    /// Redelivered events the inbox recognised.
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    pub failed_batches: AtomicU64,
}

impl ConsumerStats {
    fn record(&self, outcome: &BatchOutcome) {
        self.received
            .fetch_add(outcome.received as u64, Ordering::Relaxed);
        self.applied
            .fetch_add(outcome.applied as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
        self.malformed
            .fetch_add(outcome.malformed as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Tracks the assignment, and logs rebalances.
struct InboxContext {
    name: String,
    stats: Arc<ConsumerStats>,
}

impl ClientContext for InboxContext {}

impl ConsumerContext for InboxContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.stats
                    .assigned_partitions
                    .store(list.count() as u64, Ordering::Relaxed);
                tracing::info!(consumer = %self.name, partitions = list.count(), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                self.stats.assigned_partitions.store(0, Ordering::Relaxed);
                tracing::info!(consumer = %self.name, partitions = list.count(), "partitions revoked");
            }
            Rebalance::Error(err) => {
                tracing::warn!(consumer = %self.name, error = %err, "rebalance failed");
            }
        }
    }
}

/// A received message, reduced to what the runtime needs.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    envelope: Option<Envelope>,
}

pub struct InboxConsumer<H> {
    pool: PgPool,
    consumer: StreamConsumer<InboxContext>,
    handler: Arc<H>,
    config: ConsumerConfig,
    name: String,
    stats: Arc<ConsumerStats>,
}

impl<H> std::fmt::Debug for InboxConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<H: InboxHandler> InboxConsumer<H> {
    /// Joins the group and subscribes (the assignment arrives with the first receive).
    pub fn new(
        pool: PgPool,
        settings: &KafkaSettings,
        handler: H,
        config: ConsumerConfig,
    ) -> Result<Self, ConsumerError> {
        let name = handler.name();
        // The prefix keeps environments sharing a cluster apart, groups as well as topics.
        let group = config
            .group_id
            .clone()
            .unwrap_or_else(|| format!("{}{name}", settings.topic_prefix));
        let stats = Arc::new(ConsumerStats::default());
        let context = InboxContext {
            name: name.clone(),
            stats: stats.clone(),
        };
        let consumer: StreamConsumer<InboxContext> = client_config(settings)
            .set("group.id", &group)
            .set("client.id", format!("{name}-pid{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .create_with_context(context)
            .map_err(ConsumerError::Create)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| ConsumerError::Subscribe {
                topics: config.topics.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            consumer,
            handler: Arc::new(handler),
            config,
            name,
            stats,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The consumer's counters, live while it runs.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Waits for the first message (or shutdown), then gathers more for up to `batch_wait`.
    async fn receive_batch(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<Received>, ConsumerError> {
        let first = tokio::select! {
            message = self.consumer.recv() => message.map_err(ConsumerError::Receive)?.detach(),
            _ = shutdown.changed() => return Ok(Vec::new()),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.batch_wait;
        while batch.len() < self.config.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(err)) => {
                    // Deliver what we have; the error comes back on the next receive if it lasts.
                    tracing::warn!(consumer = %self.name, error = %err, "receive failed mid-batch");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch
            .into_iter()
            .map(|message| {
                let envelope = message
                    .payload()
                    .and_then(|bytes| serde_json::from_slice::<Envelope>(bytes).ok());
                Received {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    envelope,
                }
            })
            .collect())
    }

    /// Records the batch in the inbox and applies what is new, in one transaction.
    async fn apply(&self, batch: &[Received]) -> Result<BatchOutcome, ConsumerError> {
        let mut seen = HashSet::new();
        let mut unique: Vec<&Envelope> = Vec::new();
        let mut malformed = 0;
        for received in batch {
            match &received.envelope {
                Some(envelope) => {
                    if seen.insert(envelope.event_id) {
                        unique.push(envelope);
                    }
                }
                None => {
                    malformed += 1;
                    tracing::error!(
                        consumer = %self.name,
                        topic = %received.topic,
                        partition = received.partition,
                        offset = received.offset,
                        "skipping a message that is not an event envelope"
                    );
                }
            }
        }
        let ids: Vec<Uuid> = unique.iter().map(|e| e.event_id).collect();
        let mut tx = self.pool.begin().await.map_err(database("begin"))?;
        let result = async {
            let fresh: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO consumer_inbox (consumer, event_id)
                 SELECT $1, id FROM UNNEST($2::uuid[]) AS id
                 ON CONFLICT DO NOTHING RETURNING event_id",
            )
            .bind(&self.name)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(database("record the inbox"))?;
            let fresh: HashSet<Uuid> = fresh.into_iter().collect();
            let new: Vec<Envelope> = unique
                .iter()
                .filter(|e| fresh.contains(&e.event_id))
                .map(|e| (*e).clone())
                .collect();
            if !new.is_empty() {
                self.handler
                    .handle(&mut tx, &new)
                    .await
                    .map_err(ConsumerError::Handler)?;
            }
            Ok::<_, ConsumerError>(new.len())
        }
        .await;
        match result {
            Ok(applied) => {
                tx.commit().await.map_err(database("commit"))?;
                Ok(BatchOutcome {
                    received: batch.len(),
                    applied,
                    duplicates: batch.len() - malformed - applied,
                    malformed,
                })
            }
            Err(err) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed; the connection is discarded");
                }
                Err(err)
            }
        }
    }

    /// Commits, per partition, the offset after the batch's last message.
    fn commit_offsets(&self, batch: &[Received]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for received in batch {
            let entry = next
                .entry((received.topic.as_str(), received.partition))
                .or_insert(0);
            *entry = (*entry).max(received.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(err) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %err, "could not list an offset to commit");
            }
        }
        // A failed commit only means redelivery, which the inbox absorbs.
        if let Err(err) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(consumer = %self.name, error = %err, "offset commit failed; the batch may be delivered again");
        }
    }

    /// Receives, applies and commits batches until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        let mut backoff = Duration::ZERO;
        'batches: loop {
            if *shutdown.borrow() {
                break;
            }
            let batch = match self.receive_batch(&mut shutdown).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(consumer = %self.name, error = %crate::telemetry::err_chain(&err), "receive failed");
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), self.config.max_backoff);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            // The same batch until it applies: its partitions wait, in order, behind it.
            loop {
                match self.apply(&batch).await {
                    Ok(outcome) => {
                        backoff = Duration::ZERO;
                        self.stats.record(&outcome);
                        tracing::debug!(consumer = %self.name, ?outcome, "batch applied");
                        if let Some(hook) = &self.config.crash_after_effect {
                            let envelopes: Vec<Envelope> =
                                batch.iter().filter_map(|r| r.envelope.clone()).collect();
                            if hook(&envelopes) {
                                tracing::warn!(consumer = %self.name, "stopping on purpose before the offset commit");
                                return Err(ConsumerError::Crashed);
                            }
                        }
                        self.commit_offsets(&batch);
                        continue 'batches;
                    }
                    Err(err) => {
                        self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(consumer = %self.name, error = %crate::telemetry::err_chain(&err), "batch failed; retrying");
                        backoff = (backoff * 2)
                            .clamp(Duration::from_millis(100), self.config.max_backoff);
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                        if *shutdown.borrow() {
                            break 'batches;
                        }
                    }
                }
            }
        }
        tracing::info!(consumer = %self.name, "consumer stopped");
        Ok(())
    }
}

/// Events a consumer has recorded in its inbox.
pub async fn inbox_count(pool: &PgPool, consumer: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM consumer_inbox WHERE consumer = $1")
        .bind(consumer)
        .fetch_one(pool)
        .await
}
