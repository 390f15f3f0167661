#!/usr/bin/env bash
# Fails when a crate depends on what its layer must not use (see ARCHITECTURE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

status=0
forbid() { # crate, regex of forbidden dependencies, reason
  local found
  found="$(cargo tree -p "$1" -e normal --prefix none --locked 2>/dev/null | awk '{print $1}' | sort -u | grep -Ex "$2" || true)"
  if [ -n "$found" ]; then
    printf 'error: %s depends on %s (%s)\n' "$1" "$(echo $found)" "$3" >&2
    status=1
  fi
}

forbid domain 'sqlx|postgres-es|axum|hyper|rdkafka|reqwest' "the domain does no IO"
forbid infra 'axum|write-side|read-side|projections' "adapters know nothing of HTTP or the services"
forbid write-side 'read-side|projections' "the write side does not read models"
forbid read-side 'write-side|projections' "the read side only reads"
forbid projections 'write-side|read-side|axum' "projections write read models, nothing else"
forbid http-kit 'write-side|read-side|projections' "shared HTTP plumbing knows no service"
exit $status
