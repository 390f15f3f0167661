//! The payment gateway client: the `PaymentGateway` port over HTTP, with a timeout per call,
//! retries with exponential backoff and full jitter on transient failures only, and a circuit
//! breaker.
//!
//! Transient: timeouts, connection failures, 5xx. Everything else is an answer: 2xx, a
//! decline (402), a refusal (other 4xx). The breaker counts calls (after their retries), not
//! attempts: a call that needed a retry but succeeded is a success.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use domain::money::Money;
use domain::ports::{AuthorizationOutcome, AuthorizationRequest, GatewayError, PaymentGateway};
use domain::text::{AuthorizationId, DeclineReason};
use rand::Rng;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

/// When the breaker opens, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// The last this many calls are judged.
    pub window: usize,
    /// Fewer calls than this are not enough to judge.
    pub min_calls: usize,
    /// Opens when at least this share of the window failed.
    pub failure_rate: f64,
    /// Stays open this long, then lets one probe through (half-open).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed { outcomes: VecDeque<bool> },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker: fails calls fast while the service looks down, so callers wait and
/// retry later instead of piling up on timeouts.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        Self {
            name,
            config,
            inner: Mutex::new(Inner::Closed {
                outcomes: VecDeque::new(),
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go through now. In half-open state only one probe at a time does.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } => {
                if Instant::now() < *until {
                    return false;
                }
                tracing::info!(breaker = self.name, "circuit breaker half-open: probing");
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing } => {
                if *probing {
                    false
                } else {
                    *probing = true;
                    true
                }
            }
        }
    }

    /// Records the outcome of a call that `allow` let through.
    pub fn record(&self, success: bool) {
        let mut inner = self.lock();
        match &mut *inner {
            Inner::HalfOpen { .. } => {
                if success {
                    tracing::info!(
                        breaker = self.name,
                        "circuit breaker closed: the probe succeeded"
                    );
                    *inner = Inner::Closed {
                        outcomes: VecDeque::new(),
                    };
                } else {
                    tracing::warn!(
                        breaker = self.name,
                        "circuit breaker re-opened: the probe failed"
                    );
                    *inner = Inner::Open {
                        until: Instant::now() + self.config.open_for,
                    };
                }
            }
            Inner::Closed { outcomes } => {
                outcomes.push_back(success);
                while outcomes.len() > self.config.window {
                    outcomes.pop_front();
                }
                let failures = outcomes.iter().filter(|ok| !**ok).count();
                let calls = outcomes.len();
                if calls >= self.config.min_calls
                    && failures as f64 >= self.config.failure_rate * calls as f64
                {
                    tracing::warn!(
                        breaker = self.name, failures, calls, open_for = ?self.config.open_for,
                        "circuit breaker opened"
                    );
                    *inner = Inner::Open {
                        until: Instant::now() + self.config.open_for,
                    };
                }
            }
            // A call allowed before the breaker opened finished late: it changes nothing.
            Inner::Open { .. } => {}
        }
    }
}

/// How the client calls the gateway.
#[derive(Debug, Clone)]
pub struct GatewayClientConfig {
    pub base_url: String,
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker: BreakerConfig,
}

impl GatewayClientConfig {
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            base_url: base_url.into(),
            timeout,
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
        }
    }
}

/// The `PaymentGateway` port over HTTP.
#[derive(Debug)]
pub struct HttpPaymentGateway {
    client: reqwest::Client,
    config: GatewayClientConfig,
    breaker: CircuitBreaker,
}

/// One attempt's result.
enum Attempt {
    Answer(StatusCode, serde_json::Value),
    Transient(String),
}

#[derive(Deserialize)]
struct Authorized {
    authorization_id: String,
}

#[derive(Deserialize)]
struct Declined {
    reason: Option<String>,
}

