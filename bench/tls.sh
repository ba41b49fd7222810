#!/usr/bin/env bash
# NVMe/TCP over TLS, measured: strata-tgt and SPDK v25.09's nvmf_tgt (when an SPDK build is
# present: SPDK_DIR, default /opt/anchors/spdk) each export a 1 GiB malloc namespace on core
# 0, once on a plain listener and once on a TLS (secure-channel) listener, driven by ONE
# client on core 1: SPDK's spdk_nvme_perf (-S ssl --psk-path for TLS), or strata-perf with
# CLIENT=strata (when SPDK is absent, strata-perf and strata-tgt only). Rounds alternate so
# drift hits every configuration. Prints each round and, per workload, the median IOPS of
# each configuration with two ratios: TLS/plain on the same target, and strata/SPDK with TLS.
#   usage: bench/tls.sh [seconds per run, default 8] [rounds, default 2]
# env: WORKLOADS (rr32 sr128k sw128k rw32; default "rr32 sr128k"), KTLS=0 to keep strata's
#      record layer in user space (it moves to the kernel only where the kernel offers kTLS).
# Needs root for hugepages (DPDK's, SPDK's malloc); nothing else may run meanwhile.
set -u
cd "$(dirname "$0")/.."
T=${1:-8}; ROUNDS=${2:-2}
SPDK=${SPDK_DIR:-/opt/anchors/spdk}
BIN=${BIN_DIR:-build/release}
WL=${WORKLOADS:-"rr32 sr128k"}
have_spdk=0; [ -x "$SPDK/build/bin/nvmf_tgt" ] && [ -x "$SPDK/build/bin/spdk_nvme_perf" ] && have_spdk=1
CLIENT=${CLIENT:-$([ $have_spdk = 1 ] && echo spdk || echo strata)}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --bin strata-tgt --bin strata-perf
export LD_LIBRARY_PATH=$SPDK/build/lib:$SPDK/isa-l/.libs:$SPDK/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUT=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done; echo 0 > /proc/sys/vm/nr_hugepages; rm -rf "$OUT"; }
trap cleanup EXIT
fail() { echo "tls.sh: $*" >&2; exit 1; }
[ "$(cat /proc/sys/vm/nr_hugepages)" -ge 1536 ] || echo 1536 > /proc/sys/vm/nr_hugepages
mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
NQN=nqn.2016-06.io.spdk:cnode1; HOST=nqn.2014-08.org.nvmexpress:uuid:7d3f6a2e-4c1b-4e8a-9f0d-2b5c8e1a3f70
# A host with a PSK connects over TLS only (on both targets), so the plain runs use another.
HOSTP=nqn.2014-08.org.nvmexpress:uuid:0c9a8b7e-6d5f-4a3b-8c2d-1e0f9a8b7c6d
PLAIN=4530; SECURE=4531
python3 -c 'import os,base64,zlib; k=os.urandom(32); print("NVMeTLSkey-1:01:"+base64.b64encode(k+zlib.crc32(k).to_bytes(4,"little")).decode()+":",end="")' > $OUT/psk.key
chmod 600 $OUT/psk.key
ktls=$([ "${KTLS:-1}" = 0 ] && echo false || echo true)
cat > $OUT/strata.json <<EOF
{"subsystems":[{"subsystem":"keyring","config":[{"method":"keyring_file_add_key","params":{"name":"k","path":"$OUT/psk.key"}}]},
{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":262144,"block_size":4096}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP","enable_ktls":$ktls}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":false,"serial_number":"TLS0001"}},
{"method":"nvmf_subsystem_add_host","params":{"nqn":"$NQN","host":"$HOSTP"}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"M0","nsid":1}}},
{"method":"nvmf_subsystem_add_host","params":{"nqn":"$NQN","host":"$HOST","psk":"k"}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$PLAIN"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","secure_channel":true,"listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$SECURE"}}}]}]}
EOF
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start_strata() { "$BIN/strata-tgt" -m 0x1 --no-default --json $OUT/strata.json -r $OUT/s.sock --log-level warn > $OUT/strata.log 2>&1 & TP=$!; PIDS+=($TP); wait_port $SECURE || fail "strata-tgt did not listen: $(tail -3 $OUT/strata.log)"; }
start_spdk() {
  rm -f $OUT/p.sock
  $SPDK/build/bin/nvmf_tgt -m 0x1 -u -r $OUT/p.sock > $OUT/spdk.log 2>&1 & TP=$!; PIDS+=($TP)
  for _ in $(seq 1 100); do [ -S $OUT/p.sock ] && break; sleep 0.1; done
  local R="python3 $SPDK/scripts/rpc.py -s $OUT/p.sock"
  $R nvmf_create_transport -t TCP >/dev/null && $R bdev_malloc_create -b M0 1024 4096 >/dev/null &&
  $R nvmf_create_subsystem $NQN -s TLS0001 >/dev/null && $R nvmf_subsystem_add_ns $NQN M0 >/dev/null &&
  $R keyring_file_add_key k $OUT/psk.key >/dev/null && $R nvmf_subsystem_add_host $NQN $HOST --psk k >/dev/null &&
  $R nvmf_subsystem_add_host $NQN $HOSTP >/dev/null &&
  $R nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s $PLAIN -f ipv4 >/dev/null &&
  $R nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s $SECURE -f ipv4 --secure-channel >/dev/null ||
    fail "SPDK nvmf_tgt set-up failed: $(tail -3 $OUT/spdk.log)"
}
stop_t() { kill $TP 2>/dev/null; wait $TP 2>/dev/null; }
args() { case $1 in rr32) echo "-q 32 -o 4096 -w randread";; rw32) echo "-q 32 -o 4096 -w randwrite";;
  sr128k) echo "-q 16 -o 131072 -w read";; sw128k) echo "-q 16 -o 131072 -w write";; esac; }
