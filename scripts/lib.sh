# Shared settings for the scripts in this folder; sourced, not run.

# Builds live outside the clone so fresh clones (and CI) reuse a warm cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ordo/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://root@127.0.0.1:5432/root}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
