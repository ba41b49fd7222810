#!/bin/bash
# The guest's side of the remote-mirror test (nvmf/tests/remote_mirror_linux.rs): the Linux
# kernel host writes a pattern to node A's mirror (whose secondary leg is on node B) while the
# test cuts the link between the nodes, then checks the data through A, and finally reads it
# from node B's export of the leg alone (node A stopped).
#
# Run inside run-guest.sh with: A_PORT, A_NQN (node A's export), B_PORT, B_NQN (node B's
# export of the leg), DATA_OFFSET (blocks of 4 KiB before the mirror's data in the leg),
# MIB (size written). Both nodes listen on the host's 127.0.0.1 (10.0.2.2 here) for the
# guest. Hand-shakes with the test through files in $SHARE:
#   guest: writing        (the write load started: the test may cut the link)
#   test:  healed         (the link is back)
#   guest: written        (all passes done)
#   test:  resynced       (the mirror is in sync again, by itself)
#   guest: verified-a     (read back through A)
#   test:  a-stopped      (node A is gone; read the leg from B)
# Prints "STEP <name> OK" per step and "ALL STEPS OK" at the end.
set -euo pipefail
# shellcheck source=guest-steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest-steps.sh"
PASSES=3

begin patterns
for p in $(seq 1 $PASSES); do
  dd if=/dev/urandom of="/tmp/pat$p" bs=1M count="$MIB" status=none
done
ok

begin connect-a
modprobe nvme-tcp
nvme connect -t tcp -a "$ADDR" -s "$A_PORT" -n "$A_NQN" || fail "nvme connect to node A"
dev_a="$(ns_dev "$A_NQN")" || fail "no namespace of $A_NQN"
echo "node A's mirror: /dev/$dev_a"
ok

begin write-across-the-cut
touch "$SHARE/writing"
for p in $(seq 1 $PASSES); do
  t0=$SECONDS
  dd if="/tmp/pat$p" of="/dev/$dev_a" bs=64k oflag=direct conv=fsync status=none ||
    fail "pass $p: write to /dev/$dev_a failed"
  echo "pass $p written in $((SECONDS - t0)) s"
  # The last pass starts only after the link is back, so writes span cut, outage and heal.
  [ "$p" = $((PASSES - 1)) ] && wait_file healed 120
done
touch "$SHARE/written"
ok

begin verify-through-a
wait_file resynced 180
# (No /dev/fd in this guest: read back into a file.)
dd if="/dev/$dev_a" of=/tmp/back bs=64k count=$((MIB * 16)) iflag=direct status=none
cmp /tmp/back "/tmp/pat$PASSES" || fail "data read through node A differs from the last pass"
touch "$SHARE/verified-a"
ok

begin verify-on-b-alone
wait_file a-stopped 60
nvme disconnect -n "$A_NQN" >/dev/null 2>&1 || true
nvme connect -t tcp -a "$ADDR" -s "$B_PORT" -n "$B_NQN" || fail "nvme connect to node B"
dev_b="$(ns_dev "$B_NQN")" || fail "no namespace of $B_NQN"
echo "node B's leg: /dev/$dev_b (mirror data at block $DATA_OFFSET)"
dd if="/dev/$dev_b" of=/tmp/back bs=4096 skip="$DATA_OFFSET" count=$((MIB * 256)) iflag=direct status=none
cmp /tmp/back "/tmp/pat$PASSES" || fail "node B's leg does not hold the last pass"
nvme disconnect -n "$B_NQN" >/dev/null 2>&1 || true
ok

step=""
echo
echo "ALL STEPS OK"
