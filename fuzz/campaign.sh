#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), one after the other, one job each,
# from freshly generated seeds plus whatever corpus/ already holds, and prints a
# Markdown table row per target: run time, executions, exec/s, corpus size.
# A crash, a timeout (one input over 10 s) or an out-of-memory stops the campaign;
# the input is under artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
cargo fuzz build
"target/$(rustc -vV | sed -n 's/^host: //p')/release/gen_seeds"
echo "| target | run time | executions | exec/s | corpus (files, size) |"
echo "| --- | --- | --- | --- | --- |"
for src in fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  log="target/campaign-$t.log"
  dict=()
  if [ -f "dicts/$t.dict" ]; then dict=("-dict=dicts/$t.dict"); fi
  start=$(date +%s)
  if ! cargo fuzz run "$t" -- -max_total_time="$secs" -jobs=1 -timeout=10 \
      -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    echo "$t FAILED after $(( $(date +%s) - start )) s:"
    tail -n 80 fuzz-0.log 2>/dev/null || tail -n 80 "$log"
    exit 1
  fi
  cat fuzz-0.log >>"$log" 2>/dev/null || true
  elapsed=$(( $(date +%s) - start ))
  runs=$(grep -o 'number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  eps=$(grep -o 'average_exec_per_sec: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  files=$(find "corpus/$t" -type f | wc -l)
  kib=$(( $(du -sb "corpus/$t" | cut -f1) / 1024 ))
  echo "| $t | $elapsed s | $runs | $eps | $files, $kib KiB |"
done
