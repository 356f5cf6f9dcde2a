#!/usr/bin/env bash
# A training run SIGKILLed at random moments resumes bit-exactly, with no corrupt checkpoint.
#   tools/soak/kill_train.sh [KILLS] [SPROUT]
# trains a tiny autoencoder config (a checkpoint every 2 steps) once without interruption,
# then again killing it with SIGKILL KILLS times (10 by default) at random moments between
# 0.3 and 5 s after each (re)start and resuming each time with --resume, and compares every
# tensor file of the two final checkpoints (weights, AdamW moments, EMA) byte for byte, and
# their state (step, data-stream position, schedule) but for the wall time.
# Exits non-zero on any difference or on a resume that fails.
set -euo pipefail
kills=${1:-10}
sprout=${2:-target/release/sprout}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
config() {
  cat <<TOML
kind = "ae"
out = "$1"
seed = 3
log_every = 1
ckpt_every = 2
[optim]
lr = 0.002
warmup = 2
[ae]
preset = "tiny"
crop = 32
[[stage]]
steps = 300
side = 64
batch = 4
[[stage]]
steps = 300
side = 64
aspect = "any"
pixel_budget = 8192
TOML
}
# Both runs use the same folder (the checkpoint's state records the config, output folder
# included): the uninterrupted one's is moved aside to ref/ when it ends.
config "$work/run" >"$work/run.toml"
t0=$(date +%s.%N)
"$sprout" train --config "$work/run.toml" >"$work/ref.log" 2>&1
t1=$(date +%s.%N)
mv "$work/run" "$work/ref"
echo "uninterrupted run: $(echo "$t1 - $t0" | bc) s"
resume=()
killed=0
while [ "$killed" -lt "$kills" ]; do
  "$sprout" train --config "$work/run.toml" "${resume[@]}" >>"$work/run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.3 + 4.7 * r / 32767 }')"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    killed=$((killed + 1))
    step=$(grep -o '^step [0-9]*' "$work/run.log" | tail -1)
    echo "kill $killed: SIGKILL at ${step:-start}"
  else
    wait "$pid" || { echo "the run failed; its log:"; tail -20 "$work/run.log"; exit 1; }
    echo "the run ended before kill $((killed + 1)); starting it again would retrain nothing"
    break
  fi
  # Resume once a checkpoint exists; before the first one, start afresh.
  if [ -d "$work/run/latest" ] || [ -d "$work/run/latest.old" ]; then resume=(--resume); fi
done
if [ ${#resume[@]} -eq 0 ]; then rm -rf "$work/run"; fi
"$sprout" train --config "$work/run.toml" "${resume[@]}" >>"$work/run.log" 2>&1 \
  || { echo "the final resume failed:"; tail -20 "$work/run.log"; exit 1; }
bad=0
for f in "$work"/ref/latest/*; do
  name=$(basename "$f")
  case $name in
    state.json)
      # The run's wall time differs, by design; every other field must be equal.
      same=$(python3 -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for d in (a, b): d.pop("elapsed_s", None)
print(int(a == b))' "$f" "$work/run/latest/$name") ;;
    *) cmp -s "$f" "$work/run/latest/$name" && same=1 || same=0 ;;
  esac
  if [ "$same" != 1 ]; then
    echo "DIFFERENT: $name"
    bad=1
  fi
done
n=$(ls "$work"/ref/latest | wc -l)
if [ "$bad" -eq 0 ]; then
  echo "$killed kills: all $n files of the final checkpoint are bit-identical to the uninterrupted run's"
fi
exit $bad
