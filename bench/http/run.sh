#!/usr/bin/env bash
# Measures the order service's HTTP API with wrk: POST /orders (bench/http/post.lua) and,
# as the HTTP ceiling, GET /healthz, against one `ferry serve` on a fresh sqlite:// broker.
#
#   bench/http/run.sh [FERRY_BINARY] [extra serve flags...]
#   DURATION=10s CONNECTIONS=64 bench/http/run.sh build/src/cli/ferry --no-processor
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ferry="${1:-$here/../../build/src/cli/ferry}"
shift || true
duration="${DURATION:-10s}"
connections="${CONNECTIONS:-64}"
dir="$(mktemp -d)"
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT

"$ferry" serve --listen 127.0.0.1:0 --broker "sqlite://$dir/ferry.db" --store "$dir/orders.db" "$@" \
  >"$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/serve.log" && break; sleep 0.1; done
address="$(grep -o 'listening on [0-9.]*:[0-9]*' "$dir/serve.log" | sed 's/listening on //')"

echo "== POST /orders ($connections connections, $duration)"
wrk -t2 -c"$connections" -d"$duration" --latency -s "$here/post.lua" "http://$address/orders"
echo "== GET /healthz ($connections connections, $duration)"
wrk -t2 -c"$connections" -d"$duration" --latency "http://$address/healthz"
