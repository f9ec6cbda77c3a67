#!/usr/bin/env bash
# Runs N Tessera nodes on this machine against one PostgreSQL, as a load balancer would see
# them: each node a `tessera serve` process with its own port, sharing the database, the KEK and
# the TLS files. Settings come from the environment (TESSERA_*, DATABASE_URL) or --config, as
# for `tessera serve`; run `tessera migrate` first.
#
#   scripts/cluster.sh start [--config FILE] N
#                                 start nodes 1..N on ports BASE..BASE+N-1 (any free ports when
#                                 BASE is 0) and wait until each serves
#   scripts/cluster.sh stop       SIGTERM every node (they drain and flush their audit chains)
#   scripts/cluster.sh status     list nodes: port, pid, running or not
#
# CLUSTER_BIN (default: target/release/tessera), CLUSTER_DIR (default: target/cluster:
# pids and logs), CLUSTER_BASE_PORT (default 8443), CLUSTER_HOST (default 127.0.0.1); not
# TESSERA_* names, which `tessera serve` would refuse as unknown settings.
set -euo pipefail

bin="${CLUSTER_BIN:-target/release/tessera}"
dir="${CLUSTER_DIR:-target/cluster}"
base_port="${CLUSTER_BASE_PORT:-8443}"
host="${CLUSTER_HOST:-127.0.0.1}"

usage() {
  sed -n '2,14p' "$0" >&2
  exit 2
}

start() {
  local count="$1"
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || usage
  [ -x "$bin" ] || { echo "cluster: $bin is not an executable (set CLUSTER_BIN)" >&2; exit 1; }
  mkdir -p "$dir"
  local node port
  for node in $(seq 1 "$count"); do
    port=0
    [ "$base_port" = 0 ] || port=$((base_port + node - 1))
    if [ -f "$dir/node-$node.pid" ] && kill -0 "$(cat "$dir/node-$node.pid")" 2>/dev/null; then
      echo "cluster: node $node is already running" >&2
      exit 1
    fi
    TESSERA_SERVER__BIND="$host:$port" "$bin" serve "${config_args[@]}" \
      >"$dir/node-$node.log" 2>&1 &
    echo $! >"$dir/node-$node.pid"
  done
  for node in $(seq 1 "$count"); do
    local waited=0
    until grep -q "serving HTTPS" "$dir/node-$node.log" 2>/dev/null; do
      if ! kill -0 "$(cat "$dir/node-$node.pid")" 2>/dev/null; then
        echo "cluster: node $node exited; its log:" >&2
        cat "$dir/node-$node.log" >&2
        stop
        exit 1
      fi
      waited=$((waited + 1))
      if [ "$waited" -gt 300 ]; then
        echo "cluster: node $node did not start within 30 s" >&2
        stop
        exit 1
      fi
      sleep 0.1
    done
    # The port the node bound, as it logged it (the one asked for, or the free one it got).
    grep "serving HTTPS" "$dir/node-$node.log" | grep -oE "${host//./\\.}:[0-9]+" | head -n 1 |
      sed 's/.*://' >"$dir/node-$node.port"
    echo "node $node: https://$host:$(cat "$dir/node-$node.port") (pid $(cat "$dir/node-$node.pid"))"
  done
}

stop() {
  local pidfile pid
  for pidfile in "$dir"/node-*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pidfile in "$dir"/node-*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$pidfile"
  done
}

status() {
  local pidfile node pid
  for pidfile in "$dir"/node-*.pid; do
    [ -e "$pidfile" ] || continue
    node="$(basename "$pidfile" .pid)"
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then state=running; else state=stopped; fi
    echo "$node: port $(cat "$dir/$node.port") pid $pid $state"
  done
}

command="${1:-}"
shift || true
config_args=()
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ -n "${2:-}" ] || usage; config_args=(--config "$2"); shift 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
case "$command" in
  start) start "${positional[0]:-}" ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
