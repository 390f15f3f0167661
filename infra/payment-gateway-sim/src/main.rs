//! The payment gateway simulator as a service: `PAYMENT_GATEWAY_SIM_ADDR` (default
//! `127.0.0.1:8090`).

use std::net::SocketAddr;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("payment-gateway-sim", &settings.telemetry)?;
    let addr: SocketAddr = settings.payment_gateway.simulator_addr;
    let server = payment_gateway_sim::Server::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    tracing::info!(addr = %server.local_addr(), "payment gateway simulator listening");
    server
        .run_until_stopped(infra::shutdown::shutdown_signal())
        .await
}
