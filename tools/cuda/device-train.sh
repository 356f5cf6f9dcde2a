#!/usr/bin/env bash
# Train the native DiT on the GPU machine in one device run, and bring the model back.
#
#   tools/cuda/device-train.sh CONFIG TIME_LIMIT [EVAL_COUNT]
#   e.g. tools/cuda/device-train.sh configs/dit-native-gpu.toml 8m 180
#
# Runs from the repository root there, with .gpu/sprout.xz (tools/cuda/pack.sh) carried along.
# It unpacks the binary, puts the CUDA libraries of the machine's PyTorch on LD_LIBRARY_PATH,
# trains CONFIG (which must say device = "cuda") until TIME_LIMIT (the trainer's --time-limit),
# exports the EMA weights, scores them with WorldEval (on the CPU cores) and writes to $OUT:
#   train.log       the trainer's log lines
#   eval.txt        the WorldEval table and JSON line
#   model.tar.part-*  the export (model.json, tokenizer.json, dit/text safetensors; the
#                   autoencoder is the repository's) plus metrics.jsonl, split in 15 MiB parts
# Back here: cat model.tar.part-* | tar x -C DIR, then copy models/ae-native/ae.json and
# ae.safetensors into DIR; DIR is then a model for --model DIR.
set -uo pipefail
CONFIG=${1:?config}; LIMIT=${2:?time limit}; COUNT=${3:-180}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BIN=/tmp/sprout-cuda
xz -dc .gpu/sprout.xz > "$BIN" && chmod +x "$BIN" || { echo "cannot unpack .gpu/sprout.xz"; exit 1; }
NV=$(python3 -c 'import nvidia, os; print(os.pathsep.join(nvidia.__path__))' 2>/dev/null)
LIBS=$(IFS=:; for d in $NV; do find "$d" -name 'lib*.so*' -printf '%h\n'; done | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
if ! "$BIN" --version; then
  echo "the binary does not start; missing libraries:"; ldd "$BIN" | grep "not found"; exit 1
fi
RUN=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$CONFIG")
START=$(date +%s)
"$BIN" train --config "$CONFIG" --time-limit "$LIMIT" 2>&1 | tee "$OUT/train.log" | tail -n 40
echo "trained for $(( $(date +%s) - START )) s"
EXPORT=/tmp/sprout-export
"$BIN" train --config "$CONFIG" --export "$EXPORT" || exit 1
cp "$RUN/metrics.jsonl" "$EXPORT/" 2>/dev/null
tar cf - -C "$EXPORT" --exclude ae.safetensors --exclude ae.json . | split -b 15M - "$OUT/model.tar.part-"
"$BIN" eval --model "$EXPORT" --count "$COUNT" 2>&1 | tee "$OUT/eval.txt" | tail -n 14
ls -l "$OUT"
