# Sourced by scripts/demo and scripts/lib/pipeline.sh (the caller sets LOG,
# where each worker NAME logs to $LOG/NAME.log).
#
# wait_partitions SECONDS WORKER...: until the workers between them hold
# every partition of the claims topic, each worker at least one, none twice:
# the consumer group has formed and settled. Until then the first claims of
# a sale wait for the group's join and rebalances (seconds of decide latency).
# A worker's holding is read from its current run's log ("partitions
# assigned" and "partitions revoked"; a restart logged by its supervisor
# starts afresh) and, whatever RUST_LOG hides, from the partitions it reports
# lag for on /metrics. After SECONDS the sale starts anyway, with a warning.
wait_partitions() {
  local seconds=$1
  shift
  python3 - "$seconds" "${TURNSTILE_PARTITIONS:-6}" "${TURNSTILE_TOPIC_PREFIX:-}claims.requested" "$LOG" "$@" <<'PY'
import json, re, sys, time, urllib.request

seconds, partitions, topic, log_dir = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
workers = [w.split("=", 1) for w in sys.argv[5:]]  # NAME=METRICS_PORT
wanted = set(range(partitions))

def from_log(name):
    held = set()
    try:
        lines = open(f"{log_dir}/{name}.log", errors="replace").read().splitlines()
    except OSError:
        return held
    for line in lines:
        try:
            event = json.loads(line)
            fields = event.get("fields", event)  # flattened or not
            message, listed = fields.get("message", ""), str(fields.get("partitions", ""))
        except (ValueError, AttributeError):
            message, listed = line, line
        if "supervise" in line and "restarting" in message:
            held = set()
        elif "partitions assigned" in message or "partitions revoked" in message:
            found = re.search(r"\[([\d,\s]*)\]", listed)
            numbers = {int(n) for n in re.findall(r"\d+", found.group(1))} if found else set()
            held = held | numbers if "assigned" in message else held - numbers
    return held

def from_metrics(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return set()
    held = set()
    for labels in re.findall(r"^turnstile_kafka_partition_lag\{([^}]*)\}", text, re.MULTILINE):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("topic") == topic and label.get("partition", "").isdigit():
            held.add(int(label["partition"]))
    return held

deadline = time.monotonic() + seconds
started = time.monotonic()
while True:
    holding = {name: (from_log(name) | from_metrics(port)) & wanted for name, port in workers}
    union = set().union(*holding.values())
    overlap = sum(len(h) for h in holding.values()) > len(union)
    idle = [n for n, h in holding.items() if not h] if len(workers) <= partitions else []
    if union == wanted and not overlap and not idle:
        print(f"workers hold all {partitions} partitions of {topic} after {time.monotonic() - started:.1f} s: "
              + ", ".join(f"{n} {sorted(h)}" for n, h in holding.items()))
        break
    if time.monotonic() > deadline:
        print(f"after {seconds:.0f} s the workers hold partitions {sorted(union)} of {partitions} of {topic} "
              f"({', '.join(f'{n} {sorted(h)}' for n, h in holding.items())}); starting the sale anyway, its first "
              f"claims may wait for the group to settle. See the workers' logs in {log_dir}", file=sys.stderr)
        break
    time.sleep(0.2)
PY
}

