//! The gateway client (infra) against the simulator, over real HTTP.

use std::time::{Duration, Instant};

use domain::ids::OrderId;
use domain::money::{Currency, Money};
use domain::ports::{AuthorizationOutcome, AuthorizationRequest, GatewayError, PaymentGateway};
use domain::text::CardToken;
use infra::payment_gateway::{
    BreakerConfig, BreakerState, GatewayClientConfig, HttpPaymentGateway,
};
use payment_gateway_sim::Server;
use serde_json::Value;

async fn simulator() -> String {
    let server = Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    url
}

fn client(url: &str, timeout: Duration, breaker: BreakerConfig) -> HttpPaymentGateway {
    let mut config = GatewayClientConfig::new(url, timeout);
    config.backoff_base = Duration::from_millis(10);
    config.breaker = breaker;
    HttpPaymentGateway::new(config).expect("client")
}

fn request(token: &str, key: &str) -> AuthorizationRequest {
    AuthorizationRequest {
        order_id: OrderId::from(uuid::Uuid::new_v4()),
        amount: Money::new(2500, Currency::parse("EUR").expect("EUR")).expect("money"),
        card_token: CardToken::parse(token).expect("token"),
        idempotency_key: key.to_owned(),
    }
}

async fn ledger(url: &str) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{url}/ledger"))
        .await
        .expect("test setup")
        .json()
        .await
        .expect("test setup");
    body["entries"].as_array().expect("test setup").clone()
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().expect("test setup"))
        .collect()
}

#[tokio::test]
async fn a_visa_card_is_authorized_captured_and_refunded_once_per_key() {
    let url = simulator().await;
    let gateway = client(&url, Duration::from_secs(2), BreakerConfig::default());
    let AuthorizationOutcome::Approved(id) =
        gateway.authorize(&request("tok_visa", "a1")).await.unwrap()
    else {
        panic!("tok_visa approves");
    };
    // The same key again: the same authorization, nothing new in the ledger.
    assert_eq!(
        gateway.authorize(&request("tok_visa", "a1")).await.unwrap(),
        AuthorizationOutcome::Approved(id.clone())
    );
    gateway.capture(&id, "c1").await.unwrap();
    gateway.capture(&id, "c1").await.unwrap();
    let ten = Money::new(1000, Currency::parse("EUR").unwrap()).unwrap();
    gateway.refund(&id, ten, "r1").await.unwrap();
    gateway.refund(&id, ten, "r1").await.unwrap();
    assert_eq!(
        kinds(&ledger(&url).await),
        ["authorize", "capture", "refund"]
    );
    // More than what is left is refused, not retried.
    let too_much = Money::new(2000, Currency::parse("EUR").unwrap()).unwrap();
    assert!(matches!(
        gateway.refund(&id, too_much, "r2").await,
        Err(GatewayError::Refused(_))
    ));
}

#[tokio::test]
async fn a_declining_card_is_declined_and_an_unknown_one_refused() {
    let url = simulator().await;
    let gateway = client(&url, Duration::from_secs(2), BreakerConfig::default());
    match gateway
        .authorize(&request("tok_decline", "d1"))
        .await
        .unwrap()
    {
        AuthorizationOutcome::Declined(reason) => assert_eq!(reason.as_str(), "insufficient_funds"),
        other => panic!("expected a decline, got {other:?}"),
    }
    assert!(matches!(
        gateway.authorize(&request("tok_unknown", "u1")).await,
        Err(GatewayError::Refused(_))
    ));
    assert!(ledger(&url).await.is_empty());
}

#[tokio::test]
async fn a_flaky_gateway_is_retried_within_the_call() {
    let url = simulator().await;
    let gateway = client(&url, Duration::from_secs(2), BreakerConfig::default());
    let outcome = gateway
        .authorize(&request("tok_flaky", "f1"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, AuthorizationOutcome::Approved(_)),
        "503 twice, then approved"
    );
    assert_eq!(gateway.breaker().state(), BreakerState::Closed);
    assert_eq!(kinds(&ledger(&url).await), ["authorize"]);
}

#[tokio::test]
async fn a_lost_answer_times_out_and_the_authorization_can_be_found_and_voided() {
    let url = simulator().await;
    let gateway = client(&url, Duration::from_millis(200), BreakerConfig::default());
    let err = gateway
        .authorize(&request("tok_timeout", "t1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GatewayError::Unavailable(ref reason) if reason == "timed out"),
        "{err}"
    );
    let id = gateway
        .find_authorization("t1")
        .await
        .unwrap()
        .expect("the hold was made");
    gateway.void(&id, "v1").await.unwrap();
    assert_eq!(kinds(&ledger(&url).await), ["authorize", "void"]);
    assert_eq!(gateway.find_authorization("nothing").await.unwrap(), None);
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_then_fails_fast() {
    let url = simulator().await;
    let breaker = BreakerConfig {
        window: 2,
        min_calls: 2,
        failure_rate: 0.5,
        open_for: Duration::from_secs(60),
    };
    let gateway = client(&url, Duration::from_millis(100), breaker);
    for key in ["t1", "t2"] {
        assert!(
            gateway
                .authorize(&request("tok_timeout", key))
                .await
                .is_err()
        );
    }
    assert_eq!(gateway.breaker().state(), BreakerState::Open);
    let started = Instant::now();
    let err = gateway
        .authorize(&request("tok_visa", "v1"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::Unavailable("circuit breaker open".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no call was made"
    );
    assert_eq!(
        kinds(&ledger(&url).await),
        ["authorize", "authorize"],
        "only the two timeouts"
    );
}
