# Sourced by the measurement scripts (scripts/goodput, scripts/scale-workers):
# starts and stops a fresh pipeline on the native stack, from release
# binaries in $SVC, logging to $LOG, with the processes under test prefixed
# by "${SUT[@]}" (e.g. taskset). The caller sets SVC, LOG and SUT.
#
# Each service runs under scripts/lib/supervise.sh (`supervised NAME CMD...`),
# so a crash costs a restart within seconds, not the measurement; its
# supervisor logs each restart in the service's log and counts them in
# .stack/run/NAME.restarts. `pids` holds the supervisors: SIGTERM to one
# stops its service.

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/partitions.sh"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tls.sh"

pids=()
SUPERVISE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/supervise.sh"

# supervised NAME env VAR=VALUE... COMMAND...: runs COMMAND with those
# settings under its supervisor in the background (the supervisor gets the
# settings too, so its lines follow TURNSTILE_LOG_FORMAT), logging to
# $LOG/NAME.log, and adds the supervisor to `pids`.
supervised() {
  local name=$1 settings=()
  shift 2
  while [[ $1 == *=* ]]; do settings+=("$1"); shift; done
  env "${settings[@]}" "$SUPERVISE" "$name" "$@" >"$LOG/$name.log" 2>&1 </dev/null & pids+=($!)
}
stop_services() {
  [ ${#pids[@]} -eq 0 ] && return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

# API_TLS=DIR (holding api.pem, api.key and the ca.pem that signed them):
# claim-api serves both its listeners over TLS with that certificate.
# `api_url` is where the generator sends (add `--cacert "$API_TLS/ca.pem"`).
api_url() {
  if [ -n "${API_TLS:-}" ]; then echo https://127.0.0.1:8080; else echo http://127.0.0.1:8080; fi
}

wait_http() {
  local ca=()
  [[ $1 == https://* ]] && ca=("$API_TLS/ca.pem")
  wait_url "$1" "${ca[@]}" && return 0
  echo "$(basename "$0"): $1 did not become ready; see $LOG" >&2
  exit 1
}

DATABASE=postgres://postgres@127.0.0.1:5432/turnstile
common=(DATABASE_URL=$DATABASE TURNSTILE_REDIS_URL=redis://127.0.0.1:6379
        TURNSTILE_KAFKA_BROKERS=127.0.0.1:9092 TURNSTILE_LOG_FORMAT=json RUST_LOG=warn)

# fresh_database NAME: drops and creates database NAME on the stack's
# Postgres and points the services (and $DATABASE) at it, so a measurement
# does not depend on what earlier runs left behind: the shared `turnstile`
# database grows with every test and sale (two million claims, 775 MB, on
# a machine that had run the suite for a day), and every door answer reads
# its keys' claims from it.
fresh_database() {
  psql -q -X -h 127.0.0.1 -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
  DATABASE=postgres://postgres@127.0.0.1:5432/$1
  common[0]=DATABASE_URL=$DATABASE
}

# start_pipeline WORKERS: a fresh broker (its cost grows with its log), then
# WORKERS claim-workers (metrics on 9101 and up) and one claim-api on 8080
# (operator port 9100), and waits until each is ready and the workers hold
# every partition of the claims topic.
start_pipeline() {
  local workers=$1 i
  TURNSTILE_STACK_SERVICES=kafka scripts/stack down >/dev/null 2>&1 || true
  scripts/stack up >/dev/null
  for i in $(seq "$workers"); do
    # turnstile_bus=info: the assignments, which wait_partitions reads.
    supervised "pipeline-worker-$i" env "${common[@]}" TURNSTILE_METRICS_ADDR=127.0.0.1:$((9100 + i)) \
      RUST_LOG=warn,turnstile_bus=info "${SUT[@]}" "$SVC/claim-worker"
  done
  # One generator stands for every client with one key: no per-key limit.
  local tls=() operator=http://127.0.0.1:9100
  if [ -n "${API_TLS:-}" ]; then
    tls=(TURNSTILE_TLS_CERT="$API_TLS/api.pem" TURNSTILE_TLS_KEY="$API_TLS/api.key")
    operator=https://127.0.0.1:9100
  fi
  supervised pipeline-claim-api env "${common[@]}" "${tls[@]}" TURNSTILE_HTTP_ADDR=127.0.0.1:8080 \
    TURNSTILE_METRICS_ADDR=127.0.0.1:9100 TURNSTILE_KEY_RATE=0 "${SUT[@]}" "$SVC/claim-api"
  wait_http "$operator/readyz"
  local held=()
  for i in $(seq "$workers"); do
    wait_http "http://127.0.0.1:$((9100 + i))/healthz"
    held+=("pipeline-worker-$i=$((9100 + i))")
  done
  # A sale that starts while the group still forms waits for its
  # rebalances: seconds on the first claims, whatever the build.
  wait_partitions 60 "${held[@]}" >&2
}
