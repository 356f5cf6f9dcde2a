#!/usr/bin/env bash
# Soak test: 64 clients for 10 minutes against one `sprout serve` process, then against a
# front end with three workers over Redis, on loopback, with a tiny random model (the
# serving path is what is soaked, not the model).
#   tools/soak/run.sh [SECONDS] [CLIENTS]
# Needs target/release/sprout, target/release/examples/tiny_bundle (cargo build --release
# --workspace --all-targets) and redis-server. Prints soak.py's report for each setup.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}
clients=${2:-64}
sprout=target/release/sprout
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
target/release/examples/tiny_bundle "$work/model" >/dev/null
# The port a server prints on its first line (`listening on http://ADDR`).
addr_of() { for _ in $(seq 600); do a=$(sed -n 's|^listening on http://||p' "$1" | head -1); [ -n "$a" ] && { echo "$a"; return; }; sleep 0.1; done; echo "no address in $1" >&2; exit 1; }

# SETUPS=distributed (or single) runs only that one; FRONT_ENV="VAR=VALUE …" sets the
# environment of the distributed front end (e.g. MALLOC_ARENA_MAX=2).
setups=${SETUPS:-single distributed}
if [[ $setups == *single* ]]; then
echo "== one process"
"$sprout" serve --model "$work/model" --port 0 >"$work/single.log" 2>&1 &
pids+=($!)
a=$(addr_of "$work/single.log")
python3 tools/soak/soak.py "http://$a" "$secs" "$clients" "${pids[0]}"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
fi
[[ $setups == *distributed* ]] || exit 0

echo "== front end + 3 workers over Redis"
port=$((20000 + RANDOM % 20000))
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --appendonly yes --save '' >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
url=redis://127.0.0.1:$port
for w in a b c; do
  "$sprout" worker --broker "$url" --model "$work/model" --name "$w" >"$work/worker-$w.log" 2>&1 &
  pids+=($!)
done
env ${FRONT_ENV:-} "$sprout" serve --broker "$url" --workers-expected 3 --port 0 >"$work/front.log" 2>&1 &
pids+=($!)
a=$(addr_of "$work/front.log")
python3 tools/soak/soak.py "http://$a" "$secs" "$clients" "$(IFS=,; echo "${pids[*]:1}")"
