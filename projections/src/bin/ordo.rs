//! `ordo`: the operator CLI (see `projections::cli`).

/// jemalloc: a rebuild folding the log in memory (ADR 0009) holds hundreds of thousands of
/// rows while it allocates and frees every batch's events, a heap glibc's allocator spent a
/// fifth of the rebuild's CPU on (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    projections::cli::main().await
}
