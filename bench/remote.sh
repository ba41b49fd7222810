#!/usr/bin/env bash
# Remote-bdev benchmark: two strata-tgt nodes on this machine, node B (127.0.0.3, core 0)
# exporting two 1 GiB malloc namespaces and node A (127.0.0.2, core 1) attaching it with
# bdev_nvme_attach_controller (Rn1, Rn2) and exporting Rn1 again. strata-perf (core 0) drives, in the
# same run: B directly, and B through A's remote bdev; then a mirror on A with a local malloc
# primary and the remote secondary vs a mirror of two local mallocs (4 KiB randwrite); then
# the initial resync rate of the mirror over the wire. All processes run in interrupt mode
# (three processes share two cores; polling would measure the scheduler).
# Usage: bench/remote.sh [seconds]   (uses 127.0.0.2 and 127.0.0.3, port 4420)
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
[ "${SKIP_BUILD:-}" = 1 ] || cargo build --release --bins -q
bin=build/release
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
nqn_b=nqn.2026-12.io.strata:bench-b
nqn_a=nqn.2026-12.io.strata:bench-a

cat >"$work/b.json" <<EOF
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"M1","num_blocks":262144,"block_size":4096}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"$nqn_b","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$nqn_b","namespace":{"bdev_name":"M0","nsid":1}}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$nqn_b","namespace":{"bdev_name":"M1","nsid":2}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$nqn_b","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.3","trsvcid":"4420"}}}]}]}
EOF
cat >"$work/a.json" <<EOF
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"R","trtype":"TCP","traddr":"127.0.0.3","trsvcid":"4420","subnqn":"$nqn_b","hostaddr":"127.0.0.2"}},
 {"method":"bdev_malloc_create","params":{"name":"L0","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"L1","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"L2","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_mirror_create","params":{"name":"MR","primary":"L0","secondary":"Rn2","initial_sync":false}},
 {"method":"bdev_mirror_create","params":{"name":"ML","primary":"L1","secondary":"L2","initial_sync":false}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"$nqn_a","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$nqn_a","namespace":{"bdev_name":"Rn1","nsid":1}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$nqn_a","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.2","trsvcid":"4420"}}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"$nqn_a-mr","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$nqn_a-mr","namespace":{"bdev_name":"MR","nsid":1}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$nqn_a-mr","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.2","trsvcid":"4420"}}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"$nqn_a-ml","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$nqn_a-ml","namespace":{"bdev_name":"ML","nsid":1}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$nqn_a-ml","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.2","trsvcid":"4420"}}}]}]}
EOF
"$bin/strata-tgt" -m 0x1 --interrupt-mode --no-default -r "$work/b.sock" --json "$work/b.json" 2>"$work/b.log" &
pids+=($!)
# B's RPC socket answers once its config (mallocs, export, listener) is loaded.
for _ in $(seq 300); do
  "$bin/strata-rpc" -s "$work/b.sock" bdev_get_bdevs -b M1 >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/strata-tgt" -m 0x2 --interrupt-mode --no-default -r "$work/a.sock" --json "$work/a.json" 2>"$work/a.log" &
pids+=($!)
for _ in $(seq 100); do
  "$bin/strata-rpc" -s "$work/a.sock" bdev_get_bdevs -b ML >/dev/null 2>&1 && break
  sleep 0.1
done

perf() { # label traddr nqn workload size
  printf '%-34s %-9s %6s  ' "$1" "$4" "$5"
  "$bin/strata-perf" -c 0x1 --interrupt-mode -q 32 -o "$5" -w "$4" -t "$t" \
    -r "trtype:TCP adrfam:IPv4 traddr:$2 trsvcid:4420 subnqn:$3" 2>"$work/perf.err" | tail -1 || cat "$work/perf.err"
}
echo "bench/remote.sh $t   (strata-perf -c 0x1 --interrupt-mode -q 32 -t $t; nodes in interrupt mode)"
for w in "randread 4096" "randwrite 4096" "read 131072"; do
  set -- $w
  perf "node B direct (malloc)" 127.0.0.3 "$nqn_b" "$1" "$2"
  perf "node A -> remote bdev -> node B" 127.0.0.2 "$nqn_a" "$1" "$2"
done
perf "mirror: local + local malloc" 127.0.0.2 "$nqn_a-ml" randwrite 4096
perf "mirror: local + remote (node B)" 127.0.0.2 "$nqn_a-mr" randwrite 4096

# Resync over the wire: the initial copy of a new mirror's primary to the remote leg.
"$bin/strata-rpc" -s "$work/a.sock" bdev_mirror_delete MR >/dev/null
"$bin/strata-rpc" -s "$work/a.sock" call bdev_mirror_create \
  '{"name":"MR2","primary":"L0","secondary":"Rn2"}' >/dev/null
for _ in $(seq 1200); do
  j="$("$bin/strata-rpc" -s "$work/a.sock" bdev_mirror_get -n MR2)"
  [ "$(jq -r '.[0].job' <<<"$j")" = null ] && break
  sleep 0.1
done
jq -r '.[0].last_job | "resync over the wire (1 GiB initial copy): \(.elapsed_seconds) s, \(.mb_per_sec) MB/s (\(.result))"' <<<"$j"
