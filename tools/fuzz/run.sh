#!/usr/bin/env bash
# Coverage-guided fuzzing of Sprout's parsers with AFL++ (stable Rust, through cargo-afl).
#   tools/fuzz/run.sh [EXECS] [TARGET…]
# runs each target (all of crates/sprout-fuzz's, by their seed folders, by default) for EXECS executions (1000000
# by default) from its committed seeds, prints executions, paths found and crashes per
# target, and copies every crashing or hanging input to crates/sprout-fuzz/regressions/TARGET/,
# where the test suite replays it. Needs a C compiler and make (for AFL++, built once by
# `cargo afl config --build`); installs cargo-afl from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
execs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # Every target has a seed folder (a test checks it).
  targets=($(ls crates/sprout-fuzz/seeds))
fi
if ! cargo afl --version >/dev/null 2>&1; then
  cargo install --locked cargo-afl
fi
cargo afl config --build >/dev/null 2>&1 || true
(cd tools/fuzz/afl && cargo afl build --release)
bin=$root/tools/fuzz/afl/target/release/sprout-afl
work=${FUZZ_WORK:-$root/target/fuzz}
mkdir -p "$work"
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_QUIET=1
printf '%-14s %10s %8s %8s %6s %6s\n' target execs exec/s paths crashes hangs
for t in "${targets[@]}"; do
  out=$work/$t
  rm -rf "$out"
  # -E: stop after this many executions; -t: a run over 2 s is a hang.
  cargo afl fuzz -E "$execs" -t 2000 -i "crates/sprout-fuzz/seeds/$t" -o "$out" "$bin" "$t" \
    >"$work/$t.log" 2>&1 || { echo "$t: afl-fuzz failed, see $work/$t.log"; tail -5 "$work/$t.log"; continue; }
  stats=$out/default/fuzzer_stats
  get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
  printf '%-14s %10s %8s %8s %6s %6s\n' "$t" "$(get execs_done)" "$(get execs_per_sec)" \
    "$(get corpus_count)" "$(get saved_crashes)" "$(get saved_hangs)"
  mkdir -p "crates/sprout-fuzz/regressions/$t"
  for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
    [ -f "$f" ] || continue
    cp "$f" "crates/sprout-fuzz/regressions/$t/$(sha1sum "$f" | cut -c1-16)"
  done
done
