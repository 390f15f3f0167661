//! `ordo`: the operator CLI (see `projections::cli`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    projections::cli::main().await
}
