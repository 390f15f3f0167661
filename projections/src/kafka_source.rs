//! Projections fed from Kafka instead of the PostgreSQL log (`projector --source kafka`).
//!
//! Each projection is a consumer with an inbox ([`infra::kafka::consumer`]): its rows and
//! the ids of the events it applied commit together, so redelivered events change nothing.
//! Replicas in one consumer group split the partitions between them.
//!
//! Kafka keeps order per aggregate, not across aggregates, so only projections whose rows
//! never depend on the arrival order of two aggregates' events can run here; ours are
//! written that way (a payment's part of `order_details` has a table of its own).
//!
//! The database must be one of its own: a log-fed projector keeps a checkpoint in the log,
//! a Kafka-fed one an inbox, and each refuses to start where the other has been running.

use std::sync::Arc;

use async_trait::async_trait;
use infra::kafka::consumer::{HandlerError, InboxHandler};
use infra::kafka::{Envelope, PROJECTION_CONSUMER_PREFIX};
use infra::projection::events::decode;
use infra::projection::{ApplyError, Decoded, Projection};
use sqlx::{PgConnection, PgPool};

/// A projection as a Kafka consumer.
#[derive(Clone)]
pub struct KafkaFed {
    projection: Arc<dyn Projection>,
}

impl std::fmt::Debug for KafkaFed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaFed")
            .field("projection", &self.projection.name())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaFedError {
    #[error(
        "projection {0} is fed from the PostgreSQL log in this database (it has a checkpoint); \
         a Kafka-fed projection needs a database of its own"
    )]
    FedFromLog(&'static str),
    #[error("failed to check the projection's state")]
    Database(#[from] sqlx::Error),
}

impl KafkaFed {
    /// Checks that the projection has not been fed from the log in this database.
    pub async fn new(
        pool: &PgPool,
        projection: Arc<dyn Projection>,
    ) -> Result<Self, KafkaFedError> {
        let fed_from_log: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM projection_state WHERE name = $1 AND checkpoint_position > 0)",
        )
        .bind(projection.name())
        .fetch_one(pool)
        .await?;
        if fed_from_log {
            return Err(KafkaFedError::FedFromLog(projection.name()));
        }
        Ok(Self { projection })
    }

    /// The inbox (and consumer group) name.
    pub fn consumer_name(projection: &dyn Projection) -> String {
        format!("{PROJECTION_CONSUMER_PREFIX}{}", projection.name())
    }
}

fn rejected(event: &Envelope, err: &ApplyError) -> HandlerError {
    HandlerError::Rejected {
        event_id: event.event_id,
        reason: infra::telemetry::err_chain(err),
    }
}

#[async_trait]
impl InboxHandler for KafkaFed {
    fn name(&self) -> String {
        Self::consumer_name(self.projection.as_ref())
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        let mut decoded = Vec::with_capacity(events.len());
        for envelope in events {
            let stored = envelope.clone().into_stored();
            if !self.projection.handles(&stored) {
                continue;
            }
            // A poison event halts the partition (retried with backoff, logged): the skip
            // policy and its dead letters belong to the log-fed projector.
            let event =
                decode(&stored).map_err(|err| rejected(envelope, &ApplyError::Decode(err)))?;
            decoded.push(Decoded {
                stored: std::sync::Arc::new(stored),
                event,
            });
        }
        if decoded.is_empty() {
            return Ok(());
        }
        match self.projection.apply(conn, &decoded).await {
            Ok(()) => Ok(()),
            Err(ApplyError::Database(err)) => Err(HandlerError::Database(err)),
            Err(err) => Err(rejected(&events[0], &err)),
        }
    }
}
