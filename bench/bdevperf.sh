#!/usr/bin/env bash
# The bdev-layer benchmark, against SPDK v25.09's bdevperf in the same run: one reactor on
# core 0, 4 KiB, QD32, a 1 GiB malloc bdev (bench/configs/malloc.json for both), randread
# and randwrite; strata-bdevperf and SPDK's bdevperf alternate per round. Prints every round
# and the medians with the strata/SPDK IOPS ratio. Without an SPDK build (SPDK_DIR, default
# /opt/anchors/spdk) only strata's figures are printed (and the null bdev rows, which SPDK's
# null bdev cannot be compared with: it leaves read buffers as they are, strata's zeroes them).
#   usage: bench/bdevperf.sh [seconds, default 8] [rounds, default 2]     (root: hugepages)
set -u
cd "$(dirname "$0")/.."
T=${1:-8}; ROUNDS=${2:-2}
SPDK=${SPDK_DIR:-/opt/anchors/spdk}
have_spdk=0; [ -x "$SPDK/build/examples/bdevperf" ] && have_spdk=1
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --bin strata-bdevperf || exit 1
export LD_LIBRARY_PATH=$SPDK/build/lib:$SPDK/isa-l/.libs:$SPDK/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUT=$(mktemp -d); hp0=$(cat /proc/sys/vm/nr_hugepages)
trap 'echo "$hp0" > /proc/sys/vm/nr_hugepages 2>/dev/null; rm -rf "$OUT"' EXIT
if [ "$(id -u)" = 0 ]; then
  [ "$hp0" -ge 1536 ] || echo 1536 > /proc/sys/vm/nr_hugepages
  mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
fi
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages); SPDK: $([ $have_spdk = 1 ] && echo "$SPDK" || echo "absent (strata only)")"
strata() { # config workload -> IOPS
  build/release/strata-bdevperf --json "bench/configs/$1.json" -q 32 -o 4096 -w "$2" -t "$T" -m 0x1 |
    awk '$1 == "Total" { printf "%d\n", $2 }'
}
spdk() { # workload -> IOPS
  timeout $((T+60)) "$SPDK/build/examples/bdevperf" -m 0x1 --disable-cpumask-locks -r $OUT/b.sock \
    --json bench/configs/malloc.json -q 32 -o 4096 -w "$1" -t "$T" > $OUT/b.txt 2>&1
  # (the Total line follows progress output with terminal control codes)
  sed -n 's/.*Total *: *\([0-9]*\).*/\1/p' $OUT/b.txt | tail -1
}
for r in $(seq 1 $ROUNDS); do
  for w in randread randwrite; do
    s=$(strata malloc $w); echo "round $r strata malloc $w: $s"; echo "$s" >> $OUT/strata.$w
    if [ $have_spdk = 1 ]; then p=$(spdk $w); echo "round $r SPDK   malloc $w: ${p:-FAILED}"; echo "${p:-0}" >> $OUT/spdk.$w; fi
  done
done
[ $have_spdk = 1 ] || for w in randread randwrite; do echo "strata null $w: $(strata null $w)"; done
echo
printf '%-24s | %12s | %12s | %s\n' "malloc 4 KiB QD32, 1 core" strata SPDK "strata/SPDK"
for w in randread randwrite; do
  python3 - "$OUT" "$w" <<'PY'
import sys, statistics as st, os
out, w = sys.argv[1], sys.argv[2]
def med(f):
    f = f"{out}/{f}.{w}"
    v = [int(l) for l in open(f) if l.strip().isdigit() and int(l) > 0] if os.path.exists(f) else []
    return st.median(v) if v else None
a, b = med("strata"), med("spdk")
print(f"{w:24} | {int(a) if a else 'FAILED':>12} | {int(b) if b else '-':>12} | {f'{a/b:.2f}x' if a and b else '-'}")
PY
done
