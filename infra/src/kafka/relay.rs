//! The relay: follows the global log with its own checkpoint and publishes every event.
//!
//! A batch is read (outside any transaction: a transaction open while the broker is slow
//! would hold back every reader of the log), published with an idempotent producer and
//! `acks=all`, and only when the broker confirmed every message does the checkpoint move,
//! by compare-and-set under the relay's fencing token. A crash or a broker outage in between
//! means the batch is published again: duplicates, never gaps.
//!
//! One live relay per name: a session advisory lock, as projections have.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::{Envelope, client_config, topic_for};
use crate::config::KafkaSettings;
use crate::event_store::{Checkpoint, EventLog, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    Idle,
    Published {
        events: usize,
    },
    /// Another relay holds the lease.
    Standby,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("failed to create the Kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("the relay's database operation failed: {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to read the log")]
    ReadLog(#[source] StoreError),
    #[error("{failed} of {total} messages were not delivered; the batch will be published again")]
    Delivery {
        failed: usize,
        total: usize,
        #[source]
        first: rdkafka::error::KafkaError,
    },
    #[error("another relay took over")]
    Fenced,
}

fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> RelayError {
    move |source| RelayError::Database { operation, source }
}

struct Lease {
    /// Holds the advisory lock; closed, never recycled, when dropped.
    _conn: PoolConnection<Postgres>,
    token: i64,
}

/// A message ready to send (owning what the record borrows).
struct Prepared {
    topic: String,
    key: String,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

pub struct Relay {
    pool: PgPool,
    log: EventLog,
    producer: FutureProducer,
    settings: KafkaSettings,
    config: RelayConfig,
    name: String,
    id: String,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay named `name` (its checkpoint's key; `kafka` for the main one).
    pub fn new(
        pool: PgPool,
        settings: KafkaSettings,
        name: &str,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        let producer = Self::producer(&settings)?;
        Ok(Self {
            log: EventLog::new(pool.clone()),
            pool,
            producer,
            settings,
            config,
            name: name.to_owned(),
            id: format!(
                "relay-pid{}-{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            lease: None,
        })
    }

    fn producer(settings: &KafkaSettings) -> Result<FutureProducer, RelayError> {
        client_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(RelayError::Producer)
    }

    async fn try_acquire(&mut self) -> Result<bool, RelayError> {
        if self.lease.is_some() {
            return Ok(true);
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(database("open the lease connection"))?;
        conn.close_on_drop();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('relay:' || $1, 0))")
                .bind(&self.name)
                .fetch_one(&mut *conn)
                .await
                .map_err(database("take the lease"))?;
        if !locked {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO relay_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&self.name)
        .execute(&mut *conn)
        .await
        .map_err(database("register the relay"))?;
        let token: i64 = sqlx::query_scalar(
            "UPDATE relay_checkpoints SET fencing_token = fencing_token + 1, owner = $2
              WHERE name = $1 RETURNING fencing_token",
        )
        .bind(&self.name)
        .bind(&self.id)
        .fetch_one(&mut *conn)
        .await
        .map_err(database("bump the fencing token"))?;
        tracing::info!(relay = %self.name, token, "took the relay's lease");
        self.lease = Some(Lease { _conn: conn, token });
        Ok(true)
    }

    /// The relay's checkpoint.
    pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<Checkpoint, sqlx::Error> {
        let row = sqlx::query(
            "SELECT checkpoint_tx::text AS checkpoint_tx, checkpoint_position FROM relay_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?;
        Ok(match row {
            Some(row) => Checkpoint {
                transaction_id: row
                    .try_get::<String, _>("checkpoint_tx")?
                    .parse()
                    .unwrap_or(0),
                position: row.try_get("checkpoint_position")?,
            },
            None => Checkpoint::START,
        })
    }

    /// Publishes the next batch and, once all of it is delivered, moves the checkpoint.
    pub async fn run_once(&mut self) -> Result<RelayOutcome, RelayError> {
        if !self.try_acquire().await? {
            return Ok(RelayOutcome::Standby);
        }
        let token = self.lease.as_ref().map_or(0, |lease| lease.token);
        let checkpoint = Self::checkpoint(&self.pool, &self.name)
            .await
            .map_err(database("read the checkpoint"))?;
        let events = self
            .log
            .read_after(checkpoint, self.config.batch_size)
            .await
            .map_err(RelayError::ReadLog)?;
        let Some(last) = events.last().map(|e| e.checkpoint()) else {
            return Ok(RelayOutcome::Idle);
        };
        let prepared: Vec<Prepared> = events
            .iter()
            .filter_map(|event| {
                let topic = topic_for(&self.settings.topic_prefix, &event.aggregate_type)?;
                let envelope = Envelope::from(event);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "event_id",
                        value: Some(&envelope.event_id.to_string()),
                    })
                    .insert(Header {
                        key: "event_type",
                        value: Some(&envelope.event_type),
                    })
                    .insert(Header {
                        key: "correlation_id",
                        value: envelope.correlation_id.map(|id| id.to_string()).as_ref(),
                    })
                    .insert(Header {
                        key: "causation_id",
                        value: envelope.causation_id.map(|id| id.to_string()).as_ref(),
                    })
                    .insert(Header {
                        key: "traceparent",
                        value: Some(&envelope.traceparent()),
                    });
                Some(Prepared {
                    topic,
                    key: event.aggregate_id.clone(),
                    value: serde_json::to_vec(&envelope).unwrap_or_default(),
                    headers,
                })
            })
            .collect();
        let timeout = Timeout::After(self.settings.message_timeout);
        let deliveries = join_all(prepared.iter().map(|message| {
            self.producer.send(
                FutureRecord::to(&message.topic)
                    .key(&message.key)
                    .payload(&message.value)
                    .headers(message.headers.clone()),
                timeout,
            )
        }))
        .await;
        let failures: Vec<rdkafka::error::KafkaError> = deliveries
            .into_iter()
            .filter_map(|d| d.err().map(|(err, _)| err))
            .collect();
        if let Some(first) = failures.first() {
            // A producer whose messages timed out can be left in a state it does not leave:
            // fatal (an idempotent producer can no longer promise order), or fenced by its
            // own epoch bump on some brokers. The retry gets a new producer; the batch is
            // published again either way.
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                tracing::warn!(%code, %reason, "the producer failed fatally");
            }
            self.producer = Self::producer(&self.settings)?;
            return Err(RelayError::Delivery {
                failed: failures.len(),
                total: prepared.len(),
                first: first.clone(),
            });
        }
        let moved = sqlx::query(
            "UPDATE relay_checkpoints
                SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3,
                    events_published = events_published + $4, updated_at = now()
              WHERE name = $1 AND fencing_token = $5
                AND checkpoint_tx = $6::text::xid8 AND checkpoint_position = $7",
        )
        .bind(&self.name)
        .bind(last.transaction_id.to_string())
        .bind(last.position)
        .bind(events.len() as i64)
        .bind(token)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        .execute(&self.pool)
        .await
        .map_err(database("move the checkpoint"))?;
        if moved.rows_affected() != 1 {
            self.lease = None;
            return Err(RelayError::Fenced);
        }
        Ok(RelayOutcome::Published {
            events: events.len(),
        })
    }

    /// Runs until `shutdown` turns true, woken by `wakeup` when events commit.
    pub async fn run(mut self, wakeup: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::ZERO;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match self.run_once().await {
                Ok(RelayOutcome::Published { events }) => {
                    tracing::debug!(events, "published a batch");
                    backoff = Duration::ZERO;
                    continue;
                }
                Ok(RelayOutcome::Idle | RelayOutcome::Standby) => self.config.poll_interval,
                Err(err) => {
                    tracing::error!(error = %crate::telemetry::err_chain(&err), "relay step failed");
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), self.config.max_backoff);
                    backoff
                }
            };
            tokio::select! {
                () = wakeup.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(relay = %self.name, "relay stopped");
    }
}
