#!/usr/bin/env bash
# Remote parity benchmark: a parity node (127.0.0.5, core 0) holding the P and Q volumes of
# one group, and a data node (127.0.0.4, core 1) attaching them. strata-perf (core 0) drives,
# in the same run, 4 KiB randwrite QD32 (and randread) against the data node's exports of:
# a plain malloc (no protection), a member sending deltas to P, a member sending them to P
# and Q. Then a member of SIZE_MB (default 1024) is added online (fold-in: its data XORed
# into P and Q over the wire: the parity node's delta apply rate), and rebuilt onto an empty
# device from P (the parity node reads the other members and P, the data node writes).
# All processes run in interrupt mode (three processes share two cores).
# Usage: bench/parity.sh [seconds]   (SIZE_MB=4096 for the 4 GiB add-node figure)
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10}"
size_mb="${SIZE_MB:-1024}"
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
G=6b1d8b63-8d5f-4e4f-ab5a-3c2e1d4f5e62
nqn_p=nqn.2026-12.io.strata:bench-parity
nqn_d=nqn.2026-12.io.strata:bench-data
perf_blocks=262144                                  # 1 GiB of 4 KiB blocks
big_blocks=$(( size_mb * 256 ))
pblocks=$(( (big_blocks > perf_blocks ? big_blocks : perf_blocks) + 512 ))
RP() { "$bin/strata-rpc" -s "$work/p.sock" "$@"; }
RD() { "$bin/strata-rpc" -s "$work/d.sock" "$@"; }
wait_rpc() { for _ in $(seq 300); do "$bin/strata-rpc" -s "$1" spdk_get_version >/dev/null 2>&1 && return; sleep 0.1; done; }
listen() { # sock nqn ip
  "$bin/strata-rpc" -s "$1" nvmf_subsystem_add_listener "$2" -t TCP -a "$3" -s 4420 >/dev/null
}

"$bin/strata-tgt" -m 0x1 --interrupt-mode --no-default -r "$work/p.sock" 2>"$work/p.log" &
pids+=($!)
"$bin/strata-tgt" -m 0x2 --interrupt-mode --no-default -r "$work/d.sock" 2>"$work/d.log" &
pids+=($!)
wait_rpc "$work/p.sock"
wait_rpc "$work/d.sock"

# Parity node: P and Q, the rebuild source of member 2, exported as nsid 1, 2, 3.
RP bdev_set_options --disable-auto-examine >/dev/null
RP bdev_malloc_create -b PB $(( pblocks * 4 / 1024 )) 4096 >/dev/null
RP bdev_malloc_create -b QB $(( pblocks * 4 / 1024 )) 4096 >/dev/null
RP bdev_parity_create -n P -b PB -g $G -r p >/dev/null
RP bdev_parity_create -n Q -b QB -g $G -r q >/dev/null
RP bdev_parity_source_create P -i 2 >/dev/null
RP nvmf_create_transport -t TCP >/dev/null
RP nvmf_create_subsystem $nqn_p -a >/dev/null
for b in P Q P_src2; do RP nvmf_subsystem_add_ns $nqn_p $b >/dev/null; done
listen "$work/p.sock" $nqn_p 127.0.0.5

# Data node: a plain malloc, member 0 (P only) and member 1 (P and Q), 1 GiB each, zeroed
# like the parity (mode clean: nothing to fold).
RD bdev_set_options --disable-auto-examine >/dev/null
RD bdev_nvme_attach_controller -b R -t TCP -a 127.0.0.5 -s 4420 -n $nqn_p -i 127.0.0.4 >/dev/null
mib=$(( (perf_blocks + 256) * 4 / 1024 ))
for b in Plain B0 B1; do RD bdev_malloc_create -b $b $mib 4096 >/dev/null; done
RD bdev_parity_member_create -n DP -b B0 -g $G -i 0 --p-bdev Rn1 -m clean >/dev/null
RD bdev_parity_member_create -n DPQ -b B1 -g $G -i 1 --p-bdev Rn1 --q-bdev Rn2 -m clean >/dev/null
RD nvmf_create_transport -t TCP >/dev/null
for v in Plain DP DPQ; do
  RD nvmf_create_subsystem $nqn_d-${v,,} -a >/dev/null
  RD nvmf_subsystem_add_ns $nqn_d-${v,,} $v >/dev/null
  listen "$work/d.sock" $nqn_d-${v,,} 127.0.0.4
done

perf() { # label volume workload
  printf '%-40s %-9s  ' "$1" "$3"
  "$bin/strata-perf" -c 0x1 --interrupt-mode -q 32 -o 4096 -w "$3" -t "$t" \
    -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.4 trsvcid:4420 subnqn:$nqn_d-$2" 2>"$work/perf.err" | tail -1 || cat "$work/perf.err"
}
echo "bench/parity.sh $t   (strata-perf -c 0x1 --interrupt-mode -q 32 -o 4096 -t $t; nodes in interrupt mode)"
for w in randwrite randread; do
  perf "data node, no protection (malloc)" plain $w
  perf "data node, member with P" dp $w
  perf "data node, member with P and Q" dpq $w
done

job_line() { # sock name
  for _ in $(seq 6000); do
    j="$("$bin/strata-rpc" -s "$1" bdev_parity_get -n "$2")"
    [ "$(jq -r '.[0].job' <<<"$j")" = null ] && break
    sleep 0.1
  done
  jq -r '.[0].last_job | "\(.kind): \(.done_bytes) bytes in \(.elapsed_seconds) s, \(.mb_per_sec) MB/s (\(.result))"' <<<"$j"
}

# The parity node reads the members through the data node's exports (rebuild source).
RP bdev_nvme_attach_controller -b D0 -t TCP -a 127.0.0.4 -s 4420 -n $nqn_d-dp -i 127.0.0.5 >/dev/null
RP bdev_nvme_attach_controller -b D1 -t TCP -a 127.0.0.4 -s 4420 -n $nqn_d-dpq -i 127.0.0.5 >/dev/null
RP bdev_parity_add_member P -i 0 -b D0n1 >/dev/null
RP bdev_parity_add_member P -i 1 -b D1n1 >/dev/null

# Adding a node online: a member of SIZE_MB whose data is folded into P and Q over the wire
# (every block is read and XOR-written, zero or not).
RD bdev_malloc_create -b B2 $(( size_mb + 1 )) 4096 >/dev/null
RD bdev_parity_member_create -n D2 -b B2 -g $G -i 2 --p-bdev Rn1 --p-source Rn3 --q-bdev Rn2 -m fold >/dev/null
printf 'add a %s MiB node online (P and Q)     ' "$size_mb"
job_line "$work/d.sock" D2

# Rebuilding it onto an empty device from P (reads P and members 0 and 1 on the parity node).
RD bdev_parity_member_delete D2 >/dev/null
RD bdev_malloc_delete B2 >/dev/null
RD bdev_malloc_create -b B2new $(( size_mb + 1 )) 4096 >/dev/null
RD bdev_parity_member_create -n D2new -b B2new -g $G -i 2 --p-bdev Rn1 --p-source Rn3 --q-bdev Rn2 -m rebuild >/dev/null
printf 'rebuild a lost %s MiB node from P        ' "$size_mb"
job_line "$work/d.sock" D2new
