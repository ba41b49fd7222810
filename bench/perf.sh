#!/usr/bin/env bash
# The NVMe/TCP benchmark, measured against SPDK v25.09 in the same run: strata-tgt and SPDK's
# nvmf_tgt take turns on core 0, each exporting a 1 GiB malloc namespace (4 KiB blocks) on
# 127.0.0.1, driven by ONE client on core 1 (strata-perf; CLIENT=spdk for SPDK's
# spdk_nvme_perf); rounds alternate (and so does who goes first, after the same warm-up) so
# the machine's drift hits both. Prints every round and,
# per workload, the medians and the strata/SPDK ratios (IOPS; p50 and p99 latency, lower is
# better for strata when the ratio is below 1). Without an SPDK build (SPDK_DIR, default
# /opt/anchors/spdk, built by ../shared/anchors/build-spdk.sh) only strata's figures are
# printed: a figure from another machine or day is no comparison.
#   usage: bench/perf.sh [seconds per run, default 8] [rounds, default 2]
# env: WORKLOADS (default "rr1 rr32 rr128 rw32 sr128k sw128k"), CLIENT=strata|spdk,
#      SKIP_BUILD=1 (use the existing release binaries). Needs root for hugepages (SPDK's
#      memory and the same for strata); nothing else may run on the machine meanwhile.
set -u
cd "$(dirname "$0")/.."
T=${1:-8}; ROUNDS=${2:-2}
SPDK=${SPDK_DIR:-/opt/anchors/spdk}
BIN=${BIN_DIR:-build/release}
WL=${WORKLOADS:-"rr1 rr32 rr128 rw32 sr128k sw128k"}
CLIENT=${CLIENT:-strata}
have_spdk=0; [ -x "$SPDK/build/bin/nvmf_tgt" ] && [ -x "$SPDK/build/bin/spdk_nvme_perf" ] && have_spdk=1
[ "$CLIENT" = spdk ] && [ $have_spdk = 0 ] && { echo "perf.sh: CLIENT=spdk needs an SPDK build at $SPDK" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --bin strata-tgt --bin strata-perf || exit 1
command -v jq >/dev/null || { echo "perf.sh: jq missing (scripts/setup.sh)" >&2; exit 1; }
export LD_LIBRARY_PATH=$SPDK/build/lib:$SPDK/isa-l/.libs:$SPDK/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUT=$(mktemp -d); PIDS=()
hp0=$(cat /proc/sys/vm/nr_hugepages)
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done; echo "$hp0" > /proc/sys/vm/nr_hugepages 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT
fail() { echo "perf.sh: $*" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
  [ "$hp0" -ge 1536 ] || echo 1536 > /proc/sys/vm/nr_hugepages
  mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
fi
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages); client: $CLIENT; SPDK: $([ $have_spdk = 1 ] && echo "$SPDK" || echo "absent (strata only)")"
NQN=nqn.2016-06.io.spdk:cnode1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TR="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
cat > $OUT/strata.json <<EOF
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":262144,"block_size":4096}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"PERF0001"}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"M0","nsid":1}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
EOF
wait_port() { for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start_strata() { "$BIN/strata-tgt" -m 0x1 --no-default --json $OUT/strata.json -r $OUT/s.sock --log-level warn > $OUT/strata.log 2>&1 & TP=$!; PIDS+=($TP); wait_port || fail "strata-tgt did not listen: $(tail -3 $OUT/strata.log)"; }
start_spdk() {
  rm -f $OUT/p.sock
  $SPDK/build/bin/nvmf_tgt -m 0x1 -u --disable-cpumask-locks -r $OUT/p.sock > $OUT/spdk.log 2>&1 & TP=$!; PIDS+=($TP)
  local R="python3 $SPDK/scripts/rpc.py -s $OUT/p.sock"
  for _ in $(seq 1 150); do [ -S $OUT/p.sock ] && $R framework_wait_init >/dev/null 2>&1 && break; sleep 0.2; done
  $R nvmf_create_transport -t TCP >/dev/null && $R bdev_malloc_create -b M0 1024 4096 >/dev/null &&
  $R nvmf_create_subsystem $NQN -a -s PERF0001 >/dev/null && $R nvmf_subsystem_add_ns $NQN M0 >/dev/null &&
  $R nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s $PORT -f ipv4 >/dev/null || fail "SPDK nvmf_tgt set-up failed: $(tail -3 $OUT/spdk.log)"
  wait_port || fail "SPDK nvmf_tgt did not listen"
}
stop_t() { kill $TP 2>/dev/null; wait $TP 2>/dev/null; }
args() { case $1 in rr1) echo "-q 1 -o 4096 -w randread";; rr32) echo "-q 32 -o 4096 -w randread";;
  rr128) echo "-q 128 -o 4096 -w randread";; rw32) echo "-q 32 -o 4096 -w randwrite";;
  sr128k) echo "-q 16 -o 131072 -w read";; sw128k) echo "-q 16 -o 131072 -w write";; esac; }
