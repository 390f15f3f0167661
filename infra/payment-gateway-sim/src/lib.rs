//! A payment gateway simulator: the external service the order fulfilment saga charges
//! through, standing in for a real provider in development and tests.
//!
//! Deterministic by card token:
//! - `tok_visa` approves;
//! - `tok_decline` declines (402, reason `insufficient_funds`);
//! - `tok_timeout` records the authorization but never answers (the answer is "lost");
//! - `tok_flaky` answers 503 to the first two attempts of each authorization, then approves;
//! - any other token is refused (422).
//!
//! Every mutating call needs an `Idempotency-Key`; a key seen before replays the first
//! answer, so the same key never charges twice. `GET /ledger` lists every money movement,
//! for tests to check that nothing was charged twice.
//!
//! Deliberately simple: state lives in memory (a restart forgets it), one currency per
//! authorization, captures are of the whole authorized amount.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One movement of money (or of a hold on it).
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub kind: &'static str,
    pub authorization_id: String,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Authorized,
    Captured,
    Voided,
}

#[derive(Debug, Clone)]
struct Authorization {
    order_id: String,
    amount_minor: i64,
    currency: String,
    status: Status,
    refunded_minor: i64,
}

#[derive(Debug, Default)]
struct Ledger {
    /// First answers by idempotency key, replayed to retries.
    answers: HashMap<String, (StatusCode, Value)>,
    /// Attempts per key, for `tok_flaky`.
    attempts: HashMap<String, u32>,
    authorizations: HashMap<String, Authorization>,
    /// Which authorization an `authorize` key produced.
    by_key: HashMap<String, String>,
    entries: Vec<LedgerEntry>,
}

/// The simulator's shared state.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    ledger: Arc<Mutex<Ledger>>,
    /// How long `tok_timeout` keeps a request open: "forever" for any client.
    hang: Duration,
}

#[derive(Debug, Deserialize)]
struct AuthorizeBody {
    order_id: String,
    amount_minor: i64,
    currency: String,
    card_token: String,
}

#[derive(Debug, Deserialize)]
struct RefundBody {
    amount_minor: i64,
}

#[derive(Debug, Deserialize)]
struct ByKey {
    idempotency_key: String,
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

fn missing_key() -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"error": "an Idempotency-Key header is required"}),
    )
}

impl Simulator {
    pub fn new() -> Self {
        Self {
            ledger: Arc::default(),
            hang: Duration::from_secs(3600),
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/authorizations", post(authorize).get(find_by_key))
            .route("/authorizations/{id}/capture", post(capture))
            .route("/authorizations/{id}/void", post(void))
            .route("/authorizations/{id}/refunds", post(refund))
            .route("/ledger", get(ledger))
            .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn authorize(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Json(body): Json<AuthorizeBody>,
) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    let hang = {
        let mut ledger = sim.lock();
        if body.card_token == "tok_timeout" {
            // The hold is made, but the answer never arrives in time.
            if !ledger.by_key.contains_key(&key) {
                let id = format!("auth_{}", uuid::Uuid::new_v4().simple());
                ledger.authorizations.insert(
                    id.clone(),
                    Authorization {
                        order_id: body.order_id.clone(),
                        amount_minor: body.amount_minor,
                        currency: body.currency.clone(),
                        status: Status::Authorized,
                        refunded_minor: 0,
                    },
                );
                ledger.entries.push(LedgerEntry {
                    kind: "authorize",
                    authorization_id: id.clone(),
                    order_id: body.order_id.clone(),
                    amount_minor: body.amount_minor,
                    currency: body.currency.clone(),
                    idempotency_key: key.clone(),
                });
                ledger.by_key.insert(key.clone(), id);
            }
            true
        } else {
            false
        }
    };
    if hang {
        tokio::time::sleep(sim.hang).await;
        return answer(StatusCode::GATEWAY_TIMEOUT, json!({"error": "timed out"}));
    }
    let mut ledger = sim.lock();
    if let Some((status, value)) = ledger.answers.get(&key) {
        return answer(*status, value.clone());
    }
    if body.card_token == "tok_flaky" {
        let attempts = ledger.attempts.entry(key.clone()).or_insert(0);
        *attempts += 1;
        if *attempts <= 2 {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "try again"}),
            );
        }
    }
    let (status, value) = match body.card_token.as_str() {
        "tok_visa" | "tok_flaky" if body.amount_minor > 0 => {
            let id = format!("auth_{}", uuid::Uuid::new_v4().simple());
            ledger.authorizations.insert(
                id.clone(),
                Authorization {
                    order_id: body.order_id.clone(),
                    amount_minor: body.amount_minor,
                    currency: body.currency.clone(),
                    status: Status::Authorized,
                    refunded_minor: 0,
                },
            );
            ledger.entries.push(LedgerEntry {
                kind: "authorize",
                authorization_id: id.clone(),
                order_id: body.order_id,
                amount_minor: body.amount_minor,
                currency: body.currency,
                idempotency_key: key.clone(),
            });
            ledger.by_key.insert(key.clone(), id.clone());
            (
                StatusCode::CREATED,
                json!({"authorization_id": id, "status": "authorized"}),
            )
        }
        "tok_decline" => (
            StatusCode::PAYMENT_REQUIRED,
            json!({"status": "declined", "reason": "insufficient_funds"}),
        ),
        _ => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "unknown card token or invalid amount"}),
        ),
    };
    ledger.answers.insert(key, (status, value.clone()));
    answer(status, value)
}

