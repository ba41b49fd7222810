#!/bin/bash
# The guest's side of the ANA multipath test (nvmf/tests/ana_linux.rs): the Linux kernel host
# with native multipath connects to one subsystem through two listeners (one namespace, two
# paths), then runs fio write+verify rounds on the multipath device while the test makes
# one path inaccessible, then the other, then both optimized again. No I/O error may reach
# fio; each round prints the kernel's view of both paths' ANA states.
#
# Run inside run-guest.sh with: PORT1, PORT2, NQN. Hand-shakes with the test through files
# in $SHARE:   guest: connected, round-N (after each clean round)   test: done
# Prints "STEP <name> OK" per step and "ALL STEPS OK" at the end.
set -euo pipefail
# shellcheck source=guest-steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest-steps.sh"

begin connect-two-paths
modprobe nvme-tcp
mp="$(cat /sys/module/nvme_core/parameters/multipath 2>/dev/null || echo missing)"
[ "$mp" = Y ] || fail "nvme_core multipath is '$mp' (native multipath needed)"
nvme connect -t tcp -a "$ADDR" -s "$PORT1" -n "$NQN" || fail "nvme connect port $PORT1"
nvme connect -t tcp -a "$ADDR" -s "$PORT2" -n "$NQN" || fail "nvme connect port $PORT2"
dev="$(ns_dev "$NQN")" || fail "no namespace of $NQN"
# The paths: the hidden per-controller namespaces (nvmeXcYnZ) under the subsystem's two
# controllers, one block device (the multipath head) above them.
paths=""
for ((i = 0; i < 50; i++)); do
  paths=""
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    for p in "$c"/nvme*c*n*; do
      [ -e "$p/ana_state" ] && paths+="$p "
    done
  done
  [ "$(wc -w <<<"$paths")" = 2 ] && break
  sleep 0.2
done
[ "$(wc -w <<<"$paths")" = 2 ] || fail "$NQN has paths '$paths', expected two"
heads="$(ls -d /sys/block/nvme*n* 2>/dev/null | grep -vc 'c[0-9]*n' || true)"
[ "$heads" = 1 ] || fail "expected one multipath block device, found $heads"
echo "multipath device /dev/$dev, paths: $paths"
ana_states() {
  local p out=""
  for p in $paths; do
    out+="${p##*/}=$(cat "$p/ana_state" 2>/dev/null || echo '?') "
  done
  echo "$out"
}
echo "ANA states: $(ana_states)"
touch "$SHARE/connected"
ok

begin fio-rounds-while-paths-change
round=0
while [ ! -e "$SHARE/done" ]; do
  round=$((round + 1))
  fio --name="round$round" --filename="/dev/$dev" --direct=1 --ioengine=libaio --bs=4k \
    --iodepth=8 --rw=randwrite --size=8M --randseed="$round" --verify=crc32c \
    --verify_fatal=1 --verify_state_save=0 --eta=never --output=/tmp/fio.out ||
    { cat /tmp/fio.out; fail "fio round $round: status $?"; }
  grep -E "err= *[1-9]" /tmp/fio.out && fail "fio round $round reported errors"
  echo "round $round clean; ANA states: $(ana_states)"
  touch "$SHARE/round-$round"
  [ "$round" -lt 60 ] || fail "the test did not say done after 60 rounds"
done
ok

begin disconnect
nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
ok
step=""
echo
echo "ALL STEPS OK"
