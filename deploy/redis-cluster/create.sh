#!/bin/sh
# Forms the Redis Cluster of docker-compose.cluster.yml from the nodes given
# as host:port: with --cluster-replicas 1, the first half become masters and
# each gets one replica. The one-shot service redis-cluster-init runs it on
# every `up`, so a cluster that is already formed is left as it is.
set -eu

first=$1
host=${first%:*}
port=${first##*:}
info() { redis-cli -h "$host" -p "$port" cluster info | tr -d '\r' | sed -n "s/^$1://p"; }

if [ "$(info cluster_known_nodes)" -gt 1 ]; then
  # Its nodes met before (their containers were restarted, not recreated):
  # give them time to find each other again rather than form a second cluster.
  for _ in $(seq 30); do
    if [ "$(info cluster_state)" = ok ]; then
      echo "redis cluster: already formed"
      exit 0
    fi
    sleep 1
  done
  echo "redis cluster: formed before, but its state is not ok;" \
       "'docker compose down' and 'up' form a new one" >&2
  exit 1
fi

exec redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
