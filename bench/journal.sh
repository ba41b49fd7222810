#!/usr/bin/env bash
# The dual-redundancy table (strata-journal-bench, in one process on malloc bdevs): 4 KiB
# random writes QD32 on a RAID-5, unprotected and as a protected volume with its journal
# mirrored on two bdevs of its own, in the same run; the volume's first (full) drain and an
# incremental drain into a directory repository on this machine (build/bench-journal-repo);
# and the rebuild of the volume from the repository and the journal after two members are
# lost. Needs about 16 GiB of RAM at the defaults.
# Usage: bench/journal.sh [seconds per write measurement] [volume MiB] [journal leg MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-2}"
size="${2:-4096}"
jmb="${3:-3072}"
cargo build --release --bins -q
build/release/strata-journal-bench --secs "$t" --size-mb "$size" --journal-mb "$jmb" 2>/dev/null
