# The development and test Kafka broker: nisshi, a Kafka-protocol broker from crates.io.
# Sourced by scripts/test and scripts/run, after lib.sh. Production points KAFKA_BROKERS at
# Apache Kafka or Redpanda instead.

NISSHI_VERSION="0.7.0-pre.2"
NISSHI_ROOT="${NISSHI_ROOT:-$HOME/.cache/ordo/nisshi}"
export NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"

# Installs the broker once (a cold build takes 10-17 minutes); later runs find it cached.
ensure_nisshi() {
  if [ -x "$NISSHI_BIN" ] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return
  fi
  mkdir -p "$NISSHI_ROOT"
  (
    # One installer at a time; the others wait and then find the binary.
    flock 9
    if [ -x "$NISSHI_BIN" ] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
      exit 0
    fi
    log "installing the nisshi $NISSHI_VERSION broker into $NISSHI_ROOT (once; about 10-17 minutes)"
    CARGO_TARGET_DIR="$NISSHI_ROOT/build" cargo install nisshi --version "$NISSHI_VERSION" --locked \
      --no-default-features --features dynostore,postgres --root "$NISSHI_ROOT"
    rm -rf "$NISSHI_ROOT/build"
  ) 9>"$NISSHI_ROOT/.install.lock"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a broker with in-memory storage on the first free port from $1; sets BROKER_PID
# and KAFKA_BROKERS. Its log goes to $2.
start_nisshi() {
  local port="$1" logfile="$2"
  while port_open "$port"; do port=$((port + 1)); done
  "$NISSHI_BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://nisshi/ >"$logfile" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 200); do
    if port_open "$port"; then
      export KAFKA_BROKERS="127.0.0.1:$port"
      log "Kafka-protocol broker (nisshi) on $KAFKA_BROKERS, log in $logfile"
      return
    fi
    kill -0 "$BROKER_PID" 2>/dev/null || die "the broker exited; see $logfile"
    sleep 0.05
  done
  die "the broker did not open port $port; see $logfile"
}
