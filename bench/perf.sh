#!/usr/bin/env bash
# The NVMe/TCP benchmark table: strata-tgt on core 0 exporting a 1 GiB malloc namespace
# (4096-byte blocks) on 127.0.0.1, strata-perf on core 1, beside SPDK v25.09's figures
# (spdk_nvmf_tgt + spdk_nvme_perf on the same kind of set-up).
# Usage: bench/perf.sh [seconds]        (SKIP_BUILD=1 to use the existing release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
nqn="nqn.2026-11.io.strata:perf"
# Like SPDK (DPDK needs them), measure on hugepage memory: 1 GiB malloc + I/O buffer pools.
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 1024 ] && [ "$(id -u)" = 0 ]; then
  scripts/setup.sh --hugepages 1024 >/dev/null
fi
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q --bin strata-tgt --bin strata-perf
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 4420)"
tmp="$(mktemp -d)"
cat >"$tmp/perf.json" <<EOF
{ "subsystems": [
  { "subsystem": "bdev", "config": [
    { "method": "bdev_malloc_create",
      "params": { "name": "Malloc0", "num_blocks": 262144, "block_size": 4096 } } ] },
  { "subsystem": "nvmf", "config": [
    { "method": "nvmf_create_transport", "params": { "trtype": "TCP" } },
    { "method": "nvmf_create_subsystem",
      "params": { "nqn": "$nqn", "allow_any_host": true, "serial_number": "STRATAPERF0001" } },
    { "method": "nvmf_subsystem_add_ns",
      "params": { "nqn": "$nqn", "namespace": { "bdev_name": "Malloc0", "nsid": 1 } } },
    { "method": "nvmf_subsystem_add_listener",
      "params": { "nqn": "$nqn", "listen_address": { "trtype": "TCP", "adrfam": "IPv4",
                  "traddr": "127.0.0.1", "trsvcid": "$port" } } } ] } ] }
EOF
build/release/strata-tgt -m 0x1 --no-default --json "$tmp/perf.json" -r "$tmp/rpc.sock" \
  --log-level warn >"$tmp/tgt.log" 2>&1 &
tgt=$!
cleanup() {
  kill "$tgt" 2>/dev/null || true
  wait "$tgt" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 1 200); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  if ! kill -0 "$tgt" 2>/dev/null; then
    echo "strata-tgt exited:" >&2
    cat "$tmp/tgt.log" >&2
    exit 1
  fi
  sleep 0.1
done
target="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:$nqn"
printf '%-26s | %12s %10s %9s %9s %9s | %s\n' \
  "workload (${t}s, core 1)" "IOPS" "MiB/s" "avg(us)" "p99(us)" "p99.9" "SPDK v25.09"
run() { # label spdk-figure perf-args...
  local label="$1" spdk="$2"
  shift 2
  local out
  if ! out="$(build/release/strata-perf -c 0x2 -t "$t" --json -r "$target" "$@")"; then
    printf '%-26s | %s\n' "$label" "FAILED (see above)"
    return
  fi
  echo "$out" | jq -r --arg l "$label" --arg s "$spdk" \
    '.total | [$l, (.iops|floor), (.mib_s*100|floor/100), (.avg_us*10|floor/10),
               (.p99_us*10|floor/10), (.p999_us*10|floor/10), $s, .errors]
     | "\(.[0]) | \(.[1]) \(.[2]) \(.[3]) \(.[4]) \(.[5]) | \(.[6])"
       + (if .[7] > 0 then "  (\(.[7]) errors)" else "" end)' |
    awk -F' [|] ' '{ split($2, v, " ");
      printf "%-26s | %12s %10s %9s %9s %9s | %s\n", $1, v[1], v[2], v[3], v[4], v[5], $3 }'
}
run "4 KiB randread QD32" "376 K IOPS, p99 124 us" -q 32 -o 4096 -w randread
run "4 KiB randread QD128" "428 K IOPS" -q 128 -o 4096 -w randread
run "4 KiB randwrite QD32" "325 K IOPS, p99 157 us" -q 32 -o 4096 -w randwrite
run "128 KiB read QD16" "3.36 GB/s (3204 MiB/s)" -q 16 -o 131072 -w read
