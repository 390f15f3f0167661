# What scripts/bench and scripts/profile share: databases of their own beside the one
# DATABASE_URL names, and the system started on its own ports. Sourced after lib.sh.

# The benchmark databases sit beside the one DATABASE_URL names.
admin_url="$DATABASE_URL"
db_url() { printf '%s/%s' "${admin_url%/*}" "$1"; }
fresh_db() {
  PGOPTIONS='-c client_min_messages=warning' psql "$admin_url" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
  psql "$admin_url" -qc "CREATE DATABASE $1" >/dev/null
}

export WRITE_ADDR=127.0.0.1:18080 READ_ADDR=127.0.0.1:18081
export PAYMENT_GATEWAY_SIM_ADDR=127.0.0.1:18090 PAYMENT_GATEWAY_URL=http://127.0.0.1:18090

# The services started (stop_services stops them), and `--service NAME=PID` for each, as
# ordo-bench takes them.
pids=()
services=()
# start_service BIN_DIR NAME DATABASE_URL LOG
start_service() {
  DATABASE_URL="$3" "$1/$2" >"$4" 2>&1 &
  pids+=("$!")
  services+=(--service "$2=$!")
}
stop_services() {
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  pids=()
  services=()
}
# wait_ready URL WHAT: waits up to 20 s for URL to answer.
wait_ready() {
  for i in $(seq 1 100); do
    if curl -fs "$1" >/dev/null 2>&1; then return 0; fi
    [ "$i" -lt 100 ] || die "$2 did not answer at $1"
    sleep 0.2
  done
}
# start_system BIN_DIR DATABASE_URL LOG_DIR: the system as scripts/run starts it (command
# API, query API, projector, saga worker, payment gateway simulator) on the ports above,
# once every API answers.
start_system() {
  local name
  for name in payment-gateway-sim write-side read-side projector saga-worker; do
    start_service "$1" "$name" "$2" "$3/$name.log"
  done
  wait_ready "http://$WRITE_ADDR/readyz" "the command API (see $3/)"
  wait_ready "http://$READ_ADDR/readyz" "the query API (see $3/)"
  wait_ready "$PAYMENT_GATEWAY_URL/livez" "the payment gateway simulator (see $3/)"
}
