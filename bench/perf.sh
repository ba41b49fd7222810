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
# Each round also runs the loopback ceiling (strata-tcp-ceiling: a minimal request/response
# loop with NVMe/TCP's message sizes on the same two cores) and reads each target's reactor
# busy fraction during its run (framework_get_reactors): a target far below 100 % busy was
# waiting for the client, and its figure says more about the client than about the target.
#   usage: bench/perf.sh [seconds per run, default 8] [rounds, default 2]
# env: WORKLOADS (default "rr1 rr32 rr128 rw32 sr128k sw128k"), CLIENT=strata|spdk,
#      SKIP_BUILD=1 (use the existing release binaries), SPDK_TRANSPORT_ARGS (e.g. --zcopy),
#      B_PARAMS (JSON members, e.g. '"zcopy":false' or '"c2h_success_always":true': also run
#      strata with these transport options as "strata_b" and print strata/strata_b, an A/B
#      of one option in the same run, and strata_b/SPDK). Needs root for hugepages (SPDK's
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
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --bin strata-tgt --bin strata-perf --bin strata-tcp-ceiling || exit 1
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
start_strata() { rm -f $OUT/s.sock; SOCK=$OUT/s.sock; "$BIN/strata-tgt" -m 0x1 --no-default --json $OUT/strata.json -r $SOCK --log-level warn > $OUT/strata.log 2>&1 & TP=$!; PIDS+=($TP); wait_port || fail "strata-tgt did not listen: $(tail -3 $OUT/strata.log)"; }
start_strata_b() { rm -f $OUT/b.sock; SOCK=$OUT/b.sock; "$BIN/strata-tgt" -m 0x1 --no-default --json $OUT/strata_b.json -r $SOCK --log-level warn > $OUT/strata.log 2>&1 & TP=$!; PIDS+=($TP); wait_port || fail "strata-tgt (B) did not listen: $(tail -3 $OUT/strata.log)"; }
start_spdk() {
  rm -f $OUT/p.sock; SOCK=$OUT/p.sock
  $SPDK/build/bin/nvmf_tgt -m 0x1 -u --disable-cpumask-locks -r $OUT/p.sock > $OUT/spdk.log 2>&1 & TP=$!; PIDS+=($TP)
  local R="python3 $SPDK/scripts/rpc.py -s $OUT/p.sock"
  for _ in $(seq 1 150); do [ -S $OUT/p.sock ] && $R framework_wait_init >/dev/null 2>&1 && break; sleep 0.2; done
  $R nvmf_create_transport -t TCP ${SPDK_TRANSPORT_ARGS:-} >/dev/null && $R bdev_malloc_create -b M0 1024 4096 >/dev/null &&
  $R nvmf_create_subsystem $NQN -a -s PERF0001 >/dev/null && $R nvmf_subsystem_add_ns $NQN M0 >/dev/null &&
  $R nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s $PORT -f ipv4 >/dev/null || fail "SPDK nvmf_tgt set-up failed: $(tail -3 $OUT/spdk.log)"
  wait_port || fail "SPDK nvmf_tgt did not listen"
}
start_ceiling() { TP=; SOCK=; }
stop_t() { [ -n "$TP" ] && { kill $TP 2>/dev/null; wait $TP 2>/dev/null; }; }
# Reactor 0's busy and idle ticks (both targets answer framework_get_reactors).
busy_idle() {
  [ -n "$SOCK" ] || { echo "- -"; return; }
  python3 - "$SOCK" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "framework_get_reactors"}).encode())
buf = b""
while True:
    chunk = s.recv(65536)
    if not chunk: print("- -"); sys.exit(0)
    buf += chunk
    try: r = json.loads(buf); break
    except ValueError: continue
x = r["result"]["reactors"][0]; print(x["busy"], x["idle"])
PY
}
args() { case $1 in rr1) echo "-q 1 -o 4096 -w randread";; rr32) echo "-q 32 -o 4096 -w randread";;
  rr128) echo "-q 128 -o 4096 -w randread";; rw32) echo "-q 32 -o 4096 -w randwrite";;
  sr128k) echo "-q 16 -o 131072 -w read";; sw128k) echo "-q 16 -o 131072 -w write";; esac; }
