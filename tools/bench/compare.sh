#!/usr/bin/env bash
# Sprout's DiT forward next to diffusers + PyTorch's, same preset, blocks, canvas, threads
# and machine, in one run; prints both JSON lines and the ratio of their fastest dtypes.
#   tools/bench/compare.sh [PRESET] [BLOCKS] [SIZE] [THREADS]
#   tools/bench/compare.sh flux-schnell 1,1 1024x1024 2
# Each side reports the median of REPEAT forwards (default 3: the first of a process also
# pays for faulting in its memory, on both sides).
# Needs target/release/sprout and a Python with torch and diffusers (PYTHON, default
# python3).
set -euo pipefail
preset=${1:-flux-schnell}; blocks=${2:-1,1}; size=${3:-1024x1024}; threads=${4:-2}
PYTHON=${PYTHON:-python3}
repeat=${REPEAT:-3}
here=$(cd "$(dirname "$0")" && pwd)
sprout=${SPROUT:-$here/../../target/release/sprout}
lscpu | grep 'Model name' >&2
echo "features: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2
results=$(mktemp)
for dtype in ${SPROUT_DTYPES:-f32 bf16 q8_0}; do
  "$sprout" bench --dit "$preset" --blocks "$blocks" --size "$size" --dtype "$dtype" \
    --threads "$threads" --repeat "$repeat" | tail -n 1 | sed 's/^/sprout /' >> "$results"
done
for dtype in ${TORCH_DTYPES:-f32 bf16}; do
  "$PYTHON" "$here/torch_dit.py" --preset "$preset" --blocks "$blocks" --size "$size" \
    --dtype "$dtype" --threads "$threads" --repeat "$repeat" | sed 's/^/torch /' >> "$results"
done
cat "$results"
"$PYTHON" - "$results" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]):
    who, j = line.split(" ", 1)
    r = json.loads(j)
    if who not in best or r["seconds"] < best[who]["seconds"]:
        best[who] = r
s, t = best["sprout"], best["torch"]
print(f"fastest: sprout {s['dtype']} {s['seconds']:.2f} s, {s['peak_rss_bytes']/1e9:.2f} GB; "
      f"torch {t['dtype']} {t['seconds']:.2f} s, {t['peak_rss_bytes']/1e9:.2f} GB; "
      f"sprout is {t['seconds']/s['seconds']:.2f}x torch's speed")
PY
