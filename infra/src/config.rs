//! Configuration, read once in `main` from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | `postgres://root@127.0.0.1:5432/root` | the event store and read models |
//! | `DATABASE_MAX_CONNECTIONS` | `16` | pool size per service |
//! | `DATABASE_MIGRATE` | `true` | run migrations at start-up |
//! | `WRITE_ADDR` | `127.0.0.1:8080` | the command API's listen address |
//! | `READ_ADDR` | `127.0.0.1:8081` | the query API's listen address |
//! | `READ_CACHE_ORDERS` | `10000` | orders the query API keeps in memory (0: none) |
//! | `PAYMENT_GATEWAY_URL` | `http://127.0.0.1:8090` | the payment gateway the saga charges through |
//! | `PAYMENT_GATEWAY_TIMEOUT_MS` | `2000` | per call; a call that takes longer is retried |
//! | `PAYMENT_GATEWAY_SIM_ADDR` | `127.0.0.1:8090` | where the simulator listens |
//! | `SAGA_PAYMENT_DEADLINE_MS` | `30000` | no payment outcome by then: the order is cancelled |
//! | `SAGA_CONCURRENCY` | `512` | sagas one saga worker works on at once |
//! | `PROJECTOR_SYNCHRONOUS_COMMIT` | `off` | `on`: log-following workers' batches wait for their WAL flush ([`ProjectorSettings`]) |
//! | `PROJECTOR_JOINT_BATCHES` | `on` | `off`: each read model of the projector steps alone, in transactions of its own |
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | Kafka (or Redpanda) bootstrap servers |
//! | `KAFKA_TOPIC_PREFIX` | empty | prepended to topic names (`prod.` gives `prod.orders.events`) |
//! | `KAFKA_PARTITIONS` | `3` | partitions of topics the relay creates |
//! | `KAFKA_MESSAGE_TIMEOUT_MS` | `30000` | how long the producer tries to deliver before failing |
//! | `KAFKA_RELAY_BATCH_SIZE` | `500` | events the relay publishes per checkpoint move |
//! | `RUST_LOG` | `info` | tracing filter (`EnvFilter` syntax) |
//! | `LOG_FORMAT` | `text` | `text` or `json` (one JSON object per line) |
//!
//! Nothing else reads the environment: everything downstream receives a [`Settings`].
//! There is no `Default` for `Settings`, so a test states what it runs with.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub write_api: HttpSettings,
    pub read_api: HttpSettings,
    /// Orders the query API caches (`read_side::cache`; 0 turns the cache off).
    pub read_cache_orders: usize,
    pub payment_gateway: PaymentGatewaySettings,
    pub saga: SagaSettings,
    pub projector: ProjectorSettings,
    pub kafka: KafkaSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub message_timeout: Duration,
    pub relay_batch_size: u32,
}

#[derive(Debug, Clone)]
pub struct PaymentGatewaySettings {
    pub url: String,
    /// Per attempt; the client retries transient failures a few times within one call.
    pub timeout: Duration,
    pub simulator_addr: SocketAddr,
}

/// Sagas one saga worker works on at once, unless `SAGA_CONCURRENCY` says otherwise. A saga
/// in flight costs a few kilobytes and no connection (it waits on group commits and on the
/// gateway), while the limit caps throughput at itself divided by a saga's duration: 128
/// held a burst of orders on one SKU to 465-649 reservations/s on this 2-core machine, 512
/// let it reach 829-1,005 (BENCHMARKS.md).
pub const DEFAULT_SAGA_CONCURRENCY: usize = 512;

#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long an order may wait for a payment outcome before it is cancelled.
    pub payment_deadline: Duration,
    /// Sagas one worker works on at once.
    pub concurrency: std::num::NonZeroUsize,
}

/// How the workers that follow the PostgreSQL log (the projector's read models, the saga
/// worker's trigger) commit their batches: by default without waiting for the WAL flush,
/// which loses nothing (see [`crate::projection::WorkerConfig::synchronous_commit`]).
/// Kafka-fed projections always wait: they commit their offsets to the broker afterwards.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// `PROJECTOR_SYNCHRONOUS_COMMIT=on` makes every batch wait for its WAL flush.
    pub synchronous_commit: bool,
    /// The projector's read models step together, one transaction per batch for all of
    /// them (`infra::projection::Group`); `PROJECTOR_JOINT_BATCHES=off` gives each its own
    /// worker and transactions (a slow or failing one then never holds the others back).
    pub joint_batches: bool,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// May hold a password, so it is never printed.
    pub url: SecretString,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// A request still running after this is answered 503 and its work abandoned.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid: expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/root";

/// Reads the process environment.
pub fn load() -> Result<Settings, ConfigError> {
    load_from(|name| std::env::var(name).ok())
}

