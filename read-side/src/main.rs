use std::time::Duration;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("read-side", &settings.telemetry)?;
    let app = read_side::Application::build(&settings)
        .await
        .context("failed to start the query API")?;
    tracing::info!(addr = %app.local_addr(), "query API listening");
    app.run_until_stopped(infra::shutdown::shutdown_signal(), Duration::from_secs(10))
        .await
}