/// Runs `change` once per key; retries get the first answer.
fn once(
    sim: &Simulator,
    key: String,
    change: impl FnOnce(&mut Ledger) -> (StatusCode, Value),
) -> Response {
    let mut ledger = sim.lock();
    if let Some((status, value)) = ledger.answers.get(&key) {
        return answer(*status, value.clone());
    }
    let (status, value) = change(&mut ledger);
    if status.is_success() || status.is_client_error() {
        ledger.answers.insert(key, (status, value.clone()));
    }
    answer(status, value)
}

fn not_found(id: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error": format!("no authorization {id}")}),
    )
}

async fn capture(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    once(&sim, key.clone(), |ledger| {
        let Some(auth) = ledger.authorizations.get_mut(&id) else {
            return not_found(&id);
        };
        match auth.status {
            Status::Authorized => {
                auth.status = Status::Captured;
                let entry = LedgerEntry {
                    kind: "capture",
                    authorization_id: id.clone(),
                    order_id: auth.order_id.clone(),
                    amount_minor: auth.amount_minor,
                    currency: auth.currency.clone(),
                    idempotency_key: key,
                };
                ledger.entries.push(entry);
                (StatusCode::OK, json!({"status": "captured"}))
            }
            Status::Captured => (StatusCode::OK, json!({"status": "captured"})),
            Status::Voided => (
                StatusCode::CONFLICT,
                json!({"error": "the authorization was voided"}),
            ),
        }
    })
}

async fn void(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    once(&sim, key.clone(), |ledger| {
        let Some(auth) = ledger.authorizations.get_mut(&id) else {
            return not_found(&id);
        };
        match auth.status {
            Status::Authorized => {
                auth.status = Status::Voided;
                let entry = LedgerEntry {
                    kind: "void",
                    authorization_id: id.clone(),
                    order_id: auth.order_id.clone(),
                    amount_minor: auth.amount_minor,
                    currency: auth.currency.clone(),
                    idempotency_key: key,
                };
                ledger.entries.push(entry);
                (StatusCode::OK, json!({"status": "voided"}))
            }
            Status::Voided => (StatusCode::OK, json!({"status": "voided"})),
            Status::Captured => (
                StatusCode::CONFLICT,
                json!({"error": "captured; refund it instead"}),
            ),
        }
    })
}

async fn refund(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> Response {
    let Some(key) = key_of(&headers) else {
        return missing_key();
    };
    once(&sim, key.clone(), |ledger| {
        let Some(auth) = ledger.authorizations.get_mut(&id) else {
            return not_found(&id);
        };
        let refundable = auth.amount_minor - auth.refunded_minor;
        if auth.status != Status::Captured
            || body.amount_minor <= 0
            || body.amount_minor > refundable
        {
            return (
                StatusCode::CONFLICT,
                json!({"error": format!("at most {refundable} can be refunded")}),
            );
        }
        auth.refunded_minor += body.amount_minor;
        let entry = LedgerEntry {
            kind: "refund",
            authorization_id: id.clone(),
            order_id: auth.order_id.clone(),
            amount_minor: body.amount_minor,
            currency: auth.currency.clone(),
            idempotency_key: key,
        };
        ledger.entries.push(entry);
        (StatusCode::CREATED, json!({"status": "refunded"}))
    })
}

async fn find_by_key(State(sim): State<Simulator>, Query(query): Query<ByKey>) -> Response {
    let ledger = sim.lock();
    match ledger.by_key.get(&query.idempotency_key) {
        Some(id) => {
            let status = ledger.authorizations.get(id).map(|a| a.status);
            answer(
                StatusCode::OK,
                json!({"authorization_id": id, "status": status}),
            )
        }
        None => answer(
            StatusCode::NOT_FOUND,
            json!({"error": "no authorization for this key"}),
        ),
    }
}

async fn ledger(State(sim): State<Simulator>) -> Json<Value> {
    let ledger = sim.lock();
    Json(json!({"entries": ledger.entries}))
}

/// A bound simulator.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    simulator: Simulator,
}

impl Server {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            simulator: Simulator::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Not behind http-kit's stack: the simulator speaks a provider's dialect (402, 409
        // with plain JSON bodies), not our problem+json.
        let router = self.simulator.router();
        http_kit::serve::run_until_stopped(self.listener, router, shutdown, Duration::from_secs(1))
            .await
    }
}