/// Builds settings from any source of variables; `load` passes the environment, tests pass
/// a map.
pub fn load_from(var: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let database_url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    Ok(Settings {
        database: DatabaseSettings {
            url: SecretString::from(database_url),
            max_connections: parse(
                &var,
                "DATABASE_MAX_CONNECTIONS",
                16,
                "a number of connections",
            )?,
            migrate_on_start: parse(&var, "DATABASE_MIGRATE", true, "true or false")?,
            lock_timeout: Duration::from_millis(parse(
                &var,
                "DATABASE_LOCK_TIMEOUT_MS",
                5_000,
                "milliseconds",
            )?),
            statement_timeout: Duration::from_millis(parse(
                &var,
                "DATABASE_STATEMENT_TIMEOUT_MS",
                30_000,
                "milliseconds",
            )?),
        },
        write_api: HttpSettings {
            addr: parse(
                &var,
                "WRITE_ADDR",
                ([127, 0, 0, 1], 8080).into(),
                "host:port",
            )?,
            request_timeout: Duration::from_secs(30),
        },
        read_api: HttpSettings {
            addr: parse(
                &var,
                "READ_ADDR",
                ([127, 0, 0, 1], 8081).into(),
                "host:port",
            )?,
            request_timeout: Duration::from_secs(30),
        },
        read_cache_orders: parse(&var, "READ_CACHE_ORDERS", 10_000, "a number of orders")?,
        payment_gateway: PaymentGatewaySettings {
            url: var("PAYMENT_GATEWAY_URL").unwrap_or_else(|| "http://127.0.0.1:8090".to_owned()),
            timeout: Duration::from_millis(parse(
                &var,
                "PAYMENT_GATEWAY_TIMEOUT_MS",
                2_000,
                "milliseconds",
            )?),
            simulator_addr: parse(
                &var,
                "PAYMENT_GATEWAY_SIM_ADDR",
                ([127, 0, 0, 1], 8090).into(),
                "host:port",
            )?,
        },
        saga: SagaSettings {
            payment_deadline: Duration::from_millis(parse(
                &var,
                "SAGA_PAYMENT_DEADLINE_MS",
                30_000,
                "milliseconds",
            )?),
            concurrency: parse(
                &var,
                "SAGA_CONCURRENCY",
                std::num::NonZeroUsize::new(DEFAULT_SAGA_CONCURRENCY)
                    .expect("the default is not zero"),
                "a number of sagas, at least 1",
            )?,
        },
        projector: ProjectorSettings {
            synchronous_commit: switch(&var, "PROJECTOR_SYNCHRONOUS_COMMIT", false)?,
            joint_batches: switch(&var, "PROJECTOR_JOINT_BATCHES", true)?,
        },
        kafka: KafkaSettings {
            brokers: var("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            topic_prefix: var("KAFKA_TOPIC_PREFIX").unwrap_or_default(),
            partitions: parse(&var, "KAFKA_PARTITIONS", 3, "a number of partitions")?,
            message_timeout: Duration::from_millis(parse(
                &var,
                "KAFKA_MESSAGE_TIMEOUT_MS",
                30_000,
                "milliseconds",
            )?),
            relay_batch_size: parse(&var, "KAFKA_RELAY_BATCH_SIZE", 500, "a number of events")?,
        },
        telemetry: TelemetrySettings {
            filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            format: match var("LOG_FORMAT").as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "LOG_FORMAT",
                        value: other.to_owned(),
                        expected: "text or json",
                    });
                }
            },
        },
    })
}

/// An on/off setting (`true`/`false` too).
fn switch(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("on" | "true") => Ok(true),
        Some("off" | "false") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            name,
            value: other.to_owned(),
            expected: "on or off",
        }),
    }
}

fn parse<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
            name,
            value,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_from(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_run_against_the_local_database() {
        let settings = from(&[]).unwrap();
        assert_eq!(settings.database.url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(settings.write_api.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.read_api.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(settings.saga.concurrency.get(), 512);
        let settings = from(&[("SAGA_CONCURRENCY", "64")]).unwrap();
        assert_eq!(settings.saga.concurrency.get(), 64);
        assert!(from(&[("SAGA_CONCURRENCY", "0")]).is_err());
    }

    #[test]
    fn projector_batches_commit_asynchronously_unless_told_otherwise() {
        assert!(!from(&[]).unwrap().projector.synchronous_commit);
        for (value, synchronous) in [
            ("on", true),
            (" true", true),
            ("off", false),
            ("false", false),
        ] {
            let settings = from(&[("PROJECTOR_SYNCHRONOUS_COMMIT", value)]).unwrap();
            assert_eq!(
                settings.projector.synchronous_commit, synchronous,
                "{value:?}"
            );
        }
        let err = from(&[("PROJECTOR_SYNCHRONOUS_COMMIT", "local")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PROJECTOR_SYNCHRONOUS_COMMIT=\"local\" is not valid: expected on or off"
        );
    }

    #[test]
    fn the_projectors_read_models_step_together_unless_told_otherwise() {
        assert!(from(&[]).unwrap().projector.joint_batches);
        let settings = from(&[("PROJECTOR_JOINT_BATCHES", "off")]).unwrap();
        assert!(!settings.projector.joint_batches);
        assert!(!settings.projector.synchronous_commit);
        let err = from(&[("PROJECTOR_JOINT_BATCHES", "sometimes")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PROJECTOR_JOINT_BATCHES=\"sometimes\" is not valid: expected on or off"
        );
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let err = from(&[("WRITE_ADDR", "localhost")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WRITE_ADDR=\"localhost\" is not valid: expected host:port"
        );
    }
}
