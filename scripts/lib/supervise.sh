#!/usr/bin/env bash
# Runs one service and starts it again whenever it dies:
#
#   scripts/lib/supervise.sh NAME COMMAND [ARGS...]
#
# The native counterpart of compose's `restart: on-failure`, used by
# scripts/demo and scripts/lib/pipeline.sh. A service that crashes (a signal
# such as SIGSEGV from a C library, or a non-zero exit) is started again
# after a short back-off: 0.5 s, doubling up to 5 s while it keeps dying,
# and back to 0.5 s once a run lasted a minute. The claims table is the
# record, so a restarted service picks up where the dead one stopped.
#
# - Each restart is logged on stderr (the service's log, as the caller
#   redirects it) with the exit status and the signal, as a JSON line when
#   TURNSTILE_LOG_FORMAT=json, like the service's own lines.
# - $RUN_DIR/NAME.restarts holds the number of restarts so far (0 at start)
#   and $RUN_DIR/NAME.service-pid the pid of the running service, for
#   anything that wants to signal the service rather than its supervisor.
#   RUN_DIR is TURNSTILE_RUN_DIR, or .stack/run in the repository.
# - SIGTERM, SIGINT or SIGHUP to the supervisor is passed to the service as
#   SIGTERM; the supervisor waits for it to exit and exits with it, never
#   restarting it. A service that exits with status 0 stopped on purpose and
#   is not restarted either.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: scripts/lib/supervise.sh NAME COMMAND [ARGS...]" >&2
  exit 2
fi
name=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${TURNSTILE_RUN_DIR:-$ROOT/.stack/run}
mkdir -p "$RUN_DIR"
restarts_file="$RUN_DIR/$name.restarts"
pid_file="$RUN_DIR/$name.service-pid"

MIN_DELAY_MS=500
MAX_DELAY_MS=5000
# A run this long counts as healthy: the next crash waits MIN_DELAY_MS again.
HEALTHY_SECONDS=60

child=
stopping=

say() { # LEVEL MESSAGE [KEY=VALUE...]
  local level=$1 message=$2 field json="" text=""
  shift 2
  for field in "$@"; do
    text+=" $field"
    case ${field#*=} in
      ''|*[!0-9]*) json+=",\"${field%%=*}\":\"${field#*=}\"" ;;
      *) json+=",\"${field%%=*}\":${field#*=}" ;;
    esac
  done
  if [ "${TURNSTILE_LOG_FORMAT:-}" = json ]; then
    printf '{"timestamp":"%s","level":"%s","message":"%s","service":"%s"%s,"target":"supervise"}\n' \
      "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" "$level" "$message" "$name" "$json" >&2
  else
    printf '%s %5s supervise: %s: %s%s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" "$level" "$name" "$message" "$text" >&2
  fi
}

on_signal() {
  stopping=1
  # The service may be between runs (in the back-off): then there is nothing to pass on.
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap on_signal TERM INT HUP

restarts=0
delay_ms=$MIN_DELAY_MS
echo 0 >"$restarts_file"
while :; do
  started=$SECONDS
  "$@" &
  child=$!
  echo "$child" >"$pid_file"
  # `wait` returns early when a trapped signal arrives; wait again until the
  # service itself has exited, so its status is the one we read.
  while :; do
    wait "$child" 2>/dev/null  # the shell's own "Segmentation fault" notice: we log our own
    status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=
  rm -f "$pid_file"
  if [ -n "$stopping" ]; then
    exit "$status"
  fi
  if [ "$status" -eq 0 ]; then
    say INFO "service exited with status 0; not restarting" status=0
    exit 0
  fi
  ran=$((SECONDS - started))
  if [ "$ran" -ge "$HEALTHY_SECONDS" ]; then delay_ms=$MIN_DELAY_MS; fi
  signal=
  if [ "$status" -gt 128 ]; then signal=$(kill -l $((status - 128)) 2>/dev/null); fi
  restarts=$((restarts + 1))
  echo "$restarts" >"$restarts_file"
  say WARN "service exited abnormally; restarting" status="$status" signal="${signal:+SIG$signal}" \
    ran_seconds="$ran" restart="$restarts" delay_ms="$delay_ms"
  # Asleep in the background, so a SIGTERM during the back-off is handled at once.
  sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))" &
  wait $! 2>/dev/null
  [ -n "$stopping" ] && exit 0
  delay_ms=$((delay_ms * 2 > MAX_DELAY_MS ? MAX_DELAY_MS : delay_ms * 2))
done
