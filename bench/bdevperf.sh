#!/usr/bin/env bash
# The bdev-layer benchmark table: strata-bdevperf on one reactor (core 0), QD32, 4 KiB.
# Usage: bench/bdevperf.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
# Like SPDK (DPDK needs them), measure on hugepage memory: 1 GiB malloc + I/O buffer pools.
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 1024 ] && [ "$(id -u)" = 0 ]; then
  scripts/setup.sh --hugepages 1024 >/dev/null
fi
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages)"
cargo build --release --bins -q
for cfg in malloc null; do
  for w in randread randwrite; do
    echo "== $cfg $w 4 KiB QD32, core 0, ${t}s"
    build/release/strata-bdevperf --json "bench/configs/$cfg.json" -q 32 -o 4096 -w "$w" -t "$t" -m 0x1 | tail -1
  done
done
