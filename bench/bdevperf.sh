#!/usr/bin/env bash
# The bdev-layer benchmark table: strata-bdevperf on one reactor (core 0), QD32, 4 KiB.
# Usage: bench/bdevperf.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
cargo build --release --bins -q
for cfg in malloc null; do
  for w in randread randwrite; do
    echo "== $cfg $w 4 KiB QD32, core 0, ${t}s"
    build/release/strata-bdevperf --json "bench/configs/$cfg.json" -q 32 -o 4096 -w "$w" -t "$t" -m 0x1 | tail -1
  done
done
