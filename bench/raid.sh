#!/usr/bin/env bash
# The RAID benchmark table: strata-bdevperf on one reactor (core 0) over malloc members
# (4 × 256 MiB data members, 32 KiB strips, superblocks on): raid0 over 4, raid5 over 4+1,
# raid6 over 4+2, and raid5 with one member removed. 128 KiB sequential write (full stripes),
# 4 KiB random write and 4 KiB random read, QD32.
# Usage: bench/raid.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-5}"
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 1024 ] && [ "$(id -u)" = 0 ]; then
  scripts/setup.sh --hugepages 1024 >/dev/null
fi
cargo build --release --bins -q
for cfg in raid0 raid5 raid6 raid5-degraded; do
  name="${cfg%-degraded}"
  for job in "write 131072" "randwrite 4096" "randread 4096"; do
    set -- $job
    printf '%-15s %-9s %6s  ' "$cfg" "$1" "$2"
    build/release/strata-bdevperf --json "bench/configs/$cfg.json" -b "$name" -q 32 -o "$2" -w "$1" -t "$t" -m 0x1 | tail -1
  done
done