client() { # workload tls(0|1) -> "IOPS MiB/s avg_us"
  local w=$1 tls=$2 port=$PLAIN host=$HOSTP; [ "$tls" = 1 ] && port=$SECURE && host=$HOST
  local TR="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:$NQN hostnqn:$host"
  if [ "$CLIENT" = strata ]; then
    local t=(); [ "$tls" = 1 ] && t=(--psk-path $OUT/psk.key)
    "$BIN/strata-perf" -c 0x2 -t "$T" --json -r "$TR" "${t[@]}" $(args $w) 2>/dev/null |
      python3 -c 'import json,sys; t=json.load(sys.stdin)["total"]; print(int(t["iops"]), round(t["mib_s"],1), round(t["avg_us"],1))' || echo FAIL
  else
    local t=(); [ "$tls" = 1 ] && t=(-S ssl --psk-path $OUT/psk.key)
    timeout $((T+30)) $SPDK/build/bin/spdk_nvme_perf $(args $w) -t "$T" -c 0x2 "${t[@]}" -r "$TR" > $OUT/last.txt 2>&1
    python3 - $OUT/last.txt <<'PY'
import re,sys
m=re.search(r'^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)', open(sys.argv[1]).read(), re.M)
print(int(float(m.group(1))), m.group(2), m.group(3)) if m else print("FAIL")
PY
  fi
}
TARGETS="strata"; [ $have_spdk = 1 ] && TARGETS="strata spdk"
echo "client: $CLIENT; strata kTLS: $ktls (kernel offers: $(grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null && echo yes || echo no))"
for r in $(seq 1 $ROUNDS); do
  for who in $TARGETS; do
    start_$who
    for w in $WL; do for tls in 0 1; do
      res=$(client $w $tls); echo "round $r $who $w tls=$tls: $res"; echo "$res" >> $OUT/$who.$w.$tls.txt
    done; done
    stop_t
  done
done
printf '%-7s | %-12s %-12s %-7s | %-12s %-12s %-7s | %s\n' workload "strata plain" "strata TLS" "TLS/pl" "SPDK plain" "SPDK TLS" "TLS/pl" "strata/SPDK (TLS)"
for w in $WL; do
  python3 - "$OUT" "$w" "$TARGETS" <<'PY'
import sys, statistics as st, os
out, w, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
def med(who, tls):
    f = f"{out}/{who}.{w}.{tls}.txt"
    if not os.path.exists(f): return None
    v = [int(l.split()[0]) for l in open(f) if l.strip() and not l.startswith("FAIL")]
    return st.median(v) if v else None
s0, s1 = med("strata", 0), med("strata", 1)
p0, p1 = (med("spdk", 0), med("spdk", 1)) if "spdk" in targets else (None, None)
r = lambda a, b: f"{a/b:.2f}x" if a and b else "-"
n = lambda x: f"{int(x)}" if x else "-"
print(f"{w:7} | {n(s0):12} {n(s1):12} {r(s1,s0):7} | {n(p0):12} {n(p1):12} {r(p1,p0):7} | {r(s1,p1)}")
PY
done