client() { # workload -> "IOPS MiB/s p50_us p99_us"
  if [ "$CLIENT" = strata ]; then
    "$BIN/strata-perf" -c 0x2 -t "$T" --json -r "$TR" $(args $1) 2>$OUT/perf.err |
      jq -r '.total | "\(.iops|floor) \(.mib_s*10|floor/10) \(.p50_us*10|floor/10) \(.p99_us*10|floor/10)"' 2>/dev/null || echo FAIL
  else
    timeout $((T+30)) $SPDK/build/bin/spdk_nvme_perf $(args $1) -t "$T" -c 0x2 -L -r "$TR" > $OUT/last.txt 2>&1
    python3 - $OUT/last.txt <<'PY'
import re,sys
t=open(sys.argv[1]).read()
m=re.search(r'^Total\s*:\s*([\d.]+)\s+([\d.]+)', t, re.M)
p=lambda q: (re.search(q + r'\s*:\s*([\d.]+)us', t) or [None, "-"])[1]
print(int(float(m.group(1))), m.group(2), p(r'50\.00000%'), p(r'99\.00000%')) if m else print("FAIL")
PY
  fi
}
TARGETS="strata"; [ $have_spdk = 1 ] && TARGETS="strata spdk"
# This machine drifts between fast and slow phases that last tens of seconds, so the two
# targets take turns per workload (a pair of runs a few seconds apart sees the same phase),
# who goes first alternates between rounds, and each start gets the same untimed warm-up
# (2 s of 4 KiB randread QD32: the first run on a cold process is slower). The ratio per
# workload is the median over rounds of each round's strata/SPDK pair.
for r in $(seq 1 $ROUNDS); do
  order=$TARGETS; [ $((r % 2)) = 0 ] && order=$(echo $TARGETS | tr ' ' '\n' | tac | tr '\n' ' ')
  for w in $WL; do
    for who in $order; do
      start_$who
      T_MEASURE=$T; T=2; client rr32 > /dev/null; T=$T_MEASURE
      res=$(client $w); echo "round $r $who $w: $res"; echo "$res" >> $OUT/$who.$w.txt
      stop_t
    done
  done
done
echo
printf '%-7s | %-30s | %-30s | %s\n' workload "strata IOPS MiB/s p50 p99 (us)" "SPDK IOPS MiB/s p50 p99 (us)" "strata/SPDK (median of pairs): IOPS p50 p99"
for w in $WL; do
  python3 - "$OUT" "$w" "$TARGETS" <<'PY'
import sys, statistics as st, os
out, w, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
def med(who):
    f = f"{out}/{who}.{w}.txt"
    if not os.path.exists(f): return None
    rows = [l.split() for l in open(f) if l.strip() and not l.startswith("FAIL")]
    if not rows: return None
    col = lambda i: st.median(float(r[i]) for r in rows if r[i] != "-") if any(r[i] != "-" for r in rows) else None
    return [col(0), col(1), col(2), col(3)]
a, b = med("strata"), med("spdk") if "spdk" in targets else None
fmt = lambda m: "FAILED" if m is None else f"{int(m[0])} {m[1]:.0f} {m[2] or 0:.1f} {m[3] or 0:.1f}"
def pairs():
    # Round r's strata run against round r's SPDK run (same phase of the machine).
    rd = lambda who: [l.split() for l in open(f"{out}/{who}.{w}.txt") if l.strip()]
    out_ = []
    for i in (0, 2, 3):
        rs = [float(x[i]) / float(y[i]) for x, y in zip(rd("strata"), rd("spdk"))
              if x[0] != "FAIL" and y[0] != "FAIL" and x[i] != "-" and y[i] != "-" and float(y[i]) > 0]
        out_.append(f"{st.median(rs):.2f}x" if rs else "-")
    return " ".join(out_)
ratio = "-" if not (a and b) else pairs()
print(f"{w:7} | {fmt(a):30} | {fmt(b) if 'spdk' in targets else 'no SPDK build':30} | {ratio}")
PY
done
