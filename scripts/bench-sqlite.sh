#!/usr/bin/env bash
# The sqlite figures of docs/benchmarks.md: run from the repository after `make build`.
set -euo pipefail
ferry=${FERRY:-./build/src/cli/ferry}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { echo "\$ ferry bench $*"; "$ferry" bench "$@"; echo; }
run --broker "sqlite://$dir/a.db" --messages 400000 --size 100 --producers 8 --consumers 0
run --broker "sqlite://$dir/b.db" --messages 1000000 --size 100 --producers 8 --consumers 0 --batch 1000 --window 10000
run --broker "sqlite://$dir/c.db" --messages 200000 --size 100 --producers 8 --consumers 2
run --broker "sqlite://$dir/d.db" --messages 100000 --size 100 --producers 4 --consumers 2 --rate 10000
run --broker "sqlite://$dir/e.db?sync=normal" --messages 400000 --size 100 --producers 8 --consumers 0