client() { # workload -> "IOPS MiB/s p50_us p99_us"
  if [ "$1" = ceiling ]; then shift
    "$BIN/strata-tcp-ceiling" --server-core 0 --client-core 1 -t "$T" --json $(args $1) 2>$OUT/perf.err |
      jq -r '.total | "\(.iops|floor) \(.mib_s*10|floor/10) \(.p50_us*10|floor/10) \(.p99_us*10|floor/10)"' 2>/dev/null || echo FAIL
  elif [ "$CLIENT" = strata ]; then
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
if [ -n "${B_PARAMS:-}" ]; then
  jq --argjson b "{$B_PARAMS}" '(.subsystems[] | select(.subsystem == "nvmf") | .config[0].params) += $b' \
    $OUT/strata.json > $OUT/strata_b.json || fail "B_PARAMS is not JSON members: $B_PARAMS"
  TARGETS="$TARGETS strata_b"
fi
RUNS="$TARGETS ceiling"
# This machine drifts between fast and slow phases that last tens of seconds, so the two
# targets take turns per workload (a pair of runs a few seconds apart sees the same phase),
# who goes first alternates between rounds, and each start gets the same untimed warm-up
# (2 s of 4 KiB randread QD32: the first run on a cold process is slower). The ratio per
# workload is the median over rounds of each round's strata/SPDK pair.
for r in $(seq 1 $ROUNDS); do
  order=$RUNS; [ $((r % 2)) = 0 ] && order=$(echo $RUNS | tr ' ' '\n' | tac | tr '\n' ' ')
  for w in $WL; do
    for who in $order; do
      start_$who
      c=""; [ $who = ceiling ] && c=ceiling
      T_MEASURE=$T; T=2; client $c rr32 > /dev/null; T=$T_MEASURE
      b0=$(busy_idle); res=$(client $c $w); b1=$(busy_idle)
      busy=$(python3 -c "import sys; a=sys.argv[1:3]; b=sys.argv[3:5]
print('-' if '-' in a+b else '%.2f' % ((int(b[0])-int(a[0]))/max(1,int(b[0])-int(a[0])+int(b[1])-int(a[1]))))" $b0 $b1)
      echo "round $r $who $w: $res busy $busy"; echo "$res $busy" >> $OUT/$who.$w.txt
      stop_t
    done
  done
done
echo
echo "Medians per workload: IOPS, MiB/s, p50 and p99 latency (us), reactor busy fraction. Ratios are"
echo "medians of each round's pair (strata/SPDK; target/ceiling), each with the rounds in which the first"
echo "was higher (k/n); latency ratios below 1 favour strata."
printf '%-7s | %-32s | %-32s | %-9s | %-34s | %s\n' workload "strata" "SPDK" "ceiling" "strata/SPDK IOPS p50 p99" "of ceiling: strata SPDK"
for w in $WL; do
  python3 - "$OUT" "$w" "$TARGETS" <<'PY'
import sys, statistics as st, os
out, w, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
def rows(who):
    f = f"{out}/{who}.{w}.txt"
    if not os.path.exists(f): return []
    return [l.split() for l in open(f) if l.strip()]
def med(who):
    rs = [r for r in rows(who) if r[0] != "FAIL"]
    if not rs: return None
    def col(i):
        v = [float(r[i]) for r in rs if len(r) > i and r[i] != "-"]
        return st.median(v) if v else None
    return [col(i) for i in range(5)]
def fmt(m):
    if m is None: return "FAILED"
    busy = f"{m[4]:.2f}" if m[4] is not None else "-"
    return f"{int(m[0])} {m[1]:.0f} {m[2] or 0:.1f} {m[3] or 0:.1f} {busy}"
def ratio(x, y, i):
    # Round r's run of x against round r's run of y (the same phase of the machine).
    rs = [float(a[i]) / float(b[i]) for a, b in zip(rows(x), rows(y))
          if a[0] != "FAIL" and b[0] != "FAIL" and a[i] != "-" and b[i] != "-" and float(b[i]) > 0]
    # With pairs this noisy, how many rounds x won says as much as the median ratio (a sign
    # test: 8 of 8 happens by chance once in 128 tries).
    return f"{st.median(rs):.2f}x {sum(r > 1 for r in rs)}/{len(rs)}" if rs else "-"
a, b, c = med("strata"), med("spdk") if "spdk" in targets else None, med("ceiling")
vs = " ".join(ratio("strata", "spdk", i) for i in (0, 2, 3)) if a and b else "-"
if "strata_b" in targets:
    # strata/strata_b: what the option alone changed; strata_b/SPDK: strata with it, against SPDK.
    vs += f" (A/B: {ratio('strata', 'strata_b', 0)}"
    vs += f"; strata_b/SPDK: {ratio('strata_b', 'spdk', 0)})" if b else ")"
of = f"{ratio('strata', 'ceiling', 0)} {ratio('spdk', 'ceiling', 0) if b else '-'}"
print(f"{w:7} | {fmt(a):32} | {fmt(b) if 'spdk' in targets else 'no SPDK build':32} | "
      f"{int(c[0]) if c else 'FAILED':<9} | {vs:34} | {of}")
PY
done
