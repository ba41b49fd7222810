#!/usr/bin/env bash
# The split-mirror backup table, on a mirror of two malloc legs (1 GiB of random data by
# default, one reactor on core 0, poll mode; backup helpers on the other core):
# strata-split-bench times a snapshot split taken while a resync of the whole volume runs
# and one of an in-sync mirror; measures host 4 KiB random writes QD32 before the split,
# during the image's background copy and after it; a full backup and a 1 % incremental
# into a directory on this machine (build/bench-backup-repo), and the full backup's
# restore onto a malloc bdev.
# Usage: bench/split_backup.sh [seconds per write measurement] [size MiB] [secondary|memory]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-5}"
size="${2:-1024}"
mode="${3:-secondary}"
cargo build --release --bins -q
build/release/strata-split-bench --secs "$t" --size-mb "$size" --mode "$mode" 2>/dev/null
