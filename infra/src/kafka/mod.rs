//! Kafka: the relay that publishes every event of the global log, and the consumer runtime.
//!
//! - One topic per aggregate type: `orders.events`, `payments.events`, `inventory.events`
//!   (behind an optional prefix). The key is the aggregate id, so each aggregate's events
//!   keep their order within a partition.
//! - The value is an [`Envelope`] in JSON: a public contract (see the README).
//! - Delivery is at least once: the relay's checkpoint moves only after the broker confirmed
//!   every message of a batch, and a relay restarted after a crash publishes again what it
//!   had not checkpointed. Consumers remove duplicates with an inbox (`consumer`).
//!
//! Not here: Kafka transactions. The brokers we test against do not isolate them, and
//! at-least-once with idempotent consumers needs none.

pub mod consumer;
pub mod relay;

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::KafkaSettings;
use crate::event_store::StoredEvent;

/// A projection fed from Kafka keeps its inbox under this prefix and its name.
pub const PROJECTION_CONSUMER_PREFIX: &str = "projection.";

/// The aggregate types published, and their topics (before the prefix).
pub const TOPICS: [(&str, &str); 3] = [
    ("order", "orders.events"),
    ("payment", "payments.events"),
    ("inventory_item", "inventory.events"),
];

/// The topic an aggregate type's events go to, or `None` for a type not published.
pub fn topic_for(prefix: &str, aggregate_type: &str) -> Option<String> {
    TOPICS
        .iter()
        .find(|(t, _)| *t == aggregate_type)
        .map(|(_, topic)| format!("{prefix}{topic}"))
}

/// Every topic, with the prefix.
pub fn all_topics(prefix: &str) -> Vec<String> {
    TOPICS
        .iter()
        .map(|(_, topic)| format!("{prefix}{topic}"))
        .collect()
}

/// One event as published: the JSON value of every message. A public contract: fields are
/// only ever added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event.
    pub sequence: i64,
    /// The global position (unique; not in commit order across transactions).
    pub position: i64,
    /// The committing transaction, as a string (a 64-bit number).
    pub transaction_id: String,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// The event, as the domain serialises it.
    pub payload: serde_json::Value,
}

impl From<&StoredEvent> for Envelope {
    fn from(event: &StoredEvent) -> Self {
        Self {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            position: event.position,
            transaction_id: event.transaction_id.to_string(),
            recorded_at: event.recorded_at,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            payload: event.payload.clone(),
        }
    }
}

impl Envelope {
    /// Back to the form projections take.
    pub fn into_stored(self) -> StoredEvent {
        StoredEvent {
            event_id: self.event_id,
            position: self.position,
            transaction_id: self.transaction_id.parse().unwrap_or(0),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: serde_json::Value::Object(Default::default()),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            idempotency_key: None,
            recorded_at: self.recorded_at,
        }
    }

    /// A W3C `traceparent`: the trace is the correlation id (the business flow), the span
    /// the event (its first 8 bytes).
    pub fn traceparent(&self) -> String {
        let trace = self
            .correlation_id
            .unwrap_or(self.event_id)
            .simple()
            .to_string();
        let span: String = self
            .event_id
            .simple()
            .to_string()
            .chars()
            .take(16)
            .collect();
        format!("00-{trace}-{span}-01")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("failed to create a Kafka client for {brokers}")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("failed to create topic {topic}: {code}")]
    CreateTopic { topic: String, code: String },
    #[error("failed to create topics")]
    Admin(#[source] rdkafka::error::KafkaError),
}

/// The client settings every producer and consumer starts from.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.keepalive.enable", "true");
    config
}

/// Creates the topics that do not exist yet (an existing topic is left as it is).
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(settings)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                brokers: settings.brokers.clone(),
                source,
            })?;
    let names = all_topics(&settings.topic_prefix);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, settings.partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(&topics, &options)
        .await
        .map_err(KafkaSetupError::Admin)?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// [`ensure_topics`], retried with backoff until the broker answers (it may start after us).
pub async fn wait_for_topics(settings: &KafkaSettings) {
    let mut wait = Duration::from_millis(200);
    while let Err(err) = ensure_topics(settings).await {
        tracing::warn!(
            brokers = %settings.brokers,
            error = %crate::telemetry::err_chain(&err),
            "cannot create the topics yet; retrying"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_aggregate_type_and_the_prefix() {
        assert_eq!(topic_for("", "order").as_deref(), Some("orders.events"));
        assert_eq!(
            topic_for("prod.", "inventory_item").as_deref(),
            Some("prod.inventory.events")
        );
        assert_eq!(topic_for("", "widget"), None);
    }

    #[test]
    fn the_traceparent_is_w3c_shaped() {
        let envelope = Envelope {
            event_id: Uuid::from_bytes([0xab; 16]),
            event_type: "OrderPlaced".into(),
            event_version: "1.0".into(),
            aggregate_type: "order".into(),
            aggregate_id: "x".into(),
            sequence: 1,
            position: 1,
            transaction_id: "7".into(),
            recorded_at: Utc::now(),
            correlation_id: Some(Uuid::from_bytes([0x12; 16])),
            causation_id: None,
            payload: serde_json::Value::Null,
        };
        assert_eq!(
            envelope.traceparent(),
            format!("00-{}-{}-01", "12".repeat(16), "ab".repeat(8))
        );
    }
}