impl HttpPaymentGateway {
    pub fn new(config: GatewayClientConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Self {
            breaker: CircuitBreaker::new("payment-gateway", config.breaker),
            client,
            config,
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    async fn attempt(&self, request: reqwest::RequestBuilder) -> Attempt {
        match request.send().await {
            Err(err) => Attempt::Transient(if err.is_timeout() {
                "timed out".to_owned()
            } else {
                format!("request failed: {err}")
            }),
            Ok(response) if response.status().is_server_error() => {
                Attempt::Transient(format!("answered {}", response.status()))
            }
            Ok(response) => {
                let status = response.status();
                match response.json::<serde_json::Value>().await {
                    Ok(body) => Attempt::Answer(status, body),
                    Err(err) => Attempt::Transient(format!("unreadable answer: {err}")),
                }
            }
        }
    }

    /// Sends a request (rebuilt per attempt) with retries, through the breaker.
    async fn call(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, serde_json::Value), GatewayError> {
        if !self.breaker.allow() {
            return Err(GatewayError::Unavailable("circuit breaker open".to_owned()));
        }
        let mut last = String::new();
        for attempt in 1..=self.config.max_attempts {
            match self.attempt(build(&self.client)).await {
                Attempt::Answer(status, body) => {
                    self.breaker.record(true);
                    return Ok((status, body));
                }
                Attempt::Transient(reason) => {
                    tracing::debug!(attempt, reason, "payment gateway call failed");
                    last = reason;
                    if attempt < self.config.max_attempts {
                        tokio::time::sleep(self.backoff(attempt)).await;
                    }
                }
            }
        }
        self.breaker.record(false);
        Err(GatewayError::Unavailable(last))
    }

    /// Full jitter: a random wait up to base * 2^(attempt-1), capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.config.backoff_max);
        let millis = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }
}

fn refused(status: StatusCode, body: &serde_json::Value) -> GatewayError {
    let detail = body
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no detail");
    GatewayError::Refused(format!("{status}: {detail}"))
}

impl PaymentGateway for HttpPaymentGateway {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationOutcome, GatewayError> {
        let body = json!({
            "order_id": request.order_id.to_string(),
            "amount_minor": request.amount.amount_minor(),
            "currency": request.amount.currency().as_str(),
            "card_token": request.card_token.as_str(),
        });
        let url = self.url("/authorizations");
        let (status, answer) = self
            .call(|client| {
                client
                    .post(&url)
                    .header("idempotency-key", &request.idempotency_key)
                    .json(&body)
            })
            .await?;
        match status {
            s if s.is_success() => {
                let authorized: Authorized = serde_json::from_value(answer).map_err(|err| {
                    GatewayError::Refused(format!("unreadable authorization: {err}"))
                })?;
                let id = AuthorizationId::parse(authorized.authorization_id)
                    .map_err(|err| GatewayError::Refused(err.to_string()))?;
                Ok(AuthorizationOutcome::Approved(id))
            }
            StatusCode::PAYMENT_REQUIRED => {
                let declined: Declined =
                    serde_json::from_value(answer).unwrap_or(Declined { reason: None });
                let reason = declined.reason.unwrap_or_else(|| "declined".to_owned());
                let reason = DeclineReason::parse(&reason)
                    .unwrap_or_else(|_| DeclineReason::parse("declined").expect("a valid reason"));
                Ok(AuthorizationOutcome::Declined(reason))
            }
            other => Err(refused(other, &answer)),
        }
    }

    async fn capture(
        &self,
        authorization: &AuthorizationId,
        key: &str,
    ) -> Result<(), GatewayError> {
        let url = self.url(&format!("/authorizations/{authorization}/capture"));
        let (status, answer) = self
            .call(|client| client.post(&url).header("idempotency-key", key))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status, &answer))
        }
    }

    async fn void(&self, authorization: &AuthorizationId, key: &str) -> Result<(), GatewayError> {
        let url = self.url(&format!("/authorizations/{authorization}/void"));
        let (status, answer) = self
            .call(|client| client.post(&url).header("idempotency-key", key))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status, &answer))
        }
    }

    async fn refund(
        &self,
        authorization: &AuthorizationId,
        amount: Money,
        key: &str,
    ) -> Result<(), GatewayError> {
        let url = self.url(&format!("/authorizations/{authorization}/refunds"));
        let body = json!({"amount_minor": amount.amount_minor()});
        let (status, answer) = self
            .call(|client| client.post(&url).header("idempotency-key", key).json(&body))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status, &answer))
        }
    }

    async fn find_authorization(&self, key: &str) -> Result<Option<AuthorizationId>, GatewayError> {
        let url = self.url("/authorizations");
        let (status, answer) = self
            .call(|client| client.get(&url).query(&[("idempotency_key", key)]))
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let found: Authorized = serde_json::from_value(answer).map_err(|err| {
                    GatewayError::Refused(format!("unreadable authorization: {err}"))
                })?;
                AuthorizationId::parse(found.authorization_id)
                    .map(Some)
                    .map_err(|err| GatewayError::Refused(err.to_string()))
            }
            other => Err(refused(other, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                window: 4,
                min_calls: 4,
                failure_rate: 0.5,
                open_for,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_on_the_failure_rate_and_probes_after_a_while() {
        let breaker = breaker(Duration::from_secs(5));
        for success in [true, false, true] {
            assert!(breaker.allow());
            breaker.record(success);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "too few calls to judge"
        );
        assert!(breaker.allow());
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open, "2 of 4 failed");
        assert!(!breaker.allow(), "open: calls fail fast");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(breaker.allow(), "half-open: one probe");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_breaker_again() {
        let breaker = breaker(Duration::from_secs(1));
        for _ in 0..4 {
            breaker.allow();
            breaker.record(false);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.allow());
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn successes_keep_the_breaker_closed() {
        let breaker = breaker(Duration::from_secs(1));
        for i in 0..20 {
            assert!(breaker.allow());
            breaker.record(i % 4 != 0);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "25% failures is under the threshold"
        );
    }
}
