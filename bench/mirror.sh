#!/usr/bin/env bash
# The mirror benchmark table, on a 4 GiB mirror of two malloc legs (one reactor, core 0):
# strata-mirror-bench times the full initial resync, a resync after dirtying 1 % of the
# change-bitmap regions (from the bitmap and by checksum scan) and a full scrub (the checksum
# scan rate); strata-bdevperf measures 4 KiB random writes QD32 on one leg alone, on the
# mirror, and on the mirror while its initial resync runs (limited to 500 MB/s).
# Usage: bench/mirror.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
cargo build --release --bins -q
build/release/strata-mirror-bench --size-mb 4096 --dirty-pct 1 2>/dev/null
for c in mirror-single-leg:L0 mirror:mirror0 mirror-resync:mirror0; do
  printf '%-20s randwrite 4096  ' "${c%%:*}"
  build/release/strata-bdevperf --json "bench/configs/${c%%:*}.json" -b "${c##*:}" -q 32 -o 4096 \
    -w randwrite -t "$t" -m 0x1 2>/dev/null | tail -1
done
